#include "tokenizer/jinja/renderer.h"

#include <algorithm>
#include <memory>

#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/failure.h"
#include "tokenizer/jinja/filters.h"
#include "tokenizer/jinja/globals.h"
#include "tokenizer/jinja/operations.h"

namespace cartridge::jinja {

namespace {

// Deeper macro nesting than this is a RecursionError (Python's own limit would stop jinja2 around here,
// and the C++ stack must never overflow on a hostile template).
constexpr int kMaxMacroDepth = 200;
// Nested statement and expression evaluations (macro calls included) allowed at once; like Python's
// recursion limit, it keeps a hostile template from exhausting the C++ stack.
constexpr int kMaxEvaluationDepth = 1500;
// Statements and expressions one render may evaluate: far beyond any chat prompt (a long conversation
// takes well under a million), it stops a runaway loop instead of hanging.
constexpr int64_t kMaxSteps = 200'000'000;
// Output one render may produce.
constexpr size_t kMaxOutputBytes = kMaxResultBytes;

// Counts one level of nesting for as long as it lives, and one step of work.
class DepthGuard {
 public:
  DepthGuard(int& depth, int64_t& steps) : depth_(depth) {
    if (++steps > kMaxSteps) {
      fail(FailureKind::kUnsupported,
           "more than " + std::to_string(kMaxSteps) + " evaluation steps (a runaway loop?)");
    }
    if (++depth_ > kMaxEvaluationDepth) {
      --depth_;
      fail(FailureKind::kRecursion, "maximum recursion depth exceeded while rendering");
    }
  }
  ~DepthGuard() { --depth_; }
  DepthGuard(const DepthGuard&) = delete;
  DepthGuard& operator=(const DepthGuard&) = delete;

 private:
  int& depth_;
};

class MacroFunction : public Callable {
 public:
  MacroFunction(const MacroStatement& macro, Frame* closure) : macro_(macro), closure_(closure) {}
  std::string name() const override { return macro_.name; }
  std::string repr() const override { return "<Macro '" + macro_.name + "'>"; }
  Value call(CallArguments arguments, Renderer& renderer) const override {
    return renderer.call_macro(macro_, closure_, std::move(arguments));
  }

