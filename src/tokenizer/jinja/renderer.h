// Renders a parsed template: evaluates expressions and runs statements with jinja2's scoping rules (a
// for-loop iteration and a macro call get their own scope, `if` does not; macros see the scope they were
// defined in; namespace() objects carry values out of loops). One Renderer serves one render call, so
// concurrent renders of the same template never share mutable state.
#pragma once

#include <ctime>
#include <deque>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/value.h"

namespace cartridge::jinja {

// A variable scope. Frames live as long as their Renderer (macros keep pointers to the frame they were
// defined in).
struct Frame {
  Frame* parent = nullptr;
  size_t index = 0;  // position in the Renderer's frame stack
  std::vector<std::pair<std::string, Value>> variables;

  const Value* find(std::string_view name) const;
  void set(const std::string& name, Value value);
};

class Renderer {
 public:
  // `now` is the local time strftime_now() formats.
  explicit Renderer(const std::tm& now) : now_(now) {}
  Renderer(const Renderer&) = delete;
  Renderer& operator=(const Renderer&) = delete;

  // Renders `body` with `variables` (and the globals) visible. Throws TemplateFailure.
  std::string render(const Body& body, const Dict& variables);

  // Calls anything callable; TypeError / UndefinedError as Python would raise.
  Value call(const Value& callee, CallArguments arguments);
  Value call_filter(std::string_view name, const Value& input, CallArguments arguments);
  bool call_test(std::string_view name, const Value& input, CallArguments arguments);
  // Runs a macro body in a new scope below `closure` and returns its output.
  Value call_macro(const MacroStatement& macro, Frame* closure, CallArguments arguments);

  const std::tm& now() const { return now_; }
  // Line of the statement or expression evaluated last (for error messages).
  int current_line() const { return line_; }

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  Frame* new_frame(Frame* parent);
  // Frames are freed in stack order when their scope ends (a long loop must not keep one frame per
  // iteration), unless a macro defined in one of them still refers to it.
  using FrameMark = size_t;
  FrameMark mark_frames() const { return frames_.size(); }
  void release_frames(FrameMark mark);
  Flow execute(const Body& body, Frame* frame);
  Flow execute(const Statement& statement, Frame* frame);
  void execute_for(const ForStatement& node, Frame* frame);
  // Runs `body` in a new scope below `frame` and returns what it printed.
  std::string capture(const Body& body, Frame* frame);
  void assign(const AssignTarget& target, const Value& value, Frame* frame);

  Value evaluate(const Expression& expression, Frame* frame);
  CallArguments evaluate_arguments(const ArgumentList& arguments, Frame* frame);
  // Applies a filter chain whose innermost operand is null to `input` (filter blocks, set blocks).
  Value apply_filter_chain(const Expression& filter, const Value& input, Frame* frame);
  Value evaluate_filter(const FilterExpression& node, Value input, Frame* frame);

  std::tm now_;
  std::deque<Frame> frames_;
  size_t captured_frames_end_ = 0;  // frames below this index may be referred to by a macro
  std::string* output_ = nullptr;
  int macro_depth_ = 0;
  int evaluation_depth_ = 0;  // nested execute/evaluate calls, bounded to protect the stack
  int64_t steps_ = 0;         // statements and expressions evaluated so far, bounded against runaway loops
  int line_ = 0;
};

}  // namespace cartridge::jinja
