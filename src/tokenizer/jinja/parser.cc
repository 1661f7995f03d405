#include "tokenizer/jinja/parser.h"

#include <algorithm>
#include <initializer_list>
#include <string>
#include <vector>

#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/failure.h"
#include "tokenizer/jinja/lexer.h"

namespace cartridge::jinja {

namespace {

std::string describe(const Token& token) {
  switch (token.type) {
    case TokenType::kData: return "template data";
    case TokenType::kVariableBegin: return "begin of print statement";
    case TokenType::kVariableEnd: return "end of print statement";
    case TokenType::kBlockBegin: return "begin of statement block";
    case TokenType::kBlockEnd: return "end of statement block";
    case TokenType::kEnd: return "end of template";
    default: return token.text;
  }
}

class Parser {
 public:
  explicit Parser(std::string_view source) : tokens_(tokenize(source)) {}

  Body parse() {
    Body body = subparse({});
    validate(body, /*soft=*/false);
    return body;
  }

 private:
  // Bounds the parser's recursion (and so the renderer's), so a hostile template cannot overflow the
  // stack; real templates nest a few levels.
  // Every node that wraps another (a bracket, an operator in a chain like a + b + c, a filter) counts.
  static constexpr int kMaxNesting = 400;
  class NestingGuard {
   public:
    // `count_self`: this call wraps its caller's node (brackets, nested expressions); a guard only for
    // the nodes of a chain starts at zero.
    explicit NestingGuard(Parser& parser, bool count_self = true) : parser_(parser) {
      if (count_self) deepen();
    }
    ~NestingGuard() { parser_.nesting_ -= levels_; }
    // One more level for a node wrapping the previous one in a chain.
    void deepen() {
      ++levels_;
      if (++parser_.nesting_ > kMaxNesting) {
        parser_.syntax_error("nested more than " + std::to_string(kMaxNesting) + " levels deep");
      }
    }

   private:
    Parser& parser_;
    int levels_ = 0;
  };

  // --- token stream ---------------------------------------------------------------------------------
  const Token& current() const { return tokens_[position_]; }
  const Token& look() const { return tokens_[std::min(position_ + 1, tokens_.size() - 1)]; }
  void advance() {
    if (position_ + 1 < tokens_.size()) ++position_;
  }
  bool is_name(const char* name) const {
    return current().type == TokenType::kName && current().text == name;
  }
  bool is_operator(const char* op) const {
    return current().type == TokenType::kOperator && current().text == op;
  }
  bool skip_operator(const char* op) {
    if (!is_operator(op)) return false;
    advance();
    return true;
  }
  bool skip_name(const char* name) {
    if (!is_name(name)) return false;
    advance();
    return true;
  }
  [[noreturn]] void syntax_error(const std::string& message, int line = 0) const {
    throw TemplateFailure(FailureKind::kSyntax, message, line ? line : current().line);
  }
  [[noreturn]] void unsupported(const std::string& what, int line = 0) const {
    throw TemplateFailure(FailureKind::kUnsupported, what, line ? line : current().line);
  }
  void expect_operator(const char* op) {
    if (!skip_operator(op))
      syntax_error(std::string("expected '") + op + "', got '" + describe(current()) + "'");
  }
  void expect_name(const char* name) {
    if (!skip_name(name))
      syntax_error(std::string("expected '") + name + "', got '" + describe(current()) + "'");
  }
  std::string expect_any_name() {
    if (current().type != TokenType::kName)
      syntax_error("expected a name, got '" + describe(current()) + "'");
    std::string name = current().text;
    advance();
    return name;
  }
  void expect(TokenType type) {
    if (current().type != type) {
      Token wanted;
      wanted.type = type;
      syntax_error("expected '" + describe(wanted) + "', got '" + describe(current()) + "'");
    }
    advance();
  }

