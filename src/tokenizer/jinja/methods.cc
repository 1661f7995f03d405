#include "tokenizer/jinja/methods.h"

#include <utf8proc.h>

#include <algorithm>
#include <array>

#include "tokenizer/jinja/arguments.h"
#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/failure.h"
#include "tokenizer/jinja/operations.h"
#include "tokenizer/jinja/python_string.h"

namespace cartridge::jinja {

namespace {

enum class Receiver { kString, kList, kTuple, kDict };

constexpr std::array<std::string_view, 38> kStringMethods = {
    "strip",   "lstrip",  "rstrip",    "split",      "rsplit",       "splitlines",  "startswith", "endswith",
    "replace", "lower",   "upper",     "title",      "capitalize",   "swapcase",    "find",       "rfind",
    "index",   "rindex",  "count",     "join",       "format",       "isdigit",     "isalpha",    "isalnum",
    "isspace", "islower", "isupper",   "isnumeric",  "isdecimal",    "isascii",     "center",     "ljust",
    "rjust",   "zfill",   "partition", "rpartition", "removeprefix", "removesuffix"};
// Python str and dict methods this engine does not implement; a template calling one is refused.
constexpr std::array<std::string_view, 10> kUnimplementedMethods = {
    "casefold",    "encode",  "expandtabs", "format_map", "isidentifier",
    "isprintable", "istitle", "maketrans",  "translate",  "fromkeys"};
constexpr std::array<std::string_view, 3> kSequenceMethods = {"index", "count", "copy"};
constexpr std::array<std::string_view, 8> kListMutators = {"append", "clear",  "extend",  "insert",
                                                           "pop",    "remove", "reverse", "sort"};
constexpr std::array<std::string_view, 5> kDictMethods = {"get", "items", "keys", "values", "copy"};
constexpr std::array<std::string_view, 5> kDictMutators = {"clear", "pop", "popitem", "setdefault", "update"};

template <size_t N>
bool contains_name(const std::array<std::string_view, N>& names, std::string_view name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

class BoundMethod : public Callable {
 public:
  BoundMethod(Value receiver, std::string name) : receiver_(std::move(receiver)), name_(std::move(name)) {}
  std::string name() const override { return name_; }
  std::string repr() const override {
    return "<built-in method " + name_ + " of " + python_type_name(receiver_) + " object>";
  }
  Value call(CallArguments arguments, Renderer& renderer) const override;

 private:
  Value call_string_method(CallArguments arguments) const;
  Value call_sequence_method(CallArguments arguments) const;
  Value call_dict_method(CallArguments arguments) const;

  Value receiver_;
  std::string name_;
};

// Optional start/end arguments of find/count/startswith as code point positions, normalised like slices.
void resolve_range(const BoundArguments& bound, size_t start_index, int64_t length, int64_t& start,
                   int64_t& end) {
  auto resolve = [&](const Value* value, int64_t fallback) {
    if (!value || value->is_none()) return fallback;
    int64_t index = integer_argument(*value, "slice index");
    if (index < 0) index = std::max<int64_t>(0, index + length);
    return std::min(index, length);
  };
  start = resolve(bound.get(start_index), 0);
  end = resolve(bound.get(start_index + 1), length);
}

// Code-point position of `needle` in haystack[start:end], searching from the left or the right; -1 if absent.
int64_t find_code_points(const std::u32string& haystack, const std::u32string& needle, int64_t start,
                         int64_t end, bool from_right) {
  if (end - start < static_cast<int64_t>(needle.size())) return -1;
  const std::u32string_view window = std::u32string_view(haystack).substr(start, end - start);
  const size_t found = from_right ? window.rfind(needle) : window.find(needle);
  return found == std::u32string_view::npos ? -1 : start + static_cast<int64_t>(found);
}

bool all_code_points(const std::string& text, bool (*predicate)(char32_t)) {
  const std::u32string code_points = decode_utf8(text);
  if (code_points.empty()) return false;
  return std::all_of(code_points.begin(), code_points.end(), predicate);
}

bool category_in(char32_t c, std::initializer_list<utf8proc_category_t> categories) {
  const auto category = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return std::find(categories.begin(), categories.end(), category) != categories.end();
}
bool is_alpha(char32_t c) {
  return category_in(c, {UTF8PROC_CATEGORY_LU, UTF8PROC_CATEGORY_LL, UTF8PROC_CATEGORY_LT,
                         UTF8PROC_CATEGORY_LM, UTF8PROC_CATEGORY_LO});
}
bool is_decimal(char32_t c) { return category_in(c, {UTF8PROC_CATEGORY_ND}); }
bool is_numeric(char32_t c) {
  return category_in(c, {UTF8PROC_CATEGORY_ND, UTF8PROC_CATEGORY_NL, UTF8PROC_CATEGORY_NO});
}
bool is_alnum(char32_t c) { return is_alpha(c) || is_numeric(c); }
bool is_space(char32_t c) { return is_python_space(c); }

std::optional<std::string> optional_string(const Value* value, std::string_view what) {
  if (!value || value->is_none()) return std::nullopt;
  return string_argument(*value, what);
}

Value string_list(const std::vector<std::string>& parts) {
  std::vector<Value> items;
  items.reserve(parts.size());
  for (const std::string& part : parts) items.push_back(Value::string(part));
  return Value::sequence(std::move(items));
}

std::string justify(const std::string& text, int64_t width, const std::string& fill, char side) {
  const int64_t length = count_code_points(text);
  if (width <= length) return text;
  const int64_t padding = width - length;
  auto repeat = [&](int64_t count) {
    std::string out;
    for (int64_t i = 0; i < count; ++i) out += fill;
    return out;
  };
  if (side == '<') return text + repeat(padding);
  if (side == '>') return repeat(padding) + text;
  // CPython's centre puts the extra character on the left when the text length is odd... and the width even.
  const int64_t left = padding / 2 + (padding & width & 1);
  return repeat(left) + text + repeat(padding - left);
}

Value BoundMethod::call(CallArguments arguments, Renderer& /*renderer*/) const {
  switch (receiver_.type()) {
    case Value::Type::kString: return call_string_method(std::move(arguments));
    case Value::Type::kSequence: return call_sequence_method(std::move(arguments));
    case Value::Type::kDict: return call_dict_method(std::move(arguments));
    default: fail(FailureKind::kType, "'" + name_ + "' is not callable");
  }
}

Value BoundMethod::call_string_method(CallArguments arguments) const {
  const std::string& text = receiver_.as_string();
  const bool markup = receiver_.is_markup();
  const std::string& name = name_;
  auto result = [&](std::string value) { return Value::string(std::move(value), markup); };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    BoundArguments bound(name, std::move(arguments), {"chars"});
    return result(
        python_strip(text, optional_string(bound.get(0), "strip arg"), name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    BoundArguments bound(name, std::move(arguments), {"sep", "maxsplit"});
    const std::optional<std::string> separator = optional_string(bound.get(0), "sep");
    const int64_t max_split = bound.has(1) ? integer_argument(*bound.get(1), "maxsplit") : -1;
    try {
      return string_list(name == "split" ? python_split(text, separator, max_split)
                                         : python_rsplit(text, separator, max_split));
    } catch (const std::invalid_argument&) {
      fail(FailureKind::kValue, "empty separator");
    }
  }
  if (name == "splitlines") {
    BoundArguments bound(name, std::move(arguments), {"keepends"});
    return string_list(python_splitlines(text, is_truthy(bound.get_or(0, Value::boolean(false)))));
  }
  if (name == "startswith" || name == "endswith") {
    BoundArguments bound(name, std::move(arguments), {"prefix", "start", "end"}, 1);
    const std::u32string code_points = decode_utf8(text);
    int64_t start = 0;
    int64_t end = 0;
    resolve_range(bound, 1, static_cast<int64_t>(code_points.size()), start, end);
    const std::u32string_view window =
        start <= end ? std::u32string_view(code_points).substr(start, end - start) : std::u32string_view();
    std::vector<Value> candidates;
    if (bound.get(0)->is_sequence() && bound.get(0)->sequence_kind() == SequenceKind::kTuple) {
      candidates = bound.get(0)->items();
    } else if (bound.get(0)->is_string()) {
      candidates.push_back(*bound.get(0));
    } else {
      fail(FailureKind::kType,
           name + " first arg must be str or a tuple of str, not " + python_type_name(*bound.get(0)));
    }
    for (const Value& candidate : candidates) {
      const std::u32string affix = decode_utf8(string_argument(candidate, "tuple for " + name));
      if (start > end) continue;
      if (affix.size() > window.size()) continue;
      if (name == "startswith" ? window.substr(0, affix.size()) == affix
                               : window.substr(window.size() - affix.size()) == affix) {
        return Value::boolean(true);
      }
    }
    return Value::boolean(false);
  }
  if (name == "replace") {
    BoundArguments bound(name, std::move(arguments), {"old", "new", "count"}, 2);
    const int64_t count = bound.has(2) ? integer_argument(*bound.get(2), "count") : -1;
    return result(python_replace(text, string_argument(*bound.get(0), "replace() argument 1"),
                                 string_argument(*bound.get(1), "replace() argument 2"), count));
  }
  if (name == "lower" || name == "upper" || name == "title" || name == "capitalize" || name == "swapcase") {
    BoundArguments bound(name, std::move(arguments), {});
    if (name == "lower") return result(python_lower(text));
    if (name == "upper") return result(python_upper(text));
    if (name == "title") return result(python_title(text));
    if (name == "capitalize") return result(python_capitalize(text));
    std::string swapped;
    for (char32_t c : decode_utf8(text)) {
      std::string one;
      append_utf8(one, c);
      const std::string lower = python_lower(one);
      swapped += lower != one ? lower : python_upper(one);
    }
    return result(swapped);
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    BoundArguments bound(name, std::move(arguments), {"sub", "start", "end"}, 1);
    const std::u32string code_points = decode_utf8(text);
    const std::u32string needle = decode_utf8(string_argument(*bound.get(0), "must be str"));
    int64_t start = 0;
    int64_t end = 0;
    resolve_range(bound, 1, static_cast<int64_t>(code_points.size()), start, end);
    if (name == "count") {
      if (start > end) return Value::integer(0);
      if (needle.empty()) return Value::integer(end - start + 1);
      int64_t count = 0;
      for (int64_t position = start;
           (position = find_code_points(code_points, needle, position, end, false)) >= 0;
           position += static_cast<int64_t>(needle.size())) {
        ++count;
      }
      return Value::integer(count);
    }
    const bool from_right = name[0] == 'r';
    const int64_t found = start > end ? -1 : find_code_points(code_points, needle, start, end, from_right);
    if (found < 0 && (name == "index" || name == "rindex")) fail(FailureKind::kValue, "substring not found");
    return Value::integer(found);
  }
  if (name == "join") {
    BoundArguments bound(name, std::move(arguments), {"iterable"}, 1);
    std::string out;
    bool first = true;
    size_t index = 0;
    for (const Value& item : python_iterate(*bound.get(0))) {
      if (!item.is_string()) {
        fail(FailureKind::kType, "sequence item " + std::to_string(index) + ": expected str instance, " +
                                     python_type_name(item) + " found");
      }
      if (!first) out += text;
      first = false;
      check_result_size(out.size(), false);
      out += markup && !item.is_markup() ? html_escape(item.as_string()) : item.as_string();
      ++index;
    }
    return result(out);
  }
  if (name == "format") return result(python_str_format(text, arguments));
  if (name == "isdigit" || name == "isdecimal" || name == "isnumeric" || name == "isalpha" ||
      name == "isalnum" || name == "isspace" || name == "isascii") {
    BoundArguments bound(name, std::move(arguments), {});
    if (name == "isascii") return Value::boolean(is_ascii(text));
    bool (*predicate)(char32_t) = name == "isdigit" || name == "isdecimal" ? is_decimal
                                  : name == "isnumeric"                    ? is_numeric
                                  : name == "isalpha"                      ? is_alpha
                                  : name == "isalnum"                      ? is_alnum
                                                                           : is_space;
    return Value::boolean(all_code_points(text, predicate));
  }
  if (name == "islower" || name == "isupper") {
    BoundArguments bound(name, std::move(arguments), {});
    return Value::boolean(name == "islower" ? python_is_lower(text) : python_is_upper(text));
  }
  if (name == "removeprefix" || name == "removesuffix") {
    BoundArguments bound(name, std::move(arguments), {"affix"}, 1);
    const std::string& affix = string_argument(*bound.get(0), name + "() argument");
    if (name == "removeprefix" && text.compare(0, affix.size(), affix) == 0)
      return result(text.substr(affix.size()));
    if (name == "removesuffix" && !affix.empty() && text.size() >= affix.size() &&
        text.compare(text.size() - affix.size(), affix.size(), affix) == 0) {
      return result(text.substr(0, text.size() - affix.size()));
    }
    return result(text);
  }
  if (name == "center" || name == "ljust" || name == "rjust") {
    BoundArguments bound(name, std::move(arguments), {"width", "fillchar"}, 1);
    const std::string fill = bound.has(1) ? string_argument(*bound.get(1), "fillchar") : " ";
    if (count_code_points(fill) != 1)
      fail(FailureKind::kType, "The fill character must be exactly one character long");
    return result(justify(text, integer_argument(*bound.get(0), "width"), fill,
                          name == "center"  ? '^'
                          : name == "ljust" ? '<'
                                            : '>'));
  }
  if (name == "zfill") {
    BoundArguments bound(name, std::move(arguments), {"width"}, 1);
    const int64_t width = integer_argument(*bound.get(0), "width");
    const int64_t length = count_code_points(text);
    if (width <= length) return result(text);
    const size_t sign = (!text.empty() && (text[0] == '+' || text[0] == '-')) ? 1 : 0;
    return result(text.substr(0, sign) + std::string(width - length, '0') + text.substr(sign));
  }
  if (name == "partition" || name == "rpartition") {
    BoundArguments bound(name, std::move(arguments), {"sep"}, 1);
    const std::string& separator = string_argument(*bound.get(0), "sep");
    if (separator.empty()) fail(FailureKind::kValue, "empty separator");
    const size_t found = name == "partition" ? text.find(separator) : text.rfind(separator);
    std::vector<Value> parts;
    if (found == std::string::npos) {
      parts = name == "partition" ? std::vector<Value>{result(text), result(""), result("")}
                                  : std::vector<Value>{result(""), result(""), result(text)};
    } else {
      parts = {result(text.substr(0, found)), result(separator),
               result(text.substr(found + separator.size()))};
    }
    return Value::sequence(std::move(parts), SequenceKind::kTuple);
  }
  fail(FailureKind::kUnsupported, "the str method '" + name + "'");
}

Value BoundMethod::call_sequence_method(CallArguments arguments) const {
  const std::vector<Value>& items = receiver_.items();
  if (name_ == "count") {
    BoundArguments bound(name_, std::move(arguments), {"value"}, 1);
    return Value::integer(std::count_if(
        items.begin(), items.end(), [&](const Value& item) { return python_equals(item, *bound.get(0)); }));
  }
  if (name_ == "index") {
    BoundArguments bound(name_, std::move(arguments), {"value", "start", "stop"}, 1);
    int64_t start = 0;
    int64_t end = 0;
    resolve_range(bound, 1, static_cast<int64_t>(items.size()), start, end);
    for (int64_t i = start; i < end; ++i) {
      if (python_equals(items[i], *bound.get(0))) return Value::integer(i);
    }
    fail(FailureKind::kValue, to_python_repr(*bound.get(0)) + " is not in list");
  }
  if (name_ == "copy") {
    BoundArguments bound(name_, std::move(arguments), {});
    return Value::sequence(items, receiver_.sequence_kind());
  }
  fail(FailureKind::kUnsupported, "the list method '" + name_ + "'");
}

Value BoundMethod::call_dict_method(CallArguments arguments) const {
  const Dict& dict = receiver_.as_dict();
  if (name_ == "get") {
    BoundArguments bound(name_, std::move(arguments), {"key", "default"}, 1);
    const Value* value = dict.find(*bound.get(0));
    return value ? *value : bound.get_or(1, Value::none());
  }
  BoundArguments bound(name_, std::move(arguments), {});
  if (name_ == "copy") return receiver_;
  std::vector<Value> items;
  for (const auto& [key, value] : dict.entries()) {
    if (name_ == "items") {
      items.push_back(Value::sequence({key, value}, SequenceKind::kTuple));
    } else {
      items.push_back(name_ == "keys" ? key : value);
    }
  }
  const SequenceKind kind = name_ == "items"  ? SequenceKind::kDictItems
                            : name_ == "keys" ? SequenceKind::kDictKeys
                                              : SequenceKind::kDictValues;
  return Value::sequence(std::move(items), kind);
}

Value unsafe_method(const Value& object, std::string_view name) {
  return Value::undefined("access to attribute '" + std::string(name) + "' of '" + python_type_name(object) +
                              "' object is unsafe.",
                          /*unsafe=*/true);
}

}  // namespace

bool is_unimplemented_python_method(std::string_view name) {
  return contains_name(kUnimplementedMethods, name);
}

std::optional<Value> find_method(const Value& object, std::string_view name) {
  if (contains_name(kUnimplementedMethods, name)) {
    const bool exists_on_type = object.is_string() || (object.is_dict() && name == "fromkeys");
    if (exists_on_type) fail(FailureKind::kUnsupported, "the Python method '" + std::string(name) + "()'");
  }
  auto bind = [&]() { return Value::callable(std::make_shared<BoundMethod>(object, std::string(name))); };
  switch (object.type()) {
    case Value::Type::kString:
      if (contains_name(kStringMethods, name)) return bind();
      return std::nullopt;
    case Value::Type::kSequence:
      if (!object.is_list_or_tuple()) return std::nullopt;
      if (contains_name(kSequenceMethods, name)) {
        if (name == "copy" && object.sequence_kind() == SequenceKind::kTuple) return std::nullopt;
        return bind();
      }
      if (object.sequence_kind() == SequenceKind::kList && contains_name(kListMutators, name)) {
        return unsafe_method(object, name);
      }
      return std::nullopt;
    case Value::Type::kDict:
      if (contains_name(kDictMethods, name)) return bind();
      if (contains_name(kDictMutators, name)) return unsafe_method(object, name);
      return std::nullopt;
    default: return std::nullopt;
  }
}

std::string python_str_format(const std::string& format, const CallArguments& arguments) {
  std::string out;
  size_t automatic_index = 0;
  bool used_automatic = false;
  bool used_manual = false;
  for (size_t i = 0; i < format.size(); ++i) {
    const char c = format[i];
    if (c == '}') {
      if (i + 1 < format.size() && format[i + 1] == '}') {
        out.push_back('}');
        ++i;
        continue;
      }
      fail(FailureKind::kValue, "Single '}' encountered in format string");
    }
    if (c != '{') {
      out.push_back(c);
      continue;
    }
    if (i + 1 < format.size() && format[i + 1] == '{') {
      out.push_back('{');
      ++i;
      continue;
    }
    const size_t close = format.find('}', i);
    if (close == std::string::npos) fail(FailureKind::kValue, "Single '{' encountered in format string");
    const std::string field = format.substr(i + 1, close - i - 1);
    if (field.find('{') != std::string::npos)
      fail(FailureKind::kUnsupported, "nested fields in str.format()");
    i = close;
    // field_name[!conversion][:spec]
    std::string name = field;
    std::string spec;
    char conversion = 0;
    const size_t colon = name.find(':');
    if (colon != std::string::npos) {
      spec = name.substr(colon + 1);
      name.resize(colon);
    }
    const size_t bang = name.find('!');
    if (bang != std::string::npos) {
      if (bang + 2 != name.size()) fail(FailureKind::kValue, "expected ':' after conversion specifier");
      conversion = name[bang + 1];
      name.resize(bang);
    }
    size_t end_of_argument = 0;
    while (end_of_argument < name.size() && name[end_of_argument] != '.' && name[end_of_argument] != '[') {
      ++end_of_argument;
    }
    const std::string argument_name = name.substr(0, end_of_argument);
    Value value;
    if (argument_name.empty() || std::all_of(argument_name.begin(), argument_name.end(), ::isdigit)) {
      size_t index;
      if (argument_name.empty()) {
        if (used_manual) {
          fail(FailureKind::kValue,
               "cannot switch from manual field specification to automatic field numbering");
        }
        used_automatic = true;
        index = automatic_index++;
      } else {
        if (used_automatic) {
          fail(FailureKind::kValue,
               "cannot switch from automatic field numbering to manual field specification");
        }
        used_manual = true;
        index = std::stoul(argument_name);
      }
      if (index >= arguments.positional.size()) {
        fail(FailureKind::kKey,
             "Replacement index " + std::to_string(index) + " out of range for positional args tuple");
      }
      value = arguments.positional[index];
    } else {
      const Value* found = nullptr;
      for (const auto& [key, keyword_value] : arguments.keyword) {
        if (key == argument_name) found = &keyword_value;
      }
      if (!found) fail(FailureKind::kKey, "'" + argument_name + "'");
      value = *found;
    }
    // .attribute and [key] accessors, through the sandbox like jinja2's SandboxedFormatter.
    for (size_t p = end_of_argument; p < name.size();) {
      if (name[p] == '.') {
        size_t q = p + 1;
        while (q < name.size() && name[q] != '.' && name[q] != '[') ++q;
        value = get_attribute(value, name.substr(p + 1, q - p - 1));
        p = q;
      } else {
        const size_t close_bracket = name.find(']', p);
        if (close_bracket == std::string::npos) fail(FailureKind::kValue, "Missing ']' in format string");
        const std::string key = name.substr(p + 1, close_bracket - p - 1);
        const bool numeric = !key.empty() && std::all_of(key.begin(), key.end(), ::isdigit);
        value = get_item(value, numeric ? Value::integer(std::stoll(key)) : Value::string(key));
        p = close_bracket + 1;
      }
    }
    if (conversion == 's') {
      value = Value::string(to_python_str(value));
    } else if (conversion == 'r') {
      value = Value::string(to_python_repr(value));
    } else if (conversion != 0) {
      fail(FailureKind::kUnsupported, std::string("the str.format() conversion '!") + conversion + "'");
    }
    out += format_with_spec(value, spec);
  }
  return out;
}

}  // namespace cartridge::jinja