 private:
  const MacroStatement& macro_;
  Frame* closure_;
};

bool is_hashable(const Value& value) {
  switch (value.type()) {
    case Value::Type::kSequence:
      if (value.sequence_kind() != SequenceKind::kTuple) return false;
      for (const Value& item : value.items()) {
        if (!is_hashable(item)) return false;
      }
      return true;
    case Value::Type::kDict: return false;
    default: return true;
  }
}

}  // namespace

const Value* Frame::find(std::string_view name) const {
  for (const Frame* frame = this; frame != nullptr; frame = frame->parent) {
    for (const auto& [key, value] : frame->variables) {
      if (key == name) return &value;
    }
  }
  return nullptr;
}

void Frame::set(const std::string& name, Value value) {
  for (auto& [key, existing] : variables) {
    if (key == name) {
      existing = std::move(value);
      return;
    }
  }
  variables.emplace_back(name, std::move(value));
}

Frame* Renderer::new_frame(Frame* parent) {
  frames_.emplace_back();
  frames_.back().parent = parent;
  frames_.back().index = frames_.size() - 1;
  return &frames_.back();
}

void Renderer::release_frames(FrameMark mark) {
  if (captured_frames_end_ > mark) return;
  while (frames_.size() > mark) frames_.pop_back();
}

std::string Renderer::render(const Body& body, const Dict& variables) {
  Frame* globals = new_frame(nullptr);
  for (auto& [name, value] : make_globals()) globals->set(name, std::move(value));
  // Render variables shadow the globals, as jinja2's context does.
  Frame* root = new_frame(globals);
  for (const auto& [key, value] : variables.entries()) root->set(key.as_string(), value);
  std::string output;
  output_ = &output;
  execute(body, root);
  output_ = nullptr;
  return output;
}

Renderer::Flow Renderer::execute(const Body& body, Frame* frame) {
  for (const StatementPtr& statement : body) {
    const Flow flow = execute(*statement, frame);
    if (flow != Flow::kNormal) return flow;
  }
  return Flow::kNormal;
}

std::string Renderer::capture(const Body& body, Frame* frame) {
  std::string captured;
  std::string* saved = output_;
  output_ = &captured;
  const FrameMark mark = mark_frames();
  try {
    execute(body, new_frame(frame));
  } catch (...) {
    output_ = saved;
    throw;
  }
  output_ = saved;
  release_frames(mark);
  return captured;
}

Renderer::Flow Renderer::execute(const Statement& statement, Frame* frame) {
  const DepthGuard guard(evaluation_depth_, steps_);
  if (output_->size() > kMaxOutputBytes) check_result_size(output_->size(), false);
  line_ = statement.line;
  switch (statement.kind) {
    case Statement::Kind::kData:
      output_->append(static_cast<const DataStatement&>(statement).text);
      return Flow::kNormal;
    case Statement::Kind::kOutput:
      output_->append(
          to_python_str(evaluate(*static_cast<const OutputStatement&>(statement).expression, frame)));
      return Flow::kNormal;
    case Statement::Kind::kIf: {
      const auto& node = static_cast<const IfStatement&>(statement);
      for (const auto& [test, body] : node.branches) {
        if (is_truthy(evaluate(*test, frame))) return execute(body, frame);
      }
      return execute(node.otherwise, frame);
    }
    case Statement::Kind::kFor:
      execute_for(static_cast<const ForStatement&>(statement), frame);
      return Flow::kNormal;
    case Statement::Kind::kSet: {
      const auto& node = static_cast<const SetStatement&>(statement);
      assign(node.target, evaluate(*node.value, frame), frame);
      return Flow::kNormal;
    }
    case Statement::Kind::kSetBlock: {
      const auto& node = static_cast<const SetBlockStatement&>(statement);
      Value value = Value::string(capture(node.body, frame));
      if (node.filter) value = apply_filter_chain(*node.filter, value, frame);
      assign(node.target, value, frame);
      return Flow::kNormal;
    }
    case Statement::Kind::kMacro: {
      const auto& node = static_cast<const MacroStatement&>(statement);
      frame->set(node.name, Value::callable(std::make_shared<MacroFunction>(node, frame)));
      captured_frames_end_ = std::max(captured_frames_end_, frame->index + 1);
      return Flow::kNormal;
    }
    case Statement::Kind::kFilterBlock: {
      const auto& node = static_cast<const FilterBlockStatement&>(statement);
      const Value text = Value::string(capture(node.body, frame));
      output_->append(to_python_str(apply_filter_chain(*node.filter, text, frame)));
      return Flow::kNormal;
    }
    case Statement::Kind::kScope:
      output_->append(capture(static_cast<const ScopeStatement&>(statement).body, frame));
      return Flow::kNormal;
    case Statement::Kind::kWith: {
      // Unlike a macro-like scope, break / continue inside reach the enclosing loop.
      const auto& node = static_cast<const WithStatement&>(statement);
      std::vector<Value> values;
      for (const auto& assignment : node.assignments) values.push_back(evaluate(*assignment.second, frame));
      const FrameMark mark = mark_frames();
      Frame* scope = new_frame(frame);
      for (size_t i = 0; i < values.size(); ++i) assign(node.assignments[i].first, values[i], scope);
      const Flow flow = execute(node.body, scope);
      release_frames(mark);
      return flow;
    }
    case Statement::Kind::kBreak: return Flow::kBreak;
    case Statement::Kind::kContinue: return Flow::kContinue;
  }
  return Flow::kNormal;
}

void Renderer::execute_for(const ForStatement& node, Frame* frame) {
  std::vector<Value> items = python_iterate(evaluate(*node.iterable, frame));
  if (node.condition) {
    // The filter sees the loop target but no `loop` (jinja2 evaluates it before counting).
    std::vector<Value> kept;
    for (Value& item : items) {
      const FrameMark mark = mark_frames();
      Frame* test_frame = new_frame(frame);
      assign(node.target, item, test_frame);
      const bool keep = is_truthy(evaluate(*node.condition, test_frame));
      release_frames(mark);
      if (keep) kept.push_back(std::move(item));
    }
    items = std::move(kept);
  }
  if (items.empty()) {
    const FrameMark mark = mark_frames();
    execute(node.otherwise, new_frame(frame));
    release_frames(mark);
    return;
  }
  const auto shared_items = std::make_shared<const std::vector<Value>>(std::move(items));
  const auto last_changed = std::make_shared<std::optional<std::vector<Value>>>();
  const int64_t length = static_cast<int64_t>(shared_items->size());
  for (int64_t index = 0; index < length; ++index) {
    // Each iteration gets a fresh scope: a {% set %} in the body never survives to the next iteration.
    const FrameMark mark = mark_frames();
    Frame* iteration = new_frame(frame);
    auto loop = std::make_shared<LoopData>();
    loop->items = shared_items;
    loop->index0 = index;
    loop->last_changed = last_changed;
    iteration->set("loop", Value::loop(std::move(loop)));
    assign(node.target, (*shared_items)[index], iteration);
    const Flow flow = execute(node.body, iteration);
    release_frames(mark);
    if (flow == Flow::kBreak) break;
  }
}

void Renderer::assign(const AssignTarget& target, const Value& value, Frame* frame) {
  switch (target.kind) {
    case AssignTarget::Kind::kName: frame->set(target.name, value); return;
    case AssignTarget::Kind::kNamespaceAttribute: {
      const Value* object = frame->find(target.name);
      if (object == nullptr || !object->is_namespace()) {
        fail(FailureKind::kRuntime, "cannot assign attribute on non-namespace object");
      }
      if (!target.attribute.empty() && target.attribute[0] == '_') {
        fail(FailureKind::kSecurity,
             "Chat templates cannot store underscore-prefixed attributes on a namespace, "
             "but got '" +
                 target.attribute + "'. Please rename the attribute.");
      }
      object->as_namespace().attributes.set(target.attribute, value);
      return;
    }
    case AssignTarget::Kind::kTuple: {
      if (value.is_undefined()) raise_undefined(value);
      const std::vector<Value> items = python_iterate(value);
      const size_t wanted = target.items.size();
      if (items.size() < wanted) {
        fail(FailureKind::kValue, "not enough values to unpack (expected " + std::to_string(wanted) +
                                      ", got " + std::to_string(items.size()) + ")");
      }
      if (items.size() > wanted) {
        fail(FailureKind::kValue, "too many values to unpack (expected " + std::to_string(wanted) + ")");
      }
      for (size_t i = 0; i < wanted; ++i) assign(target.items[i], items[i], frame);
      return;
    }
  }
}

Value Renderer::call(const Value& callee, CallArguments arguments) {
  if (callee.is_undefined()) raise_undefined(callee);
  if (!callee.is_callable())
    fail(FailureKind::kType, "'" + python_type_name(callee) + "' object is not callable");
  return callee.as_callable().call(std::move(arguments), *this);
}

Value Renderer::call_macro(const MacroStatement& macro, Frame* closure, CallArguments arguments) {
  if (macro_depth_ >= kMaxMacroDepth) {
    fail(FailureKind::kRecursion,
         "macro '" + macro.name + "' nested more than " + std::to_string(kMaxMacroDepth) + " calls deep");
  }
  const size_t parameter_count = macro.parameters.size();
  if (arguments.positional.size() > parameter_count && !macro.uses_varargs) {
    fail(FailureKind::kType, "macro '" + macro.name + "' takes not more than " +
                                 std::to_string(parameter_count) + " argument(s)");
  }
  const FrameMark mark = mark_frames();
  Frame* frame = new_frame(closure);
  const size_t first_default = parameter_count - macro.defaults.size();
  for (size_t i = 0; i < parameter_count; ++i) {
    const std::string& parameter = macro.parameters[i];
    auto keyword = std::find_if(arguments.keyword.begin(), arguments.keyword.end(),
                                [&](const auto& entry) { return entry.first == parameter; });
    Value value;
    if (i < arguments.positional.size()) {
      if (keyword != arguments.keyword.end()) {
        fail(FailureKind::kType,
             "macro '" + macro.name + "' got multiple values for argument '" + parameter + "'");
      }
      value = arguments.positional[i];
    } else if (keyword != arguments.keyword.end()) {
      value = std::move(keyword->second);
      arguments.keyword.erase(keyword);
    } else if (i >= first_default) {
      value = evaluate(*macro.defaults[i - first_default], frame);
    } else {
      value = Value::undefined("parameter '" + parameter + "' was not provided");
    }
    frame->set(parameter, std::move(value));
  }
  if (macro.uses_varargs) {
    std::vector<Value> extra;
    for (size_t i = parameter_count; i < arguments.positional.size(); ++i)
      extra.push_back(arguments.positional[i]);
    frame->set("varargs", Value::sequence(std::move(extra), SequenceKind::kTuple));
  }
  if (macro.uses_kwargs) {
    Dict extra;
    for (auto& [key, value] : arguments.keyword) extra.set(key, std::move(value));
    frame->set("kwargs", Value::dict(std::move(extra)));
  } else if (!arguments.keyword.empty()) {
    fail(FailureKind::kType,
         "macro '" + macro.name + "' takes no keyword argument '" + arguments.keyword[0].first + "'");
  }
  std::string captured;
  std::string* saved = output_;
  output_ = &captured;
  ++macro_depth_;
  try {
    execute(macro.body, frame);
  } catch (...) {
    output_ = saved;
    --macro_depth_;
    throw;
  }
  output_ = saved;
  --macro_depth_;
  release_frames(mark);
  return Value::string(std::move(captured));
}

Value Renderer::call_filter(std::string_view name, const Value& input, CallArguments arguments) {
  const FilterFunction function = find_filter(name);
  if (function == nullptr) fail(FailureKind::kRuntime, "No filter named '" + std::string(name) + "' found.");
  return function(*this, input, std::move(arguments));
}

bool Renderer::call_test(std::string_view name, const Value& input, CallArguments arguments) {
  const TestFunction function = find_test(name);
  if (function == nullptr) fail(FailureKind::kRuntime, "No test named '" + std::string(name) + "' found.");
  return function(*this, input, std::move(arguments));
}

CallArguments Renderer::evaluate_arguments(const ArgumentList& arguments, Frame* frame) {
  CallArguments result;
  for (const ExpressionPtr& argument : arguments.positional)
    result.positional.push_back(evaluate(*argument, frame));
  for (const auto& [key, argument] : arguments.keyword)
    result.keyword.emplace_back(key, evaluate(*argument, frame));
  if (arguments.star_positional) {
    for (Value& item : python_iterate(evaluate(*arguments.star_positional, frame))) {
      result.positional.push_back(std::move(item));
    }
  }
  if (arguments.star_keyword) {
    const Value mapping = evaluate(*arguments.star_keyword, frame);
    if (!mapping.is_dict()) fail(FailureKind::kType, "argument after ** must be a mapping");
    for (const auto& [key, value] : mapping.as_dict().entries()) {
      if (!key.is_string()) fail(FailureKind::kType, "keywords must be strings");
      result.keyword.emplace_back(key.as_string(), value);
    }
  }
  return result;
}

Value Renderer::apply_filter_chain(const Expression& filter, const Value& input, Frame* frame) {
  const auto& node = static_cast<const FilterExpression&>(filter);
  Value operand = node.operand ? apply_filter_chain(*node.operand, input, frame) : input;
  return evaluate_filter(node, std::move(operand), frame);
}

Value Renderer::evaluate_filter(const FilterExpression& node, Value input, Frame* frame) {
  CallArguments arguments = evaluate_arguments(node.arguments, frame);
  line_ = node.line;
  if (node.unknown) fail(FailureKind::kRuntime, "No filter named '" + node.name + "' found.");
  return call_filter(node.name, input, std::move(arguments));
}

Value Renderer::evaluate(const Expression& expression, Frame* frame) {
  const DepthGuard guard(evaluation_depth_, steps_);
  line_ = expression.line;
  switch (expression.kind) {
    case Expression::Kind::kLiteral: return static_cast<const LiteralExpression&>(expression).value;
    case Expression::Kind::kName: {
      const std::string& name = static_cast<const NameExpression&>(expression).name;
      const Value* value = frame->find(name);
      return value ? *value : Value::undefined("'" + name + "' is undefined");
    }
    case Expression::Kind::kList:
    case Expression::Kind::kTuple: {
      std::vector<Value> items;
      for (const ExpressionPtr& item : static_cast<const SequenceExpression&>(expression).items) {
        items.push_back(evaluate(*item, frame));
      }
      return Value::sequence(std::move(items), expression.kind == Expression::Kind::kList
                                                   ? SequenceKind::kList
                                                   : SequenceKind::kTuple);
    }
    case Expression::Kind::kDict: {
      Dict dict;
      for (const auto& [key_expression, value_expression] :
           static_cast<const DictExpression&>(expression).pairs) {
        Value key = evaluate(*key_expression, frame);
        if (!is_hashable(key)) fail(FailureKind::kType, "unhashable type: '" + python_type_name(key) + "'");
        dict.set(std::move(key), evaluate(*value_expression, frame));
      }
      return Value::dict(std::move(dict));
    }
    case Expression::Kind::kGetAttribute: {
      const auto& node = static_cast<const GetAttributeExpression&>(expression);
      const Value object = evaluate(*node.object, frame);
      line_ = node.line;
      return get_attribute(object, node.attribute);
    }
    case Expression::Kind::kGetItem: {
      const auto& node = static_cast<const GetItemExpression&>(expression);
      const Value object = evaluate(*node.object, frame);
      if (node.key->kind == Expression::Kind::kSlice) {
        const auto& slice = static_cast<const SliceExpression&>(*node.key);
        auto bound = [&](const ExpressionPtr& part) { return part ? evaluate(*part, frame) : Value::none(); };
        const Value start = bound(slice.start);
        const Value stop = bound(slice.stop);
        const Value step = bound(slice.step);
        line_ = node.line;
        return get_slice(object, start, stop, step);
      }
      const Value key = evaluate(*node.key, frame);
      line_ = node.line;
      return get_item(object, key);
    }
    case Expression::Kind::kSlice: fail(FailureKind::kSyntax, "a slice outside of a subscript");
    case Expression::Kind::kCall: {
      const auto& node = static_cast<const CallExpression&>(expression);
      const Value callee = evaluate(*node.callee, frame);
      CallArguments arguments = evaluate_arguments(node.arguments, frame);
      line_ = node.line;
      return call(callee, std::move(arguments));
    }
    case Expression::Kind::kFilter: {
      const auto& node = static_cast<const FilterExpression&>(expression);
      return evaluate_filter(node, evaluate(*node.operand, frame), frame);
    }
    case Expression::Kind::kTest: {
      const auto& node = static_cast<const TestExpression&>(expression);
      const Value operand = evaluate(*node.operand, frame);
      CallArguments arguments = evaluate_arguments(node.arguments, frame);
      line_ = node.line;
      if (node.unknown) fail(FailureKind::kRuntime, "No test named '" + node.name + "' found.");
      return Value::boolean(call_test(node.name, operand, std::move(arguments)));
    }
    case Expression::Kind::kUnary: {
      const auto& node = static_cast<const UnaryExpression&>(expression);
      const Value operand = evaluate(*node.operand, frame);
      if (node.op == UnaryOperator::kNot) return Value::boolean(!is_truthy(operand));
      return unary_operation(node.op, operand);
    }
    case Expression::Kind::kBinary: {
      const auto& node = static_cast<const BinaryExpression&>(expression);
      Value left = evaluate(*node.left, frame);
      // `and` / `or` return an operand, not a bool, and skip the right side when decided (Python).
      if (node.op == BinaryOperator::kAnd) return is_truthy(left) ? evaluate(*node.right, frame) : left;
      if (node.op == BinaryOperator::kOr) return is_truthy(left) ? left : evaluate(*node.right, frame);
      const Value right = evaluate(*node.right, frame);
      line_ = node.line;
      return binary_operation(node.op, left, right);
    }
    case Expression::Kind::kConcat: {
      std::string text;
      for (const ExpressionPtr& part : static_cast<const ConcatExpression&>(expression).parts) {
        text += to_python_str(evaluate(*part, frame));
        check_result_size(text.size(), false);
      }
      return Value::string(std::move(text));
    }
    case Expression::Kind::kCompare: {
      const auto& node = static_cast<const CompareExpression&>(expression);
      Value left = evaluate(*node.first, frame);
      for (const auto& [op, operand] : node.rest) {
        Value right = evaluate(*operand, frame);
        line_ = node.line;
        if (!compare(op, left, right)) return Value::boolean(false);
        left = std::move(right);
      }
      return Value::boolean(true);
    }
    case Expression::Kind::kConditional: {
      const auto& node = static_cast<const ConditionalExpression&>(expression);
      if (is_truthy(evaluate(*node.test, frame))) return evaluate(*node.then, frame);
      if (node.otherwise) return evaluate(*node.otherwise, frame);
      return Value::undefined("the inline if-expression on line " + std::to_string(node.line) +
                              " evaluated to false and no else section was defined.");
    }
  }
  return Value();
}

}  // namespace cartridge::jinja