  // --- statements -----------------------------------------------------------------------------------
  Body subparse(std::initializer_list<const char*> end_names) {
    Body body;
    while (true) {
      const Token& token = current();
      switch (token.type) {
        case TokenType::kData:
          body.push_back(std::make_unique<DataStatement>(token.text, token.line));
          advance();
          break;
        case TokenType::kVariableBegin: {
          advance();
          const int line = current().line;
          ExpressionPtr expression = parse_tuple(false, true, {}, false);
          expect(TokenType::kVariableEnd);
          body.push_back(std::make_unique<OutputStatement>(std::move(expression), line));
          break;
        }
        case TokenType::kBlockBegin: {
          advance();
          if (current().type == TokenType::kName) {
            for (const char* end : end_names) {
              if (current().text == end) return body;
            }
          }
          body.push_back(parse_statement());
          expect(TokenType::kBlockEnd);
          break;
        }
        case TokenType::kEnd:
          if (end_names.size() > 0) {
            std::string wanted;
            for (const char* end : end_names)
              wanted += std::string(wanted.empty() ? "" : " or ") + "'" + end + "'";
            syntax_error("unexpected end of template; Jinja was looking for " + wanted);
          }
          return body;
        default: syntax_error("unexpected '" + describe(token) + "'");
      }
    }
  }

  // After a statement's opening tag: its body up to one of `end_names` (consumed when drop_needle).
  Body parse_statements(std::initializer_list<const char*> end_names, bool drop_needle) {
    skip_operator(":");
    expect(TokenType::kBlockEnd);
    Body body = subparse(end_names);
    if (drop_needle) advance();
    return body;
  }

  StatementPtr parse_statement() {
    const NestingGuard guard(*this);
    const Token& token = current();
    if (token.type != TokenType::kName) syntax_error("tag name expected");
    const std::string& tag = token.text;
    if (tag == "for") return parse_for();
    if (tag == "if") return parse_if();
    if (tag == "set") return parse_set();
    if (tag == "macro") return parse_macro();
    if (tag == "filter") return parse_filter_block();
    if (tag == "generation") return parse_generation();
    if (tag == "print") {
      const int line = token.line;
      advance();
      return std::make_unique<OutputStatement>(parse_tuple(false, true, {}, false), line);
    }
    if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) syntax_error("'" + tag + "' outside of a loop");
      const int line = token.line;
      const bool is_break = tag == "break";
      advance();
      return std::make_unique<LoopControlStatement>(
          is_break ? Statement::Kind::kBreak : Statement::Kind::kContinue, line);
    }
    if (tag == "with") return parse_with();
    // Core jinja2 tags this engine leaves out (do / trans need extensions transformers does not load, so
    // they are unknown tags there too).
    static const char* const kUnsupportedTags[] = {"extends", "block", "include",   "import",
                                                   "from",    "call",  "autoescape"};
    for (const char* unsupported_tag : kUnsupportedTags) {
      if (tag == unsupported_tag) unsupported("the {% " + tag + " %} tag");
    }
    syntax_error("Encountered unknown tag '" + tag + "'");
  }

  StatementPtr parse_for() {
    auto node = std::make_unique<ForStatement>(current().line);
    advance();
    node->target = parse_assign_target({"in"}, /*with_namespace=*/false);
    expect_name("in");
    node->iterable = parse_tuple(false, /*with_condexpr=*/false, {"recursive"}, false);
    if (skip_name("if")) node->condition = parse_expression(true);
    if (is_name("recursive")) unsupported("recursive for loops");
    ++loop_depth_;
    node->body = parse_statements({"endfor", "else"}, /*drop_needle=*/false);
    --loop_depth_;
    if (is_name("endfor")) {
      advance();
    } else {
      advance();  // else
      node->otherwise = parse_statements({"endfor"}, /*drop_needle=*/true);
    }
    return node;
  }

  StatementPtr parse_if() {
    auto node = std::make_unique<IfStatement>(current().line);
    advance();
    while (true) {
      ExpressionPtr test = parse_tuple(false, /*with_condexpr=*/false, {}, false);
      Body body = parse_statements({"elif", "else", "endif"}, /*drop_needle=*/false);
      node->branches.emplace_back(std::move(test), std::move(body));
      if (skip_name("elif")) continue;
      if (skip_name("else")) {
        node->otherwise = parse_statements({"endif"}, /*drop_needle=*/true);
      } else {
        advance();  // endif
      }
      return node;
    }
  }

