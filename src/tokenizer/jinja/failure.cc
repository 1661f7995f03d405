#include "tokenizer/jinja/failure.h"

namespace cartridge::jinja {

const char* python_exception_name(FailureKind kind) {
  switch (kind) {
    case FailureKind::kSyntax: return "TemplateSyntaxError";
    case FailureKind::kAssertion: return "TemplateAssertionError";
    case FailureKind::kRuntime: return "TemplateRuntimeError";
    case FailureKind::kTemplateError: return "TemplateError";
    case FailureKind::kUndefined: return "UndefinedError";
    case FailureKind::kType: return "TypeError";
    case FailureKind::kValue: return "ValueError";
    case FailureKind::kKey: return "KeyError";
    case FailureKind::kAttribute: return "AttributeError";
    case FailureKind::kZeroDivision: return "ZeroDivisionError";
    case FailureKind::kOverflow: return "OverflowError";
    case FailureKind::kSecurity: return "SecurityError";
    case FailureKind::kRecursion: return "RecursionError";
    case FailureKind::kFilterArgument: return "FilterArgumentError";
    case FailureKind::kUnsupported: return "Unsupported";
  }
  return "Error";
}

}  // namespace cartridge::jinja
