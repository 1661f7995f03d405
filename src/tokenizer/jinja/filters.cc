#include "tokenizer/jinja/filters.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "tokenizer/jinja/arguments.h"
#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/failure.h"
#include "tokenizer/jinja/methods.h"
#include "tokenizer/jinja/operations.h"
#include "tokenizer/jinja/python_string.h"
#include "tokenizer/jinja/renderer.h"

namespace cartridge::jinja {

namespace {

// jinja2's soft_str: a str (Markup kept) stays as it is, anything else becomes str(x).
Value soft_str(const Value& value) { return value.is_string() ? value : Value::string(to_python_str(value)); }

Value generator(std::vector<Value> items) {
  return Value::sequence(std::move(items), SequenceKind::kGenerator);
}

// jinja2's ignore_case: lower-cases str keys for case-insensitive sorting and comparing.
Value ignore_case(const Value& value) {
  return value.is_string() ? Value::string(python_lower(value.as_string())) : value;
}

// jinja2's make_attrgetter: "a.b.0" looks up item a, then b, then index 0 (getitem semantics).
class AttributeGetter {
 public:
  AttributeGetter(const Value* attribute, std::optional<Value> default_value, bool lower_strings)
      : default_value_(std::move(default_value)), lower_strings_(lower_strings) {
    if (attribute == nullptr || attribute->is_none()) return;
    if (!attribute->is_string()) {
      parts_.push_back(*attribute);
      return;
    }
    for (const std::string& part : python_split(attribute->as_string(), std::string("."), -1)) {
      const bool digits = !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit);
      parts_.push_back(digits ? Value::integer(std::stoll(part)) : Value::string(part));
    }
  }

  Value operator()(Value item) const {
    for (const Value& part : parts_) {
      item = get_item(item, part);
      if (default_value_ && item.is_undefined()) item = *default_value_;
    }
    return lower_strings_ ? ignore_case(item) : item;
  }

 private:
  std::vector<Value> parts_;
  std::optional<Value> default_value_;
  bool lower_strings_;
};

std::vector<Value> sort_values(std::vector<Value> items, const std::vector<Value>& keys, bool reverse) {
  std::vector<size_t> order(items.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  // Python's sorted() is stable, also with reverse=True.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return reverse ? python_less(keys[b], keys[a]) : python_less(keys[a], keys[b]);
  });
  std::vector<Value> sorted;
  sorted.reserve(items.size());
  for (size_t index : order) sorted.push_back(std::move(items[index]));
  return sorted;
}

bool boolean_argument(const BoundArguments& bound, size_t index, bool fallback) {
  const Value* value = bound.get(index);
  return value ? is_truthy(*value) : fallback;
}

// --- filters ----------------------------------------------------------------------------------------

Value filter_abs(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("abs", std::move(arguments), {});
  if (input.is_float()) return Value::floating(std::fabs(input.as_double()));
  if (input.is_int() || input.is_bool()) {
    if (input.as_int() == INT64_MIN) fail(FailureKind::kUnsupported, "integer arithmetic beyond 64 bits");
    return Value::integer(std::llabs(input.as_int()));
  }
  fail(FailureKind::kType, "bad operand type for abs(): '" + python_type_name(input) + "'");
}

Value filter_attr(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("attr", std::move(arguments), {"name"}, 1);
  const std::string name = to_python_str(*bound.get(0));
  // Python attributes only: unlike `x.name`, |attr never falls back to a dict key.
  if (input.is_dict()) {
    if (std::optional<Value> method = find_method(input, name)) return *method;
    return Value::undefined("'dict object' has no attribute '" + name + "'");
  }
  return get_attribute(input, name);
}

Value filter_batch(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("batch", std::move(arguments), {"linecount", "fill_with"}, 1);
  const int64_t line_count = integer_argument(*bound.get(0), "linecount");
  if (line_count <= 0) fail(FailureKind::kUnsupported, "batch() with a line count below 1");
  std::vector<Value> batches;
  std::vector<Value> current;
  for (Value& item : python_iterate(input)) {
    if (static_cast<int64_t>(current.size()) == line_count) {
      batches.push_back(Value::sequence(std::move(current)));
      current.clear();
    }
    current.push_back(std::move(item));
  }
  if (!current.empty()) {
    if (const Value* fill = bound.get(1); fill && !fill->is_none()) {
      while (static_cast<int64_t>(current.size()) < line_count) current.push_back(*fill);
    }
    batches.push_back(Value::sequence(std::move(current)));
  }
  return generator(std::move(batches));
}