  StatementPtr parse_set() {
    const int line = current().line;
    advance();
    AssignTarget target = parse_assign_target({}, /*with_namespace=*/true);
    if (skip_operator("=")) {
      auto node = std::make_unique<SetStatement>(line);
      node->target = std::move(target);
      node->value = parse_tuple(false, true, {}, false);
      return node;
    }
    auto node = std::make_unique<SetBlockStatement>(line);
    node->target = std::move(target);
    if (is_operator("|")) node->filter = parse_filter(nullptr, /*start_inline=*/false);
    node->body = parse_statements({"endset"}, /*drop_needle=*/true);
    return node;
  }

  StatementPtr parse_macro() {
    auto node = std::make_unique<MacroStatement>(current().line);
    advance();
    node->name = expect_any_name();
    expect_operator("(");
    while (!is_operator(")")) {
      if (!node->parameters.empty()) expect_operator(",");
      node->parameters.push_back(expect_any_name());
      if (skip_operator("=")) {
        node->defaults.push_back(parse_expression(true));
      } else if (!node->defaults.empty()) {
        syntax_error("non-default argument follows default argument");
      }
    }
    expect_operator(")");
    const int saved_loop_depth = loop_depth_;
    loop_depth_ = 0;  // a macro body is a function: break/continue cannot reach an enclosing loop
    node->body = parse_statements({"endmacro"}, /*drop_needle=*/true);
    loop_depth_ = saved_loop_depth;
    return node;
  }

  StatementPtr parse_filter_block() {
    auto node = std::make_unique<FilterBlockStatement>(current().line);
    advance();
    node->filter = parse_filter(nullptr, /*start_inline=*/true);
    node->body = parse_statements({"endfilter"}, /*drop_needle=*/true);
    return node;
  }

  StatementPtr parse_with() {
    auto node = std::make_unique<WithStatement>(current().line);
    advance();
    while (current().type != TokenType::kBlockEnd) {
      if (!node->assignments.empty()) expect_operator(",");
      AssignTarget target = parse_assign_target({}, /*with_namespace=*/false);
      expect_operator("=");
      node->assignments.emplace_back(std::move(target), parse_expression(true));
    }
    node->body = parse_statements({"endwith"}, /*drop_needle=*/true);
    return node;
  }

  StatementPtr parse_generation() {
    auto node = std::make_unique<ScopeStatement>(current().line);
    advance();
    const int saved_loop_depth = loop_depth_;
    loop_depth_ = 0;  // the body is a macro in jinja2
    node->body = parse_statements({"endgeneration"}, /*drop_needle=*/true);
    loop_depth_ = saved_loop_depth;
    return node;
  }

  bool is_tuple_end(std::initializer_list<const char*> extra_end_names) const {
    const Token& token = current();
    if (token.type == TokenType::kVariableEnd || token.type == TokenType::kBlockEnd ||
        token.type == TokenType::kEnd || (token.type == TokenType::kOperator && token.text == ")")) {
      return true;
    }
    if (token.type == TokenType::kName) {
      for (const char* end : extra_end_names) {
        if (token.text == end) return true;
      }
    }
    return false;
  }

  AssignTarget parse_assign_primary(bool with_namespace) {
    const Token& token = current();
    if (token.type == TokenType::kOperator && token.text == "(") {
      advance();
      AssignTarget target = parse_assign_target({}, with_namespace);
      expect_operator(")");
      return target;
    }
    if (token.type != TokenType::kName) syntax_error("can't assign to '" + describe(token) + "'");
    static const char* const kConstants[] = {"true", "false", "True", "False", "none", "None"};
    for (const char* constant : kConstants) {
      if (token.text == constant) syntax_error("can't assign to 'const'");
    }
    AssignTarget target;
    target.name = token.text;
    advance();
    if (with_namespace && is_operator(".")) {
      advance();
      target.kind = AssignTarget::Kind::kNamespaceAttribute;
      target.attribute = expect_any_name();
    }
    return target;
  }

