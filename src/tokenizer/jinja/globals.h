// The functions every chat template can call, as transformers' environment provides them: range()
// (capped like jinja2's sandbox), dict(), namespace(), raise_exception() and strftime_now().
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja/value.h"

namespace cartridge::jinja {

// Name and value of each global. The callables are stateless; strftime_now reads the render's time
// from the Renderer that calls it.
std::vector<std::pair<std::string, Value>> make_globals();

}  // namespace cartridge::jinja
