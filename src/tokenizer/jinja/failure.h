// The exceptions the Jinja engine raises internally while parsing and rendering. Each names the Python
// exception jinja2 would raise in the same situation, so a failing render says what jinja2 would have
// said. `jinja::Template` turns them into the project's one-line user errors (util/error.h), adding the
// template name and line.
#pragma once

#include <exception>
#include <string>

namespace cartridge::jinja {

enum class FailureKind {
  kSyntax,          // TemplateSyntaxError: the template text is not valid Jinja.
  kAssertion,       // TemplateAssertionError: a filter or test jinja2 does not know, outside an if.
  kRuntime,         // TemplateRuntimeError: e.g. an unknown filter reached, assigning to a non-namespace.
  kTemplateError,   // TemplateError: raise_exception(...) from the template itself.
  kUndefined,       // UndefinedError: an operation on an undefined value.
  kType,            // TypeError.
  kValue,           // ValueError.
  kKey,             // KeyError / IndexError raised by a method.
  kAttribute,       // AttributeError (a filter calling a method its argument lacks).
  kZeroDivision,    // ZeroDivisionError.
  kOverflow,        // OverflowError (range too large, integer beyond 64 bits).
  kSecurity,        // SecurityError: the sandbox refused an operation (list.append, _private attributes).
  kRecursion,       // RecursionError: macros nested too deeply.
  kFilterArgument,  // FilterArgumentError.
  kUnsupported,     // valid Jinja that this engine does not implement.
};

// The Python exception name of a failure kind ("TypeError", ...).
const char* python_exception_name(FailureKind kind);

class TemplateFailure : public std::exception {
 public:
  TemplateFailure(FailureKind kind, std::string message, int line = 0)
      : kind_(kind), message_(std::move(message)), line_(line) {}
  const char* what() const noexcept override { return message_.c_str(); }
  FailureKind kind() const { return kind_; }
  const std::string& message() const { return message_; }
  // Template line (1-based) where it happened; 0 when not known yet.
  int line() const { return line_; }
  void set_line_if_unknown(int line) {
    if (line_ == 0) line_ = line;
  }

 private:
  FailureKind kind_;
  std::string message_;
  int line_;
};

[[noreturn]] inline void fail(FailureKind kind, std::string message) {
  throw TemplateFailure(kind, std::move(message));
}

}  // namespace cartridge::jinja