Value filter_capitalize(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("capitalize", std::move(arguments), {});
  const Value text = soft_str(input);
  return Value::string(python_capitalize(text.as_string()), text.is_markup());
}

Value filter_center(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("center", std::move(arguments), {"width"});
  const Value text = soft_str(input);
  const int64_t width = bound.has(0) ? integer_argument(*bound.get(0), "width") : 80;
  const int64_t length = count_code_points(text.as_string());
  if (width <= length) return text;
  const int64_t padding = width - length;
  const int64_t left = padding / 2 + (padding & width & 1);
  return Value::string(std::string(left, ' ') + text.as_string() + std::string(padding - left, ' '),
                       text.is_markup());
}

Value filter_length(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("length", std::move(arguments), {});
  return Value::integer(python_len(input));
}

Value filter_default(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("default", std::move(arguments), {"default_value", "boolean"});
  if (input.is_undefined() || (boolean_argument(bound, 1, false) && !is_truthy(input))) {
    return bound.get_or(0, Value::string(""));
  }
  return input;
}

Value filter_dictsort(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("dictsort", std::move(arguments), {"case_sensitive", "by", "reverse"});
  if (!input.is_dict()) {
    if (input.is_undefined()) raise_undefined(input);
    fail(FailureKind::kAttribute, "'" + python_type_name(input) + "' object has no attribute 'items'");
  }
  const bool case_sensitive = boolean_argument(bound, 0, false);
  const std::string by = bound.has(1) ? string_argument(*bound.get(1), "by") : "key";
  if (by != "key" && by != "value") {
    fail(FailureKind::kFilterArgument, "You can only sort by either \"key\" or \"value\"");
  }
  std::vector<Value> items;
  std::vector<Value> keys;
  for (const auto& [key, value] : input.as_dict().entries()) {
    items.push_back(Value::sequence({key, value}, SequenceKind::kTuple));
    const Value& sort_by = by == "key" ? key : value;
    keys.push_back(case_sensitive ? sort_by : ignore_case(sort_by));
  }
  return Value::sequence(sort_values(std::move(items), keys, boolean_argument(bound, 2, false)));
}

Value filter_escape(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("escape", std::move(arguments), {});
  if (input.is_markup()) return input;
  return Value::string(html_escape(to_python_str(input)), /*markup=*/true);
}

Value filter_forceescape(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("forceescape", std::move(arguments), {});
  return Value::string(html_escape(to_python_str(input)), /*markup=*/true);
}

Value filter_first(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("first", std::move(arguments), {});
  std::vector<Value> items = python_iterate(input);
  if (items.empty()) return Value::undefined("No first item, sequence was empty.");
  return items.front();
}

Value filter_last(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("last", std::move(arguments), {});
  if (input.is_sequence() && input.sequence_kind() == SequenceKind::kGenerator) {
    fail(FailureKind::kType, "'generator' object is not reversible");
  }
  std::vector<Value> items = python_iterate(input);
  if (items.empty()) return Value::undefined("No last item, sequence was empty.");
  return items.back();
}

Value filter_float(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("float", std::move(arguments), {"default"});
  const Value fallback = bound.get_or(0, Value::floating(0.0));
  if (input.is_undefined()) raise_undefined(input);  // float(Undefined) raises in jinja2
  if (input.is_number()) return Value::floating(input.as_double());
  if (input.is_string()) {
    if (std::optional<double> parsed = parse_python_float(input.as_string())) return Value::floating(*parsed);
  }
  return fallback;
}

Value filter_format(Renderer&, const Value& input, CallArguments arguments) {
  if (!arguments.positional.empty() && !arguments.keyword.empty()) {
    fail(FailureKind::kFilterArgument, "can't handle positional and keyword arguments at the same time");
  }
  const Value text = soft_str(input);
  Value parameters;
  if (!arguments.keyword.empty()) {
    Dict mapping;
    for (auto& [key, value] : arguments.keyword) mapping.set(key, std::move(value));
    parameters = Value::dict(std::move(mapping));
  } else {
    parameters = Value::sequence(std::move(arguments.positional), SequenceKind::kTuple);
  }
  return binary_operation(BinaryOperator::kModulo, text, parameters);
}

