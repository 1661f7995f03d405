// What Jinja expressions do to values, with the semantics jinja2's ImmutableSandboxedEnvironment gives
// them in Python: attribute and item access (attribute first for `x.y`, item first for `x[y]`, methods
// bound, mutating methods refused), slicing, arithmetic, comparisons and `in`, printf-style `%` and
// format() specs.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/value.h"

namespace cartridge::jinja {

// Raises the error an operation on this Undefined raises in jinja2 (UndefinedError, or SecurityError for
// what the sandbox refused).
[[noreturn]] void raise_undefined(const Value& undefined);

// `object.name` (jinja2's sandboxed getattr).
Value get_attribute(const Value& object, const std::string& name);
// `object[key]` (jinja2's sandboxed getitem).
Value get_item(const Value& object, const Value& key);
// `object[start:stop:step]`; unset bounds are None.
Value get_slice(const Value& object, const Value& start, const Value& stop, const Value& step);

// + - * / // % ** on two values (and/or are evaluated lazily by the renderer).
Value binary_operation(BinaryOperator op, const Value& left, const Value& right);
// Unary - and +.
Value unary_operation(UnaryOperator op, const Value& operand);
// One comparison of a chain (==, !=, <, <=, >, >=, in, not in).
bool compare(CompareOperator op, const Value& left, const Value& right);
// Python's `item in container`.
bool contains(const Value& container, const Value& item);

// Python's `format % arguments` for a str.
std::string printf_format(std::string_view format, const Value& arguments);
// Python's format(value, spec), as str.format() applies it to each field.
std::string format_with_spec(const Value& value, std::string_view spec);

// Concatenation that keeps Markup semantics: Markup + str escapes the str (markupsafe).
Value add_strings(const Value& left, const Value& right);

// Refuses a string or list about to grow past what any chat prompt needs (kMaxResultBytes bytes or
// kMaxResultItems items): a hostile template doubling a string in a loop must fail, not exhaust memory.
constexpr size_t kMaxResultBytes = size_t{256} << 20;
constexpr size_t kMaxResultItems = size_t{1} << 24;
void check_result_size(size_t bytes_or_items, bool items);

// Python's int(value) of a str (surrounding whitespace and underscores allowed); nullopt if invalid.
std::optional<int64_t> parse_python_int(std::string_view text, int base);
// Python's float(value) of a str; nullopt if invalid.
std::optional<double> parse_python_float(std::string_view text);

}  // namespace cartridge::jinja
