// The syntax tree of a parsed Jinja template: expressions and statements, built once by the parser and
// only read while rendering (so one tree serves concurrent renders).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja/value.h"

namespace cartridge::jinja {

struct Expression;
using ExpressionPtr = std::unique_ptr<Expression>;

// Arguments written at a call site: f(a, b, key=c, *rest, **options).
struct ArgumentList {
  std::vector<ExpressionPtr> positional;
  std::vector<std::pair<std::string, ExpressionPtr>> keyword;
  ExpressionPtr star_positional;  // *args, or null
  ExpressionPtr star_keyword;     // **kwargs, or null
};

enum class UnaryOperator { kNot, kNegate, kPlus };
enum class BinaryOperator { kAdd, kSubtract, kMultiply, kDivide, kFloorDivide, kModulo, kPower, kAnd, kOr };
enum class CompareOperator { kEqual, kNotEqual, kLess, kLessEqual, kGreater, kGreaterEqual, kIn, kNotIn };

struct Expression {
  enum class Kind {
    kLiteral,       // LiteralExpression
    kName,          // NameExpression
    kList,          // SequenceExpression
    kTuple,         // SequenceExpression
    kDict,          // DictExpression
    kGetAttribute,  // GetAttributeExpression: x.name
    kGetItem,       // GetItemExpression: x[key]
    kSlice,         // SliceExpression, only as the key of a GetItem
    kCall,          // CallExpression
    kFilter,        // FilterExpression: x|name(args)
    kTest,          // TestExpression: x is name(args)
    kUnary,         // UnaryExpression
    kBinary,        // BinaryExpression
    kConcat,        // ConcatExpression: a ~ b ~ c
    kCompare,       // CompareExpression: a < b <= c
    kConditional,   // ConditionalExpression: a if b else c
  };
  Expression(Kind kind, int line) : kind(kind), line(line) {}
  virtual ~Expression() = default;
  const Kind kind;
  const int line;
};

struct LiteralExpression : Expression {
  LiteralExpression(Value value, int line) : Expression(Kind::kLiteral, line), value(std::move(value)) {}
  Value value;
};

struct NameExpression : Expression {
  NameExpression(std::string name, int line) : Expression(Kind::kName, line), name(std::move(name)) {}
  std::string name;
};

struct SequenceExpression : Expression {
  using Expression::Expression;
  std::vector<ExpressionPtr> items;
};

struct DictExpression : Expression {
  explicit DictExpression(int line) : Expression(Kind::kDict, line) {}
  std::vector<std::pair<ExpressionPtr, ExpressionPtr>> pairs;
};

struct GetAttributeExpression : Expression {
  GetAttributeExpression(ExpressionPtr object, std::string attribute, int line)
      : Expression(Kind::kGetAttribute, line), object(std::move(object)), attribute(std::move(attribute)) {}
  ExpressionPtr object;
  std::string attribute;
};

struct GetItemExpression : Expression {
  GetItemExpression(ExpressionPtr object, ExpressionPtr key, int line)
      : Expression(Kind::kGetItem, line), object(std::move(object)), key(std::move(key)) {}
  ExpressionPtr object;
  ExpressionPtr key;
};

struct SliceExpression : Expression {
  explicit SliceExpression(int line) : Expression(Kind::kSlice, line) {}
  ExpressionPtr start;  // each may be null
  ExpressionPtr stop;
  ExpressionPtr step;
};

struct CallExpression : Expression {
  CallExpression(ExpressionPtr callee, int line) : Expression(Kind::kCall, line), callee(std::move(callee)) {}
  ExpressionPtr callee;
  ArgumentList arguments;
};

// A filter application. In `{% filter %}` blocks and `{% set x | f %}` the innermost operand is null
// and stands for the block's rendered text.
struct FilterExpression : Expression {
  FilterExpression(ExpressionPtr operand, std::string name, int line)
      : Expression(Kind::kFilter, line), operand(std::move(operand)), name(std::move(name)) {}
  ExpressionPtr operand;
  std::string name;
  ArgumentList arguments;
  // jinja2 does not know this filter; inside an if it only fails when evaluated.
  bool unknown = false;
};

struct TestExpression : Expression {
  TestExpression(ExpressionPtr operand, std::string name, int line)
      : Expression(Kind::kTest, line), operand(std::move(operand)), name(std::move(name)) {}
  ExpressionPtr operand;
  std::string name;
  ArgumentList arguments;
  bool unknown = false;  // as for FilterExpression
};

struct UnaryExpression : Expression {
  UnaryExpression(UnaryOperator op, ExpressionPtr operand, int line)
      : Expression(Kind::kUnary, line), op(op), operand(std::move(operand)) {}
  UnaryOperator op;
  ExpressionPtr operand;
};

struct BinaryExpression : Expression {
  BinaryExpression(BinaryOperator op, ExpressionPtr left, ExpressionPtr right, int line)
      : Expression(Kind::kBinary, line), op(op), left(std::move(left)), right(std::move(right)) {}
  BinaryOperator op;
  ExpressionPtr left;
  ExpressionPtr right;
};

struct ConcatExpression : Expression {
  explicit ConcatExpression(int line) : Expression(Kind::kConcat, line) {}
  std::vector<ExpressionPtr> parts;
};

struct CompareExpression : Expression {
  CompareExpression(ExpressionPtr first, int line)
      : Expression(Kind::kCompare, line), first(std::move(first)) {}
  ExpressionPtr first;
  std::vector<std::pair<CompareOperator, ExpressionPtr>> rest;
};

struct ConditionalExpression : Expression {
  ConditionalExpression(ExpressionPtr test, ExpressionPtr then, ExpressionPtr otherwise, int line)
      : Expression(Kind::kConditional, line),
        test(std::move(test)),
        then(std::move(then)),
        otherwise(std::move(otherwise)) {}
  ExpressionPtr test;
  ExpressionPtr then;
  ExpressionPtr otherwise;  // null: `a if b` yields Undefined when b is false
};

// Where {% set %} and {% for %} store values: a name, ns.attribute, or a tuple of targets.
struct AssignTarget {
  enum class Kind { kName, kNamespaceAttribute, kTuple };
  Kind kind = Kind::kName;
  std::string name;
  std::string attribute;            // kNamespaceAttribute
  std::vector<AssignTarget> items;  // kTuple
};

struct Statement;
using StatementPtr = std::unique_ptr<Statement>;
using Body = std::vector<StatementPtr>;

struct Statement {
  enum class Kind {
    kData,
    kOutput,
    kIf,
    kFor,
    kSet,
    kSetBlock,
    kMacro,
    kFilterBlock,
    kBreak,
    kContinue,
    kScope,
    kWith,
  };
  Statement(Kind kind, int line) : kind(kind), line(line) {}
  virtual ~Statement() = default;
  const Kind kind;
  const int line;
};

struct DataStatement : Statement {
  DataStatement(std::string text, int line) : Statement(Kind::kData, line), text(std::move(text)) {}
  std::string text;
};

struct OutputStatement : Statement {
  OutputStatement(ExpressionPtr expression, int line)
      : Statement(Kind::kOutput, line), expression(std::move(expression)) {}
  ExpressionPtr expression;
};

struct IfStatement : Statement {
  explicit IfStatement(int line) : Statement(Kind::kIf, line) {}
  std::vector<std::pair<ExpressionPtr, Body>> branches;  // if, then each elif
  Body otherwise;
};

struct ForStatement : Statement {
  explicit ForStatement(int line) : Statement(Kind::kFor, line) {}
  AssignTarget target;
  ExpressionPtr iterable;
  ExpressionPtr condition;  // `for x in xs if cond`, or null
  Body body;
  Body otherwise;  // {% else %}: runs when nothing was iterated
};

struct SetStatement : Statement {
  explicit SetStatement(int line) : Statement(Kind::kSet, line) {}
  AssignTarget target;
  ExpressionPtr value;
};

struct SetBlockStatement : Statement {
  explicit SetBlockStatement(int line) : Statement(Kind::kSetBlock, line) {}
  AssignTarget target;
  ExpressionPtr filter;  // a FilterExpression chain applied to the block's text, or null
  Body body;
};

struct MacroStatement : Statement {
  explicit MacroStatement(int line) : Statement(Kind::kMacro, line) {}
  std::string name;
  std::vector<std::string> parameters;
  // defaults[i] belongs to parameters[parameters.size() - defaults.size() + i].
  std::vector<ExpressionPtr> defaults;
  Body body;
  bool uses_varargs = false;  // the body reads `varargs`: extra positional arguments are allowed
  bool uses_kwargs = false;   // the body reads `kwargs`: extra keyword arguments are allowed
};

struct FilterBlockStatement : Statement {
  explicit FilterBlockStatement(int line) : Statement(Kind::kFilterBlock, line) {}
  ExpressionPtr filter;  // FilterExpression chain with a null innermost operand
  Body body;
};

struct LoopControlStatement : Statement {
  using Statement::Statement;  // kBreak or kContinue
};

// A body run in its own variable scope: transformers' {% generation %} block (a call block in jinja2).
struct ScopeStatement : Statement {
  explicit ScopeStatement(int line) : Statement(Kind::kScope, line) {}
  Body body;
};

// {% with a = x, b = y %}: a scope whose variables are set first (the values evaluated outside it).
struct WithStatement : Statement {
  explicit WithStatement(int line) : Statement(Kind::kWith, line) {}
  std::vector<std::pair<AssignTarget, ExpressionPtr>> assignments;
  Body body;
};

}  // namespace cartridge::jinja