Value filter_indent(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("indent", std::move(arguments), {"width", "first", "blank"});
  std::string indentation = "    ";
  if (const Value* width = bound.get(0)) {
    indentation =
        width->is_string() ? width->as_string() : std::string(integer_argument(*width, "width"), ' ');
  }
  const bool first = boolean_argument(bound, 1, false);
  const bool blank = boolean_argument(bound, 2, false);
  // jinja2 appends "\n" to the value itself (no str() first), so only a str works.
  if (!input.is_string()) {
    if (input.is_undefined()) raise_undefined(input);
    if (input.is_list_or_tuple() && input.sequence_kind() == SequenceKind::kList) {
      fail(FailureKind::kAttribute, "'list' object has no attribute 'splitlines'");
    }
    fail(FailureKind::kType,
         "unsupported operand type(s) for +=: '" + python_type_name(input) + "' and 'str'");
  }
  const Value& text = input;
  // jinja2 appends a newline before splitting, so a trailing newline keeps its (unindented) empty line.
  const std::vector<std::string> lines = python_splitlines(text.as_string() + "\n", false);
  std::string result;
  if (blank) {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i > 0) result += "\n" + indentation;
      result += lines[i];
    }
  } else {
    result = lines.empty() ? "" : lines[0];
    for (size_t i = 1; i < lines.size(); ++i) {
      result += "\n";
      if (!lines[i].empty()) result += indentation;
      result += lines[i];
    }
  }
  if (first) result = indentation + result;
  return Value::string(result, text.is_markup());
}

Value filter_int(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("int", std::move(arguments), {"default", "base"});
  const Value fallback = bound.get_or(0, Value::integer(0));
  const int base = bound.has(1) ? static_cast<int>(integer_argument(*bound.get(1), "base")) : 10;
  if (input.is_undefined()) raise_undefined(input);  // int(Undefined) raises in jinja2
  if (input.is_int() || input.is_bool()) return Value::integer(input.as_int());
  if (input.is_float()) {
    const double value = input.as_double();
    if (std::isnan(value) || std::isinf(value)) return fallback;
    if (std::fabs(value) >= 9.2e18) fail(FailureKind::kUnsupported, "integer beyond 64 bits");
    return Value::integer(static_cast<int64_t>(std::trunc(value)));
  }
  if (input.is_string()) {
    if (std::optional<int64_t> parsed = parse_python_int(input.as_string(), base))
      return Value::integer(*parsed);
    // jinja2 then tries int(float(value)).
    if (std::optional<double> parsed = parse_python_float(input.as_string())) {
      if (std::isnan(*parsed) || std::isinf(*parsed)) return fallback;
      // Python's int is unbounded; ours is 64 bits, and converting a double beyond it is undefined.
      if (std::fabs(*parsed) >= 9.2e18) fail(FailureKind::kUnsupported, "integer beyond 64 bits");
      return Value::integer(static_cast<int64_t>(std::trunc(*parsed)));
    }
  }
  return fallback;
}

Value filter_items(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("items", std::move(arguments), {});
  if (input.is_undefined()) return generator({});
  if (!input.is_dict()) fail(FailureKind::kType, "Can only get item pairs from a mapping.");
  std::vector<Value> items;
  for (const auto& [key, value] : input.as_dict().entries()) {
    items.push_back(Value::sequence({key, value}, SequenceKind::kTuple));
  }
  return generator(std::move(items));
}

Value filter_join(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("join", std::move(arguments), {"d", "attribute"});
  const std::string separator = bound.has(0) ? to_python_str(*bound.get(0)) : "";
  std::vector<Value> items = python_iterate(input);
  if (bound.has(1)) {
    const AttributeGetter getter(bound.get(1), std::nullopt, false);
    for (Value& item : items) item = getter(item);
  }
  std::string result;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) result += separator;
    result += to_python_str(items[i]);
    check_result_size(result.size(), false);
  }
  return Value::string(std::move(result));
}

Value filter_list(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("list", std::move(arguments), {});
  return Value::sequence(python_iterate(input));
}

