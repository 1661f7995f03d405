// Binds call arguments to a Python-style signature for the built-in filters, tests, methods and
// globals, raising the TypeError Python would for unknown keywords, duplicates or too many arguments.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/jinja/value.h"

namespace cartridge::jinja {

class BoundArguments {
 public:
  // `parameters` in declaration order; the first `required` of them must be given.
  BoundArguments(std::string_view function, CallArguments arguments,
                 std::initializer_list<std::string_view> parameters, size_t required = 0);
  // The argument bound to parameter `index`, or null when it was not given.
  const Value* get(size_t index) const;
  // The argument bound to parameter `index`, or `fallback`.
  Value get_or(size_t index, Value fallback) const;
  bool has(size_t index) const { return get(index) != nullptr; }

 private:
  std::vector<std::optional<Value>> values_;
};

// The argument as an int (bool counts, as in Python); TypeError naming `what` otherwise.
int64_t integer_argument(const Value& value, std::string_view what);
// The argument as a str; TypeError naming `what` otherwise.
const std::string& string_argument(const Value& value, std::string_view what);

}  // namespace cartridge::jinja
