// Which filters, tests and Python methods the engine implements, so the parser can refuse a template
// that needs something missing before any rendering happens (never silently wrong output).
#pragma once

#include <string_view>

namespace cartridge::jinja {

enum class BuiltinSupport {
  kImplemented,     // rendered exactly as jinja2 does
  kNotImplemented,  // jinja2 has it, this engine does not: the template is refused as unsupported
  kUnknown,         // jinja2 does not have it either (a template error when used)
};

BuiltinSupport filter_support(std::string_view name);
BuiltinSupport test_support(std::string_view name);
// Whether `name` is a method of Python's str, list or dict that this engine does not implement (a
// template calling `x.name(...)` is refused).
bool is_unimplemented_python_method(std::string_view name);
// Whether `name` is a jinja2 global this engine does not implement (lipsum, cycler, joiner).
bool is_unimplemented_global(std::string_view name);

}  // namespace cartridge::jinja
