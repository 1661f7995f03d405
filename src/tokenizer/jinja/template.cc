#include "tokenizer/jinja/template.h"

#include "tokenizer/jinja/failure.h"
#include "tokenizer/jinja/parser.h"
#include "tokenizer/jinja/renderer.h"
#include "util/error.h"

namespace cartridge::jinja {

namespace {

std::string where(const std::string& name, int line) {
  return name + (line > 0 ? " line " + std::to_string(line) : std::string());
}

// Error messages are one line: template text quoted in a message must not break it.
std::string one_line(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return text;
}

}  // namespace

Template::Template(std::string_view source, std::string name) : name_(std::move(name)) {
  try {
    body_ = parse_template(source);
  } catch (const TemplateFailure& failure) {
    if (failure.kind() == FailureKind::kUnsupported) {
      throw UnsupportedError(
          where(name_, failure.line()) + ": uses " + one_line(failure.message()) +
          ", which cartridge.cpp's Jinja engine does not implement (render this template with "
          "transformers instead, or supply a template without it)");
    }
    throw FormatError(where(name_, failure.line()) +
                      ": not a valid Jinja template: " + python_exception_name(failure.kind()) + ": " +
                      one_line(failure.message()) + " (jinja2 rejects it too; fix the template)");
  }
}

std::string Template::render(const Dict& variables, const std::tm& now) const {
  Renderer renderer(now);
  try {
    return renderer.render(body_, variables);
  } catch (const std::bad_alloc&) {
    throw Error(where(name_, renderer.current_line()) +
                ": rendering ran out of memory (the template builds a huge "
                "value; check it)");
  } catch (TemplateFailure& failure) {
    failure.set_line_if_unknown(renderer.current_line());
    const std::string location = where(name_, failure.line());
    switch (failure.kind()) {
      case FailureKind::kUnsupported:
        throw UnsupportedError(
            location + ": rendering needs " + one_line(failure.message()) +
            ", which cartridge.cpp's Jinja engine does not implement (render this template with "
            "transformers instead)");
      case FailureKind::kTemplateError:
        throw Error(location + ": the template refused to render: " + one_line(failure.message()) +
                    " (check the messages and options passed to it)");
      default:
        throw Error(location + ": rendering failed with " + python_exception_name(failure.kind()) + ": " +
                    one_line(failure.message()) +
                    " (jinja2 fails the same way; check the messages passed to it)");
    }
  }
}

}  // namespace cartridge::jinja