Value filter_lower(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("lower", std::move(arguments), {});
  const Value text = soft_str(input);
  return Value::string(python_lower(text.as_string()), text.is_markup());
}

Value filter_upper(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("upper", std::move(arguments), {});
  const Value text = soft_str(input);
  return Value::string(python_upper(text.as_string()), text.is_markup());
}

Value filter_map(Renderer& renderer, const Value& input, CallArguments arguments) {
  if (!is_truthy(input)) return generator({});
  std::vector<Value> items = python_iterate(input);
  const auto attribute = std::find_if(arguments.keyword.begin(), arguments.keyword.end(),
                                      [](const auto& entry) { return entry.first == "attribute"; });
  if (arguments.positional.empty() && attribute != arguments.keyword.end()) {
    Value attribute_name = attribute->second;
    std::optional<Value> default_value;
    for (auto& [key, value] : arguments.keyword) {
      if (key == "default") {
        default_value = value;
      } else if (key != "attribute") {
        fail(FailureKind::kFilterArgument, "Unexpected keyword argument '" + key + "'");
      }
    }
    if (default_value && default_value->is_none()) default_value.reset();
    const AttributeGetter getter(&attribute_name, default_value, false);
    for (Value& item : items) item = getter(item);
    return generator(std::move(items));
  }
  if (arguments.positional.empty()) fail(FailureKind::kFilterArgument, "map requires a filter argument");
  const std::string name = string_argument(arguments.positional[0], "filter name");
  arguments.positional.erase(arguments.positional.begin());
  if (find_filter(name) == nullptr) fail(FailureKind::kRuntime, "No filter named '" + name + "' found.");
  for (Value& item : items) item = renderer.call_filter(name, item, arguments);
  return generator(std::move(items));
}

// select / reject / selectattr / rejectattr.
Value select_or_reject(Renderer& renderer, const Value& input, CallArguments arguments, bool keep_matching,
                       bool lookup_attribute) {
  if (!is_truthy(input)) return generator({});
  std::optional<AttributeGetter> getter;
  size_t offset = 0;
  if (lookup_attribute) {
    if (arguments.positional.empty())
      fail(FailureKind::kFilterArgument, "Missing parameter for attribute name");
    getter.emplace(&arguments.positional[0], std::nullopt, false);
    offset = 1;
  }
  std::optional<std::string> test_name;
  CallArguments test_arguments;
  if (arguments.positional.size() > offset) {
    test_name = string_argument(arguments.positional[offset], "test name");
    test_arguments.positional.assign(arguments.positional.begin() + offset + 1, arguments.positional.end());
    test_arguments.keyword = arguments.keyword;
    if (find_test(*test_name) == nullptr)
      fail(FailureKind::kRuntime, "No test named '" + *test_name + "' found.");
  }
  std::vector<Value> kept;
  for (Value& item : python_iterate(input)) {
    const Value subject = getter ? (*getter)(item) : item;
    const bool matches =
        test_name ? renderer.call_test(*test_name, subject, test_arguments) : is_truthy(subject);
    if (matches == keep_matching) kept.push_back(std::move(item));
  }
  return generator(std::move(kept));
}

Value filter_select(Renderer& renderer, const Value& input, CallArguments arguments) {
  return select_or_reject(renderer, input, std::move(arguments), true, false);
}
Value filter_reject(Renderer& renderer, const Value& input, CallArguments arguments) {
  return select_or_reject(renderer, input, std::move(arguments), false, false);
}
Value filter_selectattr(Renderer& renderer, const Value& input, CallArguments arguments) {
  return select_or_reject(renderer, input, std::move(arguments), true, true);
}
Value filter_rejectattr(Renderer& renderer, const Value& input, CallArguments arguments) {
  return select_or_reject(renderer, input, std::move(arguments), false, true);
}

Value min_or_max(const Value& input, CallArguments arguments, bool maximum) {
  BoundArguments bound(maximum ? "max" : "min", std::move(arguments), {"case_sensitive", "attribute"});
  std::vector<Value> items = python_iterate(input);
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  const AttributeGetter getter(bound.get(1), std::nullopt, !boolean_argument(bound, 0, false));
  size_t best = 0;
  Value best_key = getter(items[0]);
  for (size_t i = 1; i < items.size(); ++i) {
    Value key = getter(items[i]);
    // Python's min/max keep the first of equal items.
    if (maximum ? python_less(best_key, key) : python_less(key, best_key)) {
      best = i;
      best_key = std::move(key);
    }
  }
  return items[best];
}

