#include "tokenizer/jinja/globals.h"

#include <ctime>
#include <memory>

#include "tokenizer/jinja/arguments.h"
#include "tokenizer/jinja/failure.h"
#include "tokenizer/jinja/renderer.h"

namespace cartridge::jinja {

namespace {

// jinja2's sandbox refuses ranges longer than this (MAX_RANGE).
constexpr int64_t kMaxRange = 100000;

class Range : public Callable {
 public:
  std::string name() const override { return "range"; }
  Value call(CallArguments arguments, Renderer&) const override {
    if (!arguments.keyword.empty()) fail(FailureKind::kType, "range() takes no keyword arguments");
    const auto& positional = arguments.positional;
    if (positional.empty() || positional.size() > 3) {
      fail(FailureKind::kType,
           "range expected at most 3 arguments, got " + std::to_string(positional.size()));
    }
    int64_t start = 0;
    int64_t stop = 0;
    int64_t step = 1;
    if (positional.size() == 1) {
      stop = integer_argument(positional[0], "range() argument");
    } else {
      start = integer_argument(positional[0], "range() argument");
      stop = integer_argument(positional[1], "range() argument");
      if (positional.size() == 3) step = integer_argument(positional[2], "range() argument");
    }
    if (step == 0) fail(FailureKind::kValue, "range() arg 3 must not be zero");
    int64_t length = 0;
    if (step > 0 && start < stop) length = (stop - start + step - 1) / step;
    if (step < 0 && start > stop) length = (start - stop - step - 1) / -step;
    if (length > kMaxRange) {
      fail(FailureKind::kOverflow,
           "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
    }
    std::vector<Value> items;
    items.reserve(length);
    for (int64_t i = 0; i < length; ++i) items.push_back(Value::integer(start + i * step));
    return Value::sequence(std::move(items));
  }
};

// dict(mapping_or_pairs, **keywords).
Dict build_dict(const std::string& function, CallArguments& arguments) {
  if (arguments.positional.size() > 1) {
    fail(FailureKind::kType,
         function + " expected at most 1 argument, got " + std::to_string(arguments.positional.size()));
  }
  Dict dict;
  if (!arguments.positional.empty()) {
    const Value& source = arguments.positional[0];
    if (source.is_dict()) {
      dict = source.as_dict();
    } else {
      for (const Value& pair : python_iterate(source)) {
        const std::vector<Value> items = python_iterate(pair);
        if (items.size() != 2) {
          fail(FailureKind::kValue, "dictionary update sequence element has length " +
                                        std::to_string(items.size()) + "; 2 is required");
        }
        dict.set(items[0], items[1]);
      }
    }
  }
  for (auto& [key, value] : arguments.keyword) dict.set(key, std::move(value));
  return dict;
}

class DictFunction : public Callable {
 public:
  std::string name() const override { return "dict"; }
  Value call(CallArguments arguments, Renderer&) const override {
    return Value::dict(build_dict("dict", arguments));
  }
};

// transformers' TemplateNamespace: jinja2's Namespace refusing underscore-prefixed attributes.
class NamespaceFunction : public Callable {
 public:
  std::string name() const override { return "namespace"; }
  Value call(CallArguments arguments, Renderer&) const override {
    Dict attributes = build_dict("namespace", arguments);
    for (const auto& [key, value] : attributes.entries()) {
      if (key.is_string() && !key.as_string().empty() && key.as_string()[0] == '_') {
        fail(FailureKind::kSecurity,
             "Chat templates cannot store underscore-prefixed attributes on a namespace, "
             "but got '" +
                 key.as_string() + "'. Please rename the attribute.");
      }
    }
    return Value::new_namespace(std::move(attributes));
  }
};

class RaiseException : public Callable {
 public:
  std::string name() const override { return "raise_exception"; }
  Value call(CallArguments arguments, Renderer&) const override {
    BoundArguments bound("raise_exception", std::move(arguments), {"message"}, 1);
    fail(FailureKind::kTemplateError, to_python_str(*bound.get(0)));
  }
};

class StrftimeNow : public Callable {
 public:
  std::string name() const override { return "strftime_now"; }
  Value call(CallArguments arguments, Renderer& renderer) const override {
    BoundArguments bound("strftime_now", std::move(arguments), {"format"}, 1);
    const std::string& format = string_argument(*bound.get(0), "strftime() argument 1");
    // Python formats %f (microseconds), %z and %Z (empty for a naive datetime) itself.
    std::string adjusted;
    for (size_t i = 0; i < format.size(); ++i) {
      if (format[i] == '%' && i + 1 < format.size()) {
        const char directive = format[i + 1];
        if (directive == 'f') {
          adjusted += "000000";
          ++i;
          continue;
        }
        if (directive == 'z' || directive == 'Z') {
          ++i;
          continue;
        }
        adjusted += format.substr(i, 2);
        ++i;
        continue;
      }
      adjusted.push_back(format[i]);
    }
    if (adjusted.empty()) return Value::string("");
    std::string buffer(adjusted.size() * 8 + 64, '\0');
    const size_t written = std::strftime(buffer.data(), buffer.size(), adjusted.c_str(), &renderer.now());
    if (written == 0) fail(FailureKind::kValue, "strftime format produced no output or was too long");
    buffer.resize(written);
    return Value::string(buffer);
  }
};

}  // namespace

std::vector<std::pair<std::string, Value>> make_globals() {
  // Stateless, so one instance of each serves every render on every thread.
  static const std::vector<std::pair<std::string, Value>> kGlobals = {
      {"range", Value::callable(std::make_shared<Range>())},
      {"dict", Value::callable(std::make_shared<DictFunction>())},
      {"namespace", Value::callable(std::make_shared<NamespaceFunction>())},
      {"raise_exception", Value::callable(std::make_shared<RaiseException>())},
      {"strftime_now", Value::callable(std::make_shared<StrftimeNow>())},
  };
  return kGlobals;
}

}  // namespace cartridge::jinja
