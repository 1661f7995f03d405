// jinja2's built-in filters (`x|trim`, `x|tojson`, `xs|selectattr(...)`) and tests (`x is defined`),
// with transformers' tojson (ensure_ascii=False, optional indent / separators / sort_keys).
#pragma once

#include <string_view>

#include "tokenizer/jinja/value.h"

namespace cartridge::jinja {

using FilterFunction = Value (*)(Renderer& renderer, const Value& input, CallArguments arguments);
using TestFunction = bool (*)(Renderer& renderer, const Value& input, CallArguments arguments);

// The implementation of a filter or test, or null when this engine has none (see builtins.h).
FilterFunction find_filter(std::string_view name);
TestFunction find_test(std::string_view name);

}  // namespace cartridge::jinja