Value filter_min(Renderer&, const Value& input, CallArguments arguments) {
  return min_or_max(input, std::move(arguments), false);
}
Value filter_max(Renderer&, const Value& input, CallArguments arguments) {
  return min_or_max(input, std::move(arguments), true);
}

Value filter_replace(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("replace", std::move(arguments), {"old", "new", "count"}, 2);
  const int64_t count =
      bound.has(2) && !bound.get(2)->is_none() ? integer_argument(*bound.get(2), "count") : -1;
  return Value::string(python_replace(to_python_str(input), to_python_str(*bound.get(0)),
                                      to_python_str(*bound.get(1)), count));
}

Value filter_reverse(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("reverse", std::move(arguments), {});
  if (input.is_string()) {
    std::u32string code_points = decode_utf8(input.as_string());
    std::reverse(code_points.begin(), code_points.end());
    return Value::string(encode_utf8(code_points), input.is_markup());
  }
  if (!python_is_iterable(input)) fail(FailureKind::kFilterArgument, "argument must be iterable");
  std::vector<Value> items = python_iterate(input);
  std::reverse(items.begin(), items.end());
  // reversed() of a list is an iterator; of a generator, jinja2 falls back to a reversed list.
  const bool was_generator = input.is_sequence() && input.sequence_kind() == SequenceKind::kGenerator;
  return Value::sequence(std::move(items), was_generator ? SequenceKind::kList : SequenceKind::kGenerator);
}

Value filter_round(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("round", std::move(arguments), {"precision", "method"});
  const int64_t precision = bound.has(0) ? integer_argument(*bound.get(0), "precision") : 0;
  const std::string method = bound.has(1) ? string_argument(*bound.get(1), "method") : "common";
  if (method != "common" && method != "ceil" && method != "floor") {
    fail(FailureKind::kFilterArgument, "method must be common, ceil or floor");
  }
  if (!input.is_number())
    fail(FailureKind::kType, "type " + python_type_name(input) + " doesn't define __round__ method");
  if (method == "common") {
    // Python's round(int, n) stays an int for n >= 0.
    if (!input.is_float() && precision >= 0) return Value::integer(input.as_int());
    if (!input.is_float()) fail(FailureKind::kUnsupported, "round() of an int to negative precision");
    // Python rounds the exact binary value half-to-even; printf does the same.
    char buffer[512];
    if (precision < 0 || precision > 300) fail(FailureKind::kUnsupported, "round() precision out of range");
    std::snprintf(buffer, sizeof(buffer), "%.*f", static_cast<int>(precision), input.as_double());
    return Value::floating(std::strtod(buffer, nullptr));
  }
  const double scale = std::pow(10.0, static_cast<double>(precision));
  const double scaled = input.as_double() * scale;
  return Value::floating((method == "ceil" ? std::ceil(scaled) : std::floor(scaled)) / scale);
}

Value filter_safe(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("safe", std::move(arguments), {});
  return Value::string(to_python_str(input), /*markup=*/true);
}

Value filter_sort(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("sort", std::move(arguments), {"reverse", "case_sensitive", "attribute"});
  std::vector<Value> items = python_iterate(input);
  const bool lower = !boolean_argument(bound, 1, false);
  // Several comma-separated attributes sort by each in turn (jinja2's make_multi_attrgetter).
  std::vector<AttributeGetter> getters;
  const Value* attribute = bound.get(2);
  if (attribute && attribute->is_string()) {
    for (const std::string& part : python_split(attribute->as_string(), std::string(","), -1)) {
      const Value name = Value::string(part);
      getters.emplace_back(&name, std::nullopt, lower);
    }
  } else {
    getters.emplace_back(attribute, std::nullopt, lower);
  }
  std::vector<Value> keys;
  for (const Value& item : items) {
    std::vector<Value> key;
    for (const AttributeGetter& getter : getters) key.push_back(getter(item));
    keys.push_back(Value::sequence(std::move(key)));
  }
  return Value::sequence(sort_values(std::move(items), keys, boolean_argument(bound, 0, false)));
}