  AssignTarget parse_assign_target(std::initializer_list<const char*> extra_end_names, bool with_namespace) {
    std::vector<AssignTarget> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_operator(",");
      if (is_tuple_end(extra_end_names)) break;
      items.push_back(parse_assign_primary(with_namespace));
      if (is_operator(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (items.empty()) syntax_error("expected an assignment target, got '" + describe(current()) + "'");
      return std::move(items[0]);
    }
    AssignTarget target;
    target.kind = AssignTarget::Kind::kTuple;
    target.items = std::move(items);
    return target;
  }

  // --- expressions ----------------------------------------------------------------------------------
  ExpressionPtr parse_tuple(bool simplified, bool with_condexpr,
                            std::initializer_list<const char*> extra_end_names, bool explicit_parentheses) {
    const int line = current().line;
    std::vector<ExpressionPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_operator(",");
      if (is_tuple_end(extra_end_names)) break;
      items.push_back(simplified ? parse_primary() : parse_expression(with_condexpr));
      if (is_operator(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parentheses) syntax_error("Expected an expression, got '" + describe(current()) + "'");
    }
    auto tuple = std::make_unique<SequenceExpression>(Expression::Kind::kTuple, line);
    tuple->items = std::move(items);
    return tuple;
  }

  ExpressionPtr parse_expression(bool with_condexpr) { return with_condexpr ? parse_condexpr() : parse_or(); }

  ExpressionPtr parse_condexpr() {
    NestingGuard chain(*this, /*count_self=*/false);
    int line = current().line;
    ExpressionPtr then = parse_or();
    while (skip_name("if")) {
      chain.deepen();
      ExpressionPtr test = parse_or();
      ExpressionPtr otherwise;
      if (skip_name("else")) otherwise = parse_condexpr();
      then = std::make_unique<ConditionalExpression>(std::move(test), std::move(then), std::move(otherwise),
                                                     line);
      line = current().line;
    }
    return then;
  }

  ExpressionPtr parse_or() {
    NestingGuard chain(*this, /*count_self=*/false);
    const int line = current().line;
    ExpressionPtr left = parse_and();
    while (skip_name("or")) {
      chain.deepen();
      left = std::make_unique<BinaryExpression>(BinaryOperator::kOr, std::move(left), parse_and(), line);
    }
    return left;
  }

  ExpressionPtr parse_and() {
    NestingGuard chain(*this, /*count_self=*/false);
    const int line = current().line;
    ExpressionPtr left = parse_not();
    while (skip_name("and")) {
      chain.deepen();
      left = std::make_unique<BinaryExpression>(BinaryOperator::kAnd, std::move(left), parse_not(), line);
    }
    return left;
  }

  ExpressionPtr parse_not() {
    if (is_name("not")) {
      const int line = current().line;
      advance();
      return std::make_unique<UnaryExpression>(UnaryOperator::kNot, parse_not(), line);
    }
    return parse_compare();
  }

  ExpressionPtr parse_compare() {
    const int line = current().line;
    ExpressionPtr first = parse_math1();
    std::vector<std::pair<CompareOperator, ExpressionPtr>> rest;
    while (true) {
      CompareOperator op;
      if (is_operator("==")) {
        op = CompareOperator::kEqual;
      } else if (is_operator("!=")) {
        op = CompareOperator::kNotEqual;
      } else if (is_operator("<")) {
        op = CompareOperator::kLess;
      } else if (is_operator("<=")) {
        op = CompareOperator::kLessEqual;
      } else if (is_operator(">")) {
        op = CompareOperator::kGreater;
      } else if (is_operator(">=")) {
        op = CompareOperator::kGreaterEqual;
      } else if (is_name("in")) {
        op = CompareOperator::kIn;
      } else if (is_name("not") && look().type == TokenType::kName && look().text == "in") {
        advance();
        op = CompareOperator::kNotIn;
      } else {
        break;
      }
      advance();
      rest.emplace_back(op, parse_math1());
    }
    if (rest.empty()) return first;
    auto node = std::make_unique<CompareExpression>(std::move(first), line);
    node->rest = std::move(rest);
    return node;
  }

  ExpressionPtr parse_math1() {
    NestingGuard chain(*this, /*count_self=*/false);
    const int line = current().line;
    ExpressionPtr left = parse_concat();
    while (is_operator("+") || is_operator("-")) {
      chain.deepen();
      const BinaryOperator op = is_operator("+") ? BinaryOperator::kAdd : BinaryOperator::kSubtract;
      advance();
      left = std::make_unique<BinaryExpression>(op, std::move(left), parse_concat(), line);
    }
    return left;
  }

  ExpressionPtr parse_concat() {
    const int line = current().line;
    ExpressionPtr first = parse_math2();
    if (!is_operator("~")) return first;
    auto node = std::make_unique<ConcatExpression>(line);
    node->parts.push_back(std::move(first));
    while (skip_operator("~")) node->parts.push_back(parse_math2());
    return node;
  }

  ExpressionPtr parse_math2() {
    NestingGuard chain(*this, /*count_self=*/false);
    const int line = current().line;
    ExpressionPtr left = parse_pow();
    while (true) {
      chain.deepen();
      BinaryOperator op;
      if (is_operator("*")) {
        op = BinaryOperator::kMultiply;
      } else if (is_operator("/")) {
        op = BinaryOperator::kDivide;
      } else if (is_operator("//")) {
        op = BinaryOperator::kFloorDivide;
      } else if (is_operator("%")) {
        op = BinaryOperator::kModulo;
      } else {
        return left;
      }
      advance();
      left = std::make_unique<BinaryExpression>(op, std::move(left), parse_pow(), line);
    }
  }

  ExpressionPtr parse_pow() {
    NestingGuard chain(*this, /*count_self=*/false);
    const int line = current().line;
    ExpressionPtr left = parse_unary(true);
    while (skip_operator("**")) {
      chain.deepen();
      left = std::make_unique<BinaryExpression>(BinaryOperator::kPower, std::move(left), parse_unary(true),
                                                line);
    }
    return left;
  }

  ExpressionPtr parse_unary(bool with_filter) {
    const NestingGuard guard(*this);
    const int line = current().line;
    ExpressionPtr node;
    if (skip_operator("-")) {
      node = std::make_unique<UnaryExpression>(UnaryOperator::kNegate, parse_unary(false), line);
    } else if (skip_operator("+")) {
      node = std::make_unique<UnaryExpression>(UnaryOperator::kPlus, parse_unary(false), line);
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filter_expression(std::move(node));
    return node;
  }

  ExpressionPtr parse_primary() {
    const Token& token = current();
    const int line = token.line;
    switch (token.type) {
      case TokenType::kName: {
        const std::string name = token.text;
        advance();
        if (name == "true" || name == "True")
          return std::make_unique<LiteralExpression>(Value::boolean(true), line);
        if (name == "false" || name == "False") {
          return std::make_unique<LiteralExpression>(Value::boolean(false), line);
        }
        if (name == "none" || name == "None") return std::make_unique<LiteralExpression>(Value::none(), line);
        return std::make_unique<NameExpression>(name, line);
      }
      case TokenType::kString: {
        std::string text;
        while (current().type == TokenType::kString) {
          text += current().text;
          advance();
        }
        return std::make_unique<LiteralExpression>(Value::string(std::move(text)), line);
      }
      case TokenType::kInteger: {
        const int64_t value = token.integer;
        advance();
        return std::make_unique<LiteralExpression>(Value::integer(value), line);
      }
      case TokenType::kFloat: {
        const double value = token.floating;
        advance();
        return std::make_unique<LiteralExpression>(Value::floating(value), line);
      }
      case TokenType::kOperator:
        if (token.text == "(") {
          advance();
          ExpressionPtr inner = parse_tuple(false, true, {}, /*explicit_parentheses=*/true);
          expect_operator(")");
          return inner;
        }
        if (token.text == "[") return parse_list();
        if (token.text == "{") return parse_dict();
        break;
      default: break;
    }
    syntax_error("unexpected '" + describe(token) + "'");
  }

  ExpressionPtr parse_list() {
    auto node = std::make_unique<SequenceExpression>(Expression::Kind::kList, current().line);
    expect_operator("[");
    while (!is_operator("]")) {
      if (!node->items.empty()) expect_operator(",");
      if (is_operator("]")) break;
      node->items.push_back(parse_expression(true));
    }
    expect_operator("]");
    return node;
  }

  ExpressionPtr parse_dict() {
    auto node = std::make_unique<DictExpression>(current().line);
    expect_operator("{");
    while (!is_operator("}")) {
      if (!node->pairs.empty()) expect_operator(",");
      if (is_operator("}")) break;
      ExpressionPtr key = parse_expression(true);
      expect_operator(":");
      node->pairs.emplace_back(std::move(key), parse_expression(true));
    }
    expect_operator("}");
    return node;
  }

  ExpressionPtr parse_postfix(ExpressionPtr node) {
    NestingGuard chain(*this, /*count_self=*/false);
    while (true) {
      chain.deepen();
      if (is_operator(".") || is_operator("[")) {
        node = parse_subscript(std::move(node));
      } else if (is_operator("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExpressionPtr parse_filter_expression(ExpressionPtr node) {
    NestingGuard chain(*this, /*count_self=*/false);
    while (true) {
      chain.deepen();
      if (is_operator("|")) {
        node = parse_filter(std::move(node), /*start_inline=*/false);
      } else if (is_name("is")) {
        node = parse_test(std::move(node));
      } else if (is_operator("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExpressionPtr parse_subscript(ExpressionPtr node) {
    const int line = current().line;
    if (skip_operator(".")) {
      const Token& attribute = current();
      if (attribute.type == TokenType::kName) {
        std::string name = attribute.text;
        advance();
        return std::make_unique<GetAttributeExpression>(std::move(node), std::move(name), line);
      }
      if (attribute.type != TokenType::kInteger) syntax_error("expected name or number");
      auto key = std::make_unique<LiteralExpression>(Value::integer(attribute.integer), attribute.line);
      advance();
      return std::make_unique<GetItemExpression>(std::move(node), std::move(key), line);
    }
    expect_operator("[");
    std::vector<ExpressionPtr> keys;
    while (!is_operator("]")) {
      if (!keys.empty()) expect_operator(",");
      keys.push_back(parse_subscribed());
    }
    expect_operator("]");
    if (keys.size() == 1)
      return std::make_unique<GetItemExpression>(std::move(node), std::move(keys[0]), line);
    auto tuple = std::make_unique<SequenceExpression>(Expression::Kind::kTuple, line);
    tuple->items = std::move(keys);
    return std::make_unique<GetItemExpression>(std::move(node), std::move(tuple), line);
  }

  ExpressionPtr parse_subscribed() {
    const int line = current().line;
    auto slice = std::make_unique<SliceExpression>(line);
    if (is_operator(":")) {
      advance();
    } else {
      ExpressionPtr start = parse_expression(true);
      if (!is_operator(":")) return start;
      advance();
      slice->start = std::move(start);
    }
    if (!is_operator(":") && !is_operator("]") && !is_operator(",")) slice->stop = parse_expression(true);
    if (skip_operator(":")) {
      if (!is_operator("]") && !is_operator(",")) slice->step = parse_expression(true);
    }
    return slice;
  }

  void parse_call_arguments(ArgumentList& arguments) {
    const int line = current().line;
    expect_operator("(");
    bool require_comma = false;
    auto ensure = [&](bool condition) {
      if (!condition) syntax_error("invalid syntax for function call expression", line);
    };
    while (!is_operator(")")) {
      if (require_comma) {
        expect_operator(",");
        if (is_operator(")")) break;  // trailing comma
      }
      if (skip_operator("*")) {
        ensure(!arguments.star_positional && !arguments.star_keyword);
        arguments.star_positional = parse_expression(true);
      } else if (skip_operator("**")) {
        ensure(!arguments.star_keyword);
        arguments.star_keyword = parse_expression(true);
      } else if (current().type == TokenType::kName && look().type == TokenType::kOperator &&
                 look().text == "=") {
        ensure(!arguments.star_keyword);
        std::string key = current().text;
        advance();
        advance();
        arguments.keyword.emplace_back(std::move(key), parse_expression(true));
      } else {
        ensure(!arguments.star_positional && !arguments.star_keyword && arguments.keyword.empty());
        arguments.positional.push_back(parse_expression(true));
      }
      require_comma = true;
    }
    expect_operator(")");
  }

  ExpressionPtr parse_call(ExpressionPtr callee) {
    auto node = std::make_unique<CallExpression>(std::move(callee), current().line);
    parse_call_arguments(node->arguments);
    return node;
  }

  // `|name(args)|name2...`; with start_inline the first filter has no leading pipe ({% filter %}).
  ExpressionPtr parse_filter(ExpressionPtr node, bool start_inline) {
    NestingGuard chain(*this, /*count_self=*/false);
    while (is_operator("|") || start_inline) {
      chain.deepen();
      if (!start_inline) advance();
      start_inline = false;
      const int line = current().line;
      std::string name = expect_any_name();
      while (skip_operator(".")) name += "." + expect_any_name();
      auto filter = std::make_unique<FilterExpression>(std::move(node), std::move(name), line);
      if (is_operator("(")) parse_call_arguments(filter->arguments);
      node = std::move(filter);
    }
    return node;
  }

  ExpressionPtr parse_test(ExpressionPtr node) {
    const int line = current().line;
    advance();  // is
    const bool negated = skip_name("not");
    std::string name = expect_any_name();
    while (skip_operator(".")) name += "." + expect_any_name();
    auto test = std::make_unique<TestExpression>(std::move(node), std::move(name), line);
    const Token& token = current();
    const bool starts_argument =
        token.type == TokenType::kName || token.type == TokenType::kString ||
        token.type == TokenType::kInteger || token.type == TokenType::kFloat ||
        (token.type == TokenType::kOperator && (token.text == "[" || token.text == "{"));
    if (is_operator("(")) {
      parse_call_arguments(test->arguments);
    } else if (starts_argument && !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) syntax_error("You cannot chain multiple tests with is");
      test->arguments.positional.push_back(parse_postfix(parse_primary()));
    }
    if (negated) return std::make_unique<UnaryExpression>(UnaryOperator::kNot, std::move(test), line);
    return test;
  }

  // --- checks after parsing -------------------------------------------------------------------------
  // Refuses what this engine does not implement, marks filters/tests jinja2 does not know (a compile
  // error outside if-blocks and conditional expressions, a runtime error inside: jinja2's "soft"
  // frames), and records which macros read `varargs` / `kwargs`.
  void validate(Body& body, bool soft) {
    for (StatementPtr& statement : body) validate(*statement, soft);
  }

  void validate(Statement& statement, bool soft) {
    switch (statement.kind) {
      case Statement::Kind::kOutput:
        validate(static_cast<OutputStatement&>(statement).expression.get(), soft);
        break;
      case Statement::Kind::kIf: {
        auto& node = static_cast<IfStatement&>(statement);
        for (auto& [test, body] : node.branches) {
          validate(test.get(), true);
          validate(body, true);
        }
        validate(node.otherwise, true);
        break;
      }
      case Statement::Kind::kFor: {
        auto& node = static_cast<ForStatement&>(statement);
        validate(node.iterable.get(), soft);
        validate(node.condition.get(), false);
        validate(node.body, false);
        validate(node.otherwise, false);
        break;
      }
      case Statement::Kind::kSet: validate(static_cast<SetStatement&>(statement).value.get(), soft); break;
      case Statement::Kind::kSetBlock: {
        auto& node = static_cast<SetBlockStatement&>(statement);
        validate(node.filter.get(), soft);
        validate(node.body, false);
        break;
      }
      case Statement::Kind::kMacro: {
        auto& node = static_cast<MacroStatement&>(statement);
        macros_.push_back(&node);
        for (auto& value : node.defaults) validate(value.get(), false);
        validate(node.body, false);
        macros_.pop_back();
        break;
      }
      case Statement::Kind::kFilterBlock: {
        auto& node = static_cast<FilterBlockStatement&>(statement);
        validate(node.filter.get(), soft);
        validate(node.body, false);
        break;
      }
      case Statement::Kind::kScope: validate(static_cast<ScopeStatement&>(statement).body, false); break;
      case Statement::Kind::kWith: {
        auto& node = static_cast<WithStatement&>(statement);
        for (auto& assignment : node.assignments) validate(assignment.second.get(), soft);
        validate(node.body, false);
        break;
      }
      default: break;
    }
  }

  void validate(ArgumentList& arguments, bool soft) {
    for (auto& argument : arguments.positional) validate(argument.get(), soft);
    for (auto& argument : arguments.keyword) validate(argument.second.get(), soft);
    validate(arguments.star_positional.get(), soft);
    validate(arguments.star_keyword.get(), soft);
  }

  void validate(Expression* expression, bool soft) {
    if (expression == nullptr) return;
    switch (expression->kind) {
      case Expression::Kind::kLiteral: break;
      case Expression::Kind::kName: {
        const std::string& name = static_cast<NameExpression*>(expression)->name;
        if (is_unimplemented_global(name)) unsupported("the Jinja global '" + name + "'", expression->line);
        if (name == "caller") unsupported("'caller' (call blocks)", expression->line);
        if (!macros_.empty() && name == "varargs") macros_.back()->uses_varargs = true;
        if (!macros_.empty() && name == "kwargs") macros_.back()->uses_kwargs = true;
        break;
      }
      case Expression::Kind::kList:
      case Expression::Kind::kTuple:
        for (auto& item : static_cast<SequenceExpression*>(expression)->items) validate(item.get(), soft);
        break;
      case Expression::Kind::kDict:
        for (auto& [key, value] : static_cast<DictExpression*>(expression)->pairs) {
          validate(key.get(), soft);
          validate(value.get(), soft);
        }
        break;
      case Expression::Kind::kGetAttribute:
        validate(static_cast<GetAttributeExpression*>(expression)->object.get(), soft);
        break;
      case Expression::Kind::kGetItem: {
        auto* node = static_cast<GetItemExpression*>(expression);
        validate(node->object.get(), soft);
        validate(node->key.get(), soft);
        break;
      }
      case Expression::Kind::kSlice: {
        auto* node = static_cast<SliceExpression*>(expression);
        validate(node->start.get(), soft);
        validate(node->stop.get(), soft);
        validate(node->step.get(), soft);
        break;
      }
      case Expression::Kind::kCall: {
        auto* node = static_cast<CallExpression*>(expression);
        if (node->callee->kind == Expression::Kind::kGetAttribute) {
          const std::string& method = static_cast<GetAttributeExpression*>(node->callee.get())->attribute;
          if (is_unimplemented_python_method(method)) {
            unsupported("the Python method '" + method + "()'", expression->line);
          }
        }
        validate(node->callee.get(), soft);
        validate(node->arguments, soft);
        break;
      }
      case Expression::Kind::kFilter: {
        auto* node = static_cast<FilterExpression*>(expression);
        switch (filter_support(node->name)) {
          case BuiltinSupport::kImplemented: break;
          case BuiltinSupport::kNotImplemented:
            unsupported("the Jinja filter '" + node->name + "'", expression->line);
          case BuiltinSupport::kUnknown:
            if (!soft) {
              throw TemplateFailure(FailureKind::kAssertion, "No filter named '" + node->name + "'.",
                                    expression->line);
            }
            node->unknown = true;
        }
        validate(node->operand.get(), soft);
        validate(node->arguments, soft);
        break;
      }
      case Expression::Kind::kTest: {
        auto* node = static_cast<TestExpression*>(expression);
        switch (test_support(node->name)) {
          case BuiltinSupport::kImplemented: break;
          case BuiltinSupport::kNotImplemented:
            unsupported("the Jinja test '" + node->name + "'", expression->line);
          case BuiltinSupport::kUnknown:
            if (!soft) {
              throw TemplateFailure(FailureKind::kAssertion, "No test named '" + node->name + "'.",
                                    expression->line);
            }
            node->unknown = true;
        }
        validate(node->operand.get(), soft);
        validate(node->arguments, soft);
        break;
      }
      case Expression::Kind::kUnary:
        validate(static_cast<UnaryExpression*>(expression)->operand.get(), soft);
        break;
      case Expression::Kind::kBinary: {
        auto* node = static_cast<BinaryExpression*>(expression);
        validate(node->left.get(), soft);
        validate(node->right.get(), soft);
        break;
      }
      case Expression::Kind::kConcat:
        for (auto& part : static_cast<ConcatExpression*>(expression)->parts) validate(part.get(), soft);
        break;
      case Expression::Kind::kCompare: {
        auto* node = static_cast<CompareExpression*>(expression);
        validate(node->first.get(), soft);
        for (auto& [op, operand] : node->rest) validate(operand.get(), soft);
        break;
      }
      case Expression::Kind::kConditional: {
        auto* node = static_cast<ConditionalExpression*>(expression);
        validate(node->test.get(), true);
        validate(node->then.get(), true);
        validate(node->otherwise.get(), true);
        break;
      }
    }
  }

  std::vector<Token> tokens_;
  size_t position_ = 0;
  int loop_depth_ = 0;
  int nesting_ = 0;
  std::vector<MacroStatement*> macros_;  // macros enclosing the node being validated
};

}  // namespace

Body parse_template(std::string_view source) { return Parser(source).parse(); }

}  // namespace cartridge::jinja
