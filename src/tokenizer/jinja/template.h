// A parsed Jinja template, rendered the way transformers renders chat templates with jinja2
// (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loop controls, {% generation %}).
// Parsing happens once; render() is const and keeps all its state on the stack, so one Template can
// be rendered from many threads at once.
#pragma once

#include <ctime>
#include <string>
#include <string_view>

#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/value.h"

namespace cartridge::jinja {

class Template {
 public:
  // Parses `source`. `name` (a file name, or where the template came from) starts every error message.
  // Throws FormatError for invalid Jinja and UnsupportedError naming the construct for valid Jinja that
  // this engine does not implement.
  Template(std::string_view source, std::string name);

  // Renders with `variables` (str keys) visible to the template; strftime_now() formats `now`.
  // Throws Error when rendering fails (raise_exception() in the template, an undefined value used, a
  // type error, ...) and UnsupportedError when the render reaches something this engine lacks.
  std::string render(const Dict& variables, const std::tm& now) const;

  const std::string& name() const { return name_; }

 private:
  std::string name_;
  Body body_;
};

}  // namespace cartridge::jinja