Value filter_string(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("string", std::move(arguments), {});
  return soft_str(input);
}

Value filter_sum(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("sum", std::move(arguments), {"attribute", "start"});
  const AttributeGetter getter(bound.get(0), std::nullopt, false);
  Value total = bound.get_or(1, Value::integer(0));
  for (const Value& item : python_iterate(input))
    total = binary_operation(BinaryOperator::kAdd, total, getter(item));
  return total;
}

Value filter_title(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("title", std::move(arguments), {});
  // jinja2 splits before runs of "-", whitespace and opening brackets, and capitalises each piece's first
  // character (not Python's str.title()).
  const Value text = soft_str(input);
  const std::u32string code_points = decode_utf8(text.as_string());
  auto is_separator = [](char32_t c) {
    return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || is_python_space(c);
  };
  std::string result;
  size_t i = 0;
  while (i < code_points.size()) {
    size_t j = i;
    const bool separator = is_separator(code_points[i]);
    while (j < code_points.size() && is_separator(code_points[j]) == separator) ++j;
    const std::string piece = encode_utf8(std::u32string_view(code_points).substr(i, j - i));
    if (separator) {
      result += piece;
    } else {
      std::string first;
      append_utf8(first, code_points[i]);
      result += python_upper(first) +
                python_lower(encode_utf8(std::u32string_view(code_points).substr(i + 1, j - i - 1)));
    }
    i = j;
  }
  return Value::string(result);  // jinja2 joins the pieces with a plain "", so Markup is lost
}

