// Builds the syntax tree of a Jinja template from its tokens, following jinja2's grammar (operator
// precedence, tuples, filters and tests, slices, call arguments) and its statements: if/elif/else,
// for (with else and a filter condition), set (expression, namespace attribute, block), macro, filter
// blocks, with, break/continue, and transformers' {% generation %}. Constructs jinja2 has but this
// engine does not implement (extends, block, include, import, call blocks, autoescape, recursive loops,
// some filters) are refused with kUnsupported naming the construct, so a template is either rendered
// faithfully or rejected up front.
#pragma once

#include <string_view>

#include "tokenizer/jinja/ast.h"

namespace cartridge::jinja {

// Parses a whole template. Throws TemplateFailure: kSyntax for invalid Jinja (jinja2 rejects it too),
// kUnsupported for valid Jinja this engine does not implement.
Body parse_template(std::string_view source);

}  // namespace cartridge::jinja
