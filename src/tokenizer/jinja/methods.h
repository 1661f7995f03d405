// Python methods of str, list/tuple and dict that templates call (`content.strip()`,
// `message.get('x')`, `'{}'.format(x)`), with Python's semantics, under jinja2's immutable sandbox
// (methods that mutate a list or dict are refused with a SecurityError when called).
#pragma once

#include <optional>
#include <string_view>

#include "tokenizer/jinja/value.h"

namespace cartridge::jinja {

// The attribute `name` of a str, list/tuple or dict when it is a Python method: a bound method the
// template can call, or an unsafe Undefined for a method the immutable sandbox refuses. nullopt when the
// type has no such method (the attribute lookup then goes on to dict keys or Undefined). Throws
// kUnsupported for a real Python method this engine does not implement.
std::optional<Value> find_method(const Value& object, std::string_view name);

// Python's str.format(*args, **kwargs) as jinja2's sandbox runs it.
std::string python_str_format(const std::string& format, const CallArguments& arguments);

}  // namespace cartridge::jinja