Value filter_tojson(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("tojson", std::move(arguments), {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonDumpOptions options;
  options.ensure_ascii = boolean_argument(bound, 0, false);
  if (const Value* indent = bound.get(1); indent && !indent->is_none()) {
    options.indent = indent->is_string()
                         ? indent->as_string()
                         : std::string(std::max<int64_t>(0, integer_argument(*indent, "indent")), ' ');
  }
  if (const Value* separators = bound.get(2); separators && !separators->is_none()) {
    const std::vector<Value> pair = python_iterate(*separators);
    if (pair.size() != 2) fail(FailureKind::kValue, "separators must be an (item, key) pair");
    options.separators =
        std::make_pair(string_argument(pair[0], "item separator"), string_argument(pair[1], "key separator"));
  }
  options.sort_keys = boolean_argument(bound, 3, false);
  return Value::string(python_json_dumps(input, options));
}

Value filter_trim(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("trim", std::move(arguments), {"chars"});
  const Value text = soft_str(input);
  std::optional<std::string> chars;
  if (const Value* value = bound.get(0); value && !value->is_none())
    chars = string_argument(*value, "strip arg");
  return Value::string(python_strip(text.as_string(), chars, true, true), text.is_markup());
}

Value filter_unique(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("unique", std::move(arguments), {"case_sensitive", "attribute"});
  const AttributeGetter getter(bound.get(1), std::nullopt, !boolean_argument(bound, 0, false));
  std::vector<Value> seen;
  std::vector<Value> kept;
  for (Value& item : python_iterate(input)) {
    Value key = getter(item);
    if (key.is_dict() || (key.is_sequence() && key.sequence_kind() != SequenceKind::kTuple)) {
      fail(FailureKind::kType, "unhashable type: '" + python_type_name(key) + "'");
    }
    if (std::none_of(seen.begin(), seen.end(),
                     [&](const Value& other) { return python_equals(other, key); })) {
      seen.push_back(std::move(key));
      kept.push_back(std::move(item));
    }
  }
  return generator(std::move(kept));
}

Value filter_wordcount(Renderer&, const Value& input, CallArguments arguments) {
  BoundArguments bound("wordcount", std::move(arguments), {});
  // Runs of word characters (\w: letters, digits, underscore).
  int64_t count = 0;
  bool in_word = false;
  for (char32_t c : decode_utf8(to_python_str(input))) {
    const bool word = c == '_' || (c < 0x80 ? std::isalnum(static_cast<int>(c)) != 0 : !is_python_space(c));
    if (word && !in_word) ++count;
    in_word = word;
  }
  return Value::integer(count);
}

struct NamedFilter {
  std::string_view name;
  FilterFunction function;
};

constexpr std::array<NamedFilter, 43> kFilters = {{
    {"abs", filter_abs},
    {"attr", filter_attr},
    {"batch", filter_batch},
    {"capitalize", filter_capitalize},
    {"center", filter_center},
    {"count", filter_length},
    {"d", filter_default},
    {"default", filter_default},
    {"dictsort", filter_dictsort},
    {"e", filter_escape},
    {"escape", filter_escape},
    {"first", filter_first},
    {"float", filter_float},
    {"forceescape", filter_forceescape},
    {"format", filter_format},
    {"indent", filter_indent},
    {"int", filter_int},
    {"items", filter_items},
    {"join", filter_join},
    {"last", filter_last},
    {"length", filter_length},
    {"list", filter_list},
    {"lower", filter_lower},
    {"map", filter_map},
    {"max", filter_max},
    {"min", filter_min},
    {"reject", filter_reject},
    {"rejectattr", filter_rejectattr},
    {"replace", filter_replace},
    {"reverse", filter_reverse},
    {"round", filter_round},
    {"safe", filter_safe},
    {"select", filter_select},
    {"selectattr", filter_selectattr},
    {"sort", filter_sort},
    {"string", filter_string},
    {"sum", filter_sum},
    {"title", filter_title},
    {"tojson", filter_tojson},
    {"trim", filter_trim},
    {"unique", filter_unique},
    {"upper", filter_upper},
    {"wordcount", filter_wordcount},
}};

// jinja2 filters this engine leaves out.
constexpr std::array<std::string_view, 11> kUnimplementedFilters = {
    "filesizeformat", "groupby",   "pprint", "random",   "slice",  "striptags",
    "truncate",       "urlencode", "urlize", "wordwrap", "xmlattr"};

// --- tests ------------------------------------------------------------------------------------------

const Value& single_argument(std::string_view name, const CallArguments& arguments) {
  if (arguments.positional.size() != 1 || !arguments.keyword.empty()) {
    fail(FailureKind::kType, std::string(name) + "() takes exactly one argument");
  }
  return arguments.positional[0];
}

void no_arguments(std::string_view name, const CallArguments& arguments) {
  if (!arguments.positional.empty() || !arguments.keyword.empty()) {
    fail(FailureKind::kType, std::string(name) + "() takes no arguments");
  }
}

bool test_defined(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("defined", arguments);
  return !input.is_undefined();
}
bool test_undefined(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("undefined", arguments);
  return input.is_undefined();
}
bool test_none(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("none", arguments);
  return input.is_none();
}
bool test_boolean(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("boolean", arguments);
  return input.is_bool();
}
bool test_false(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("false", arguments);
  return input.is_bool() && !input.as_bool();
}
bool test_true(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("true", arguments);
  return input.is_bool() && input.as_bool();
}
bool test_integer(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("integer", arguments);
  return input.is_int();
}
bool test_float(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("float", arguments);
  return input.is_float();
}
bool test_number(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("number", arguments);
  return input.is_number();
}
bool test_string(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("string", arguments);
  return input.is_string();
}
bool test_mapping(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("mapping", arguments);
  return input.is_dict();
}
bool test_sequence(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("sequence", arguments);
  // len() and [] both work: str, list, tuple, dict, and jinja2's Undefined.
  return input.is_string() || input.is_list_or_tuple() || input.is_dict() || input.is_undefined();
}
bool test_iterable(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("iterable", arguments);
  return python_is_iterable(input);
}
bool test_callable(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("callable", arguments);
  return input.is_callable() || input.is_undefined();
}
bool test_escaped(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("escaped", arguments);
  return input.is_markup();
}
bool test_lower(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("lower", arguments);
  return python_is_lower(to_python_str(input));
}
bool test_upper(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("upper", arguments);
  return python_is_upper(to_python_str(input));
}
bool test_odd(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("odd", arguments);
  return python_equals(binary_operation(BinaryOperator::kModulo, input, Value::integer(2)),
                       Value::integer(1));
}
bool test_even(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("even", arguments);
  return python_equals(binary_operation(BinaryOperator::kModulo, input, Value::integer(2)),
                       Value::integer(0));
}
bool test_divisibleby(Renderer&, const Value& input, CallArguments arguments) {
  const Value& divisor = single_argument("divisibleby", arguments);
  return python_equals(binary_operation(BinaryOperator::kModulo, input, divisor), Value::integer(0));
}
bool test_sameas(Renderer&, const Value& input, CallArguments arguments) {
  const Value& other = single_argument("sameas", arguments);
  if (input.type() != other.type()) return false;
  switch (input.type()) {
    case Value::Type::kNone:
    case Value::Type::kUndefined: return input.is_none() || input.identity() == other.identity();
    case Value::Type::kBool: return input.as_bool() == other.as_bool();
    default: return input.identity() != nullptr && input.identity() == other.identity();
  }
}
bool test_in(Renderer&, const Value& input, CallArguments arguments) {
  return contains(single_argument("in", arguments), input);
}
bool test_filter(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("filter", arguments);
  return input.is_string() && filter_support(input.as_string()) != BuiltinSupport::kUnknown;
}
bool test_test(Renderer&, const Value& input, CallArguments arguments) {
  no_arguments("test", arguments);
  return input.is_string() && test_support(input.as_string()) != BuiltinSupport::kUnknown;
}

template <CompareOperator op>
bool test_compare(Renderer&, const Value& input, CallArguments arguments) {
  return compare(op, input, single_argument("comparison", arguments));
}

struct NamedTest {
  std::string_view name;
  TestFunction function;
};

constexpr std::array<NamedTest, 39> kTests = {{
    {"defined", test_defined},
    {"undefined", test_undefined},
    {"none", test_none},
    {"boolean", test_boolean},
    {"false", test_false},
    {"true", test_true},
    {"integer", test_integer},
    {"float", test_float},
    {"number", test_number},
    {"string", test_string},
    {"mapping", test_mapping},
    {"sequence", test_sequence},
    {"iterable", test_iterable},
    {"callable", test_callable},
    {"escaped", test_escaped},
    {"lower", test_lower},
    {"upper", test_upper},
    {"odd", test_odd},
    {"even", test_even},
    {"divisibleby", test_divisibleby},
    {"sameas", test_sameas},
    {"in", test_in},
    {"filter", test_filter},
    {"test", test_test},
    {"==", test_compare<CompareOperator::kEqual>},
    {"eq", test_compare<CompareOperator::kEqual>},
    {"equalto", test_compare<CompareOperator::kEqual>},
    {"!=", test_compare<CompareOperator::kNotEqual>},
    {"ne", test_compare<CompareOperator::kNotEqual>},
    {">", test_compare<CompareOperator::kGreater>},
    {"gt", test_compare<CompareOperator::kGreater>},
    {"greaterthan", test_compare<CompareOperator::kGreater>},
    {">=", test_compare<CompareOperator::kGreaterEqual>},
    {"ge", test_compare<CompareOperator::kGreaterEqual>},
    {"<", test_compare<CompareOperator::kLess>},
    {"lt", test_compare<CompareOperator::kLess>},
    {"lessthan", test_compare<CompareOperator::kLess>},
    {"<=", test_compare<CompareOperator::kLessEqual>},
    {"le", test_compare<CompareOperator::kLessEqual>},
}};

}  // namespace

FilterFunction find_filter(std::string_view name) {
  for (const NamedFilter& filter : kFilters) {
    if (filter.name == name) return filter.function;
  }
  return nullptr;
}

TestFunction find_test(std::string_view name) {
  for (const NamedTest& test : kTests) {
    if (test.name == name) return test.function;
  }
  return nullptr;
}

BuiltinSupport filter_support(std::string_view name) {
  if (find_filter(name) != nullptr) return BuiltinSupport::kImplemented;
  if (std::find(kUnimplementedFilters.begin(), kUnimplementedFilters.end(), name) !=
      kUnimplementedFilters.end()) {
    return BuiltinSupport::kNotImplemented;
  }
  return BuiltinSupport::kUnknown;
}

BuiltinSupport test_support(std::string_view name) {
  return find_test(name) != nullptr ? BuiltinSupport::kImplemented : BuiltinSupport::kUnknown;
}

bool is_unimplemented_global(std::string_view name) {
  return name == "lipsum" || name == "cycler" || name == "joiner";
}

}  // namespace cartridge::jinja
