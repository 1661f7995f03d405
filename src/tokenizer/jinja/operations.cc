#include "tokenizer/jinja/operations.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "tokenizer/jinja/failure.h"
#include "tokenizer/jinja/methods.h"
#include "tokenizer/jinja/python_string.h"

namespace cartridge::jinja {

namespace {

// jinja2's object_type_repr: "None", or "'dict object'".
std::string object_description(const Value& object) {
  if (object.is_none()) return "'None'";
  return "'" + python_type_name(object) + " object'";
}

Value missing_attribute(const Value& object, const std::string& name) {
  return Value::undefined(object_description(object) + " has no attribute '" + name + "'");
}

Value missing_element(const Value& object, const Value& key) {
  if (key.is_string()) return missing_attribute(object, key.as_string());
  return Value::undefined(object_description(object) + " has no element " + to_python_repr(key));
}

bool is_dunder(const std::string& name) {
  return name.size() > 4 && name.compare(0, 2, "__") == 0 && name.compare(name.size() - 2, 2, "__") == 0;
}

// Python slice.indices(length): normalised start, stop and step (step != 0).
void slice_indices(int64_t length, const Value& start_value, const Value& stop_value, int64_t step,
                   int64_t& start, int64_t& stop) {
  auto clamp = [&](const Value& value, int64_t fallback_positive, int64_t fallback_negative) -> int64_t {
    if (value.is_none() || value.is_undefined()) return step > 0 ? fallback_positive : fallback_negative;
    int64_t index = value.as_int();
    if (index < 0) {
      index += length;
      if (index < 0) index = step > 0 ? 0 : -1;
    } else if (index >= length) {
      index = step > 0 ? length : length - 1;
    }
    return index;
  };
  start = clamp(start_value, 0, length - 1);
  stop = clamp(stop_value, length, -1);
}

template <typename T>
std::vector<T> take_slice(const std::vector<T>& items, int64_t start, int64_t stop, int64_t step) {
  std::vector<T> out;
  if (step > 0) {
    for (int64_t i = start; i < stop; i += step) out.push_back(items[i]);
  } else {
    for (int64_t i = start; i > stop; i += step) out.push_back(items[i]);
  }
  return out;
}

bool is_slice_index(const Value& value) { return value.is_none() || value.is_int() || value.is_bool(); }

[[noreturn]] void integer_overflow() { fail(FailureKind::kUnsupported, "integer arithmetic beyond 64 bits"); }

int64_t checked_add(int64_t a, int64_t b) {
  int64_t result;
  if (__builtin_add_overflow(a, b, &result)) integer_overflow();
  return result;
}
int64_t checked_subtract(int64_t a, int64_t b) {
  int64_t result;
  if (__builtin_sub_overflow(a, b, &result)) integer_overflow();
  return result;
}
int64_t checked_multiply(int64_t a, int64_t b) {
  int64_t result;
  if (__builtin_mul_overflow(a, b, &result)) integer_overflow();
  return result;
}

int64_t floor_divide(int64_t a, int64_t b) {
  if (b == 0) fail(FailureKind::kZeroDivision, "integer division or modulo by zero");
  if (a == INT64_MIN && b == -1) integer_overflow();
  int64_t quotient = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --quotient;
  return quotient;
}

int64_t python_modulo(int64_t a, int64_t b) {
  if (b == 0) fail(FailureKind::kZeroDivision, "integer division or modulo by zero");
  if (b == -1) return 0;
  int64_t remainder = a % b;
  if (remainder != 0 && ((remainder < 0) != (b < 0))) remainder += b;
  return remainder;
}

// CPython's float floor division (float_divmod).
double float_floor_divide(double a, double b) {
  double remainder = std::fmod(a, b);
  double quotient = (a - remainder) / b;
  if (remainder != 0 && ((b < 0) != (remainder < 0))) quotient -= 1.0;
  if (quotient == 0) return std::copysign(0.0, a / b);
  double floored = std::floor(quotient);
  if (quotient - floored > 0.5) floored += 1.0;
  return floored;
}

double float_modulo(double a, double b) {
  if (b == 0) fail(FailureKind::kZeroDivision, "float modulo");
  double remainder = std::fmod(a, b);
  if (remainder != 0 && ((remainder < 0) != (b < 0))) remainder += b;
  if (remainder == 0) remainder = std::copysign(0.0, b);
  return remainder;
}

[[noreturn]] void unsupported_operands(const char* symbol, const Value& left, const Value& right) {
  fail(FailureKind::kType, std::string("unsupported operand type(s) for ") + symbol + ": '" +
                               python_type_name(left) + "' and '" + python_type_name(right) + "'");
}

Value repeat(const Value& sequence, int64_t times) {
  if (times <= 0)
    return sequence.is_string() ? Value::string("", sequence.is_markup())
                                : Value::sequence({}, sequence.sequence_kind());
  const size_t unit = sequence.is_string() ? sequence.as_string().size() : sequence.items().size();
  if (unit > 0 &&
      static_cast<uint64_t>(times) > (sequence.is_string() ? kMaxResultBytes : kMaxResultItems) / unit) {
    check_result_size(SIZE_MAX, !sequence.is_string());
  }
  if (sequence.is_string()) {
    std::string out;
    for (int64_t i = 0; i < times; ++i) out += sequence.as_string();
    return Value::string(std::move(out), sequence.is_markup());
  }
  std::vector<Value> out;
  for (int64_t i = 0; i < times; ++i) out.insert(out.end(), sequence.items().begin(), sequence.items().end());
  return Value::sequence(std::move(out), sequence.sequence_kind());
}

std::string escape_for_markup(const Value& value) {
  if (value.is_markup()) return value.as_string();
  return html_escape(to_python_str(value));
}

}  // namespace

void check_result_size(size_t bytes_or_items, bool items) {
  if (bytes_or_items > (items ? kMaxResultItems : kMaxResultBytes)) {
    fail(FailureKind::kUnsupported,
         items ? "a list of more than " + std::to_string(kMaxResultItems) + " items"
               : "a string of more than " + std::to_string(kMaxResultBytes >> 20) + " MiB");
  }
}

void raise_undefined(const Value& undefined) {
  const UndefinedData& data = undefined.undefined_data();
  if (data.unsafe) fail(FailureKind::kSecurity, data.message);
  fail(FailureKind::kUndefined, data.message.empty() ? "undefined value" : data.message);
}

Value get_attribute(const Value& object, const std::string& name) {
  if (object.is_undefined()) raise_undefined(object);
  if (is_dunder(name)) {
    return Value::undefined(
        "access to attribute '" + name + "' of '" + python_type_name(object) + "' object is unsafe.",
        /*unsafe=*/true);
  }
  switch (object.type()) {
    case Value::Type::kNamespace: {
      const Value* value = object.as_namespace().attributes.find(name);
      return value ? *value : missing_attribute(object, name);
    }
    case Value::Type::kLoop: return loop_attribute(object.as_loop(), name);
    case Value::Type::kString:
    case Value::Type::kSequence:
    case Value::Type::kDict: {
      if (std::optional<Value> method = find_method(object, name)) return *method;
      if (object.is_dict()) {
        const Value* value = object.as_dict().find(name);
        if (value) return *value;
      }
      return missing_attribute(object, name);
    }
    default: return missing_attribute(object, name);
  }
}

Value get_item(const Value& object, const Value& key) {
  if (object.is_undefined()) raise_undefined(object);
  switch (object.type()) {
    case Value::Type::kDict: {
      const Value* value = object.as_dict().find(key);
      if (value) return *value;
      break;
    }
    case Value::Type::kSequence:
      if (object.is_list_or_tuple() && (key.is_int() || key.is_bool())) {
        const auto& items = object.items();
        int64_t index = key.as_int();
        if (index < 0) index += static_cast<int64_t>(items.size());
        if (index >= 0 && index < static_cast<int64_t>(items.size())) return items[index];
        return missing_element(object, key);
      }
      break;
    case Value::Type::kString:
      if (key.is_int() || key.is_bool()) {
        const std::string& text = object.as_string();
        int64_t index = key.as_int();
        if (is_ascii(text)) {
          if (index < 0) index += static_cast<int64_t>(text.size());
          if (index >= 0 && index < static_cast<int64_t>(text.size())) {
            return Value::string(std::string(1, text[index]), object.is_markup());
          }
        } else {
          const std::u32string code_points = decode_utf8(text);
          if (index < 0) index += static_cast<int64_t>(code_points.size());
          if (index >= 0 && index < static_cast<int64_t>(code_points.size())) {
            std::string character;
            append_utf8(character, code_points[index]);
            return Value::string(character, object.is_markup());
          }
        }
        return missing_element(object, key);
      }
      break;
    case Value::Type::kNamespace:
    case Value::Type::kLoop:
      // Not subscriptable; jinja2 falls back to the attribute.
      if (key.is_string()) return get_attribute(object, key.as_string());
      return missing_element(object, key);
    default: return missing_element(object, key);
  }
  // A failed item lookup with a str key falls back to the attribute (dict methods such as items).
  if (key.is_string() && !is_dunder(key.as_string())) {
    if (std::optional<Value> method = find_method(object, key.as_string())) return *method;
  }
  return missing_element(object, key);
}

Value get_slice(const Value& object, const Value& start_value, const Value& stop_value,
                const Value& step_value) {
  // jinja2 compiles slices to a plain Python subscript (no sandbox getitem), so failures raise.
  if (object.is_undefined()) raise_undefined(object);
  if (object.is_dict()) fail(FailureKind::kType, "unhashable type: 'slice'");
  if (!object.is_string() && !object.is_list_or_tuple()) {
    fail(FailureKind::kType, "'" + python_type_name(object) + "' object is not subscriptable");
  }
  if (!is_slice_index(start_value) || !is_slice_index(stop_value) || !is_slice_index(step_value)) {
    fail(FailureKind::kType, "slice indices must be integers or None or have an __index__ method");
  }
  const int64_t step = step_value.is_none() ? 1 : step_value.as_int();
  if (step == 0) fail(FailureKind::kValue, "slice step cannot be zero");
  int64_t start = 0;
  int64_t stop = 0;
  if (object.is_string()) {
    const std::string& text = object.as_string();
    if (is_ascii(text)) {
      slice_indices(static_cast<int64_t>(text.size()), start_value, stop_value, step, start, stop);
      std::string out;
      if (step > 0) {
        for (int64_t i = start; i < stop; i += step) out.push_back(text[i]);
      } else {
        for (int64_t i = start; i > stop; i += step) out.push_back(text[i]);
      }
      return Value::string(std::move(out), object.is_markup());
    }
    const std::u32string code_points = decode_utf8(text);
    slice_indices(static_cast<int64_t>(code_points.size()), start_value, stop_value, step, start, stop);
    std::u32string out;
    if (step > 0) {
      for (int64_t i = start; i < stop; i += step) out.push_back(code_points[i]);
    } else {
      for (int64_t i = start; i > stop; i += step) out.push_back(code_points[i]);
    }
    return Value::string(encode_utf8(out), object.is_markup());
  }
  const auto& items = object.items();
  slice_indices(static_cast<int64_t>(items.size()), start_value, stop_value, step, start, stop);
  return Value::sequence(take_slice(items, start, stop, step), object.sequence_kind());
}

Value add_strings(const Value& left, const Value& right) {
  check_result_size(left.as_string().size() + right.as_string().size(), false);
  if (left.is_markup() || right.is_markup()) {
    return Value::string(escape_for_markup(left) + escape_for_markup(right), /*markup=*/true);
  }
  return Value::string(left.as_string() + right.as_string());
}

Value binary_operation(BinaryOperator op, const Value& left, const Value& right) {
  if (op == BinaryOperator::kMultiply && left.is_markup() && right.is_undefined()) {
    // markupsafe hands the Undefined to str.__mul__ instead of deferring to it.
    fail(FailureKind::kType, "'Undefined' object cannot be interpreted as an integer");
  }
  if (left.is_undefined()) raise_undefined(left);
  if (op == BinaryOperator::kModulo && left.is_string() && right.is_undefined()) {
    // str % Undefined formats: the Undefined counts as a mapping (it has __getitem__), so only a %(key)s
    // fails.
    return Value::string(printf_format(left.as_string(), right), left.is_markup());
  }
  if (right.is_undefined()) raise_undefined(right);
  const bool numbers = left.is_number() && right.is_number();
  const bool any_float = left.is_float() || right.is_float();
  switch (op) {
    case BinaryOperator::kAdd:
      if (numbers) {
        if (any_float) return Value::floating(left.as_double() + right.as_double());
        return Value::integer(checked_add(left.as_int(), right.as_int()));
      }
      if (left.is_string() && right.is_string()) return add_strings(left, right);
      if (left.is_list_or_tuple() && right.is_list_or_tuple() &&
          left.sequence_kind() == right.sequence_kind()) {
        check_result_size(left.items().size() + right.items().size(), true);
        std::vector<Value> items = left.items();
        items.insert(items.end(), right.items().begin(), right.items().end());
        return Value::sequence(std::move(items), left.sequence_kind());
      }
      if (left.is_string() && !left.is_markup()) {
        fail(FailureKind::kType, "can only concatenate str (not \"" + python_type_name(right) + "\") to str");
      }
      if (left.is_list_or_tuple() && left.sequence_kind() == SequenceKind::kList) {
        fail(FailureKind::kType,
             "can only concatenate list (not \"" + python_type_name(right) + "\") to list");
      }
      unsupported_operands("+", left, right);
    case BinaryOperator::kSubtract:
      if (numbers) {
        if (any_float) return Value::floating(left.as_double() - right.as_double());
        return Value::integer(checked_subtract(left.as_int(), right.as_int()));
      }
      unsupported_operands("-", left, right);
    case BinaryOperator::kMultiply:
      if (numbers) {
        if (any_float) return Value::floating(left.as_double() * right.as_double());
        return Value::integer(checked_multiply(left.as_int(), right.as_int()));
      }
      if ((left.is_string() || left.is_list_or_tuple()) && (right.is_int() || right.is_bool())) {
        return repeat(left, right.as_int());
      }
      if ((right.is_string() || right.is_list_or_tuple()) && (left.is_int() || left.is_bool())) {
        return repeat(right, left.as_int());
      }
      fail(FailureKind::kType,
           "can't multiply sequence by non-int of type '" + python_type_name(right) + "'");
    case BinaryOperator::kDivide:
      if (numbers) {
        if (right.as_double() == 0) fail(FailureKind::kZeroDivision, "division by zero");
        return Value::floating(left.as_double() / right.as_double());
      }
      unsupported_operands("/", left, right);
    case BinaryOperator::kFloorDivide:
      if (numbers) {
        if (any_float) {
          if (right.as_double() == 0) fail(FailureKind::kZeroDivision, "float floor division by zero");
          return Value::floating(float_floor_divide(left.as_double(), right.as_double()));
        }
        return Value::integer(floor_divide(left.as_int(), right.as_int()));
      }
      unsupported_operands("//", left, right);
    case BinaryOperator::kModulo:
      if (numbers) {
        if (any_float) return Value::floating(float_modulo(left.as_double(), right.as_double()));
        return Value::integer(python_modulo(left.as_int(), right.as_int()));
      }
      if (left.is_string()) {
        if (left.is_markup()) {
          // markupsafe escapes every argument before formatting.
          Value escaped = right;
          if (right.is_list_or_tuple()) {
            std::vector<Value> items;
            for (const Value& item : right.items())
              items.push_back(Value::string(escape_for_markup(item), true));
            escaped = Value::sequence(std::move(items), right.sequence_kind());
          } else if (!right.is_dict()) {
            escaped = Value::string(escape_for_markup(right), true);
          }
          return Value::string(printf_format(left.as_string(), escaped), /*markup=*/true);
        }
        return Value::string(printf_format(left.as_string(), right));
      }
      unsupported_operands("%", left, right);
    case BinaryOperator::kPower:
      if (numbers) {
        if (any_float || right.as_int() < 0) {
          if (left.as_double() == 0 && right.as_double() < 0) {
            fail(FailureKind::kZeroDivision, "0.0 cannot be raised to a negative power");
          }
          return Value::floating(std::pow(left.as_double(), right.as_double()));
        }
        const int64_t base = left.as_int();
        const int64_t exponent = right.as_int();
        // Bases 0, 1 and -1 never overflow, whatever the exponent; any other base overflows within 63 steps.
        if (base == 0) return Value::integer(exponent == 0 ? 1 : 0);
        if (base == 1) return Value::integer(1);
        if (base == -1) return Value::integer(exponent % 2 == 0 ? 1 : -1);
        int64_t result = 1;
        for (int64_t i = 0; i < exponent; ++i) result = checked_multiply(result, base);
        return Value::integer(result);
      }
      unsupported_operands("** or pow()", left, right);
    case BinaryOperator::kAnd:
    case BinaryOperator::kOr: break;
  }
  fail(FailureKind::kType, "bad operator");
}

Value unary_operation(UnaryOperator op, const Value& operand) {
  if (operand.is_undefined()) raise_undefined(operand);
  if (op == UnaryOperator::kNot) return Value::boolean(!is_truthy(operand));
  if (!operand.is_number()) {
    fail(FailureKind::kType, std::string("bad operand type for unary ") +
                                 (op == UnaryOperator::kNegate ? "-" : "+") + ": '" +
                                 python_type_name(operand) + "'");
  }
  if (op == UnaryOperator::kPlus) return operand.is_bool() ? Value::integer(operand.as_int()) : operand;
  if (operand.is_float()) return Value::floating(-operand.as_double());
  if (operand.as_int() == INT64_MIN) integer_overflow();
  return Value::integer(-operand.as_int());
}

bool contains(const Value& container, const Value& item) {
  switch (container.type()) {
    case Value::Type::kUndefined: return false;
    case Value::Type::kString:
      if (!item.is_string()) {
        fail(FailureKind::kType,
             "'in <string>' requires string as left operand, not " + python_type_name(item));
      }
      return container.as_string().find(item.as_string()) != std::string::npos;
    case Value::Type::kSequence:
      for (const Value& element : python_iterate(container)) {
        if (python_equals(element, item)) return true;
      }
      return false;
    case Value::Type::kDict: return container.as_dict().find(item) != nullptr;
    default:
      fail(FailureKind::kType, "argument of type '" + python_type_name(container) + "' is not iterable");
  }
}

bool compare(CompareOperator op, const Value& left, const Value& right) {
  switch (op) {
    case CompareOperator::kEqual: return python_equals(left, right);
    case CompareOperator::kNotEqual: return !python_equals(left, right);
    case CompareOperator::kLess: return python_less(left, right);
    case CompareOperator::kGreater: return python_less(right, left);
    case CompareOperator::kLessEqual: return python_less(left, right) || python_equals(left, right);
    case CompareOperator::kGreaterEqual: return python_less(right, left) || python_equals(left, right);
    case CompareOperator::kIn: return contains(right, left);
    case CompareOperator::kNotIn: return !contains(right, left);
  }
  return false;
}

// --- printf-style formatting ------------------------------------------------------------------------

namespace {

struct ConversionSpec {
  std::string flags;
  int width = -1;
  int precision = -1;
};

std::string pad(std::string text, const ConversionSpec& spec, bool numeric) {
  const int64_t length = count_code_points(text);
  if (spec.width < 0 || length >= spec.width) return text;
  const size_t padding = spec.width - length;
  if (spec.flags.find('-') != std::string::npos) return text + std::string(padding, ' ');
  if (numeric && spec.flags.find('0') != std::string::npos) {
    const size_t sign = (!text.empty() && (text[0] == '-' || text[0] == '+' || text[0] == ' ')) ? 1 : 0;
    return text.substr(0, sign) + std::string(padding, '0') + text.substr(sign);
  }
  return std::string(padding, ' ') + text;
}

std::string sign_prefix(bool negative, const std::string& flags) {
  if (negative) return "-";
  if (flags.find('+') != std::string::npos) return "+";
  if (flags.find(' ') != std::string::npos) return " ";
  return "";
}

double number_argument(const Value& value, char conversion) {
  if (value.is_number()) return value.as_double();
  fail(FailureKind::kType,
       std::string("%") + conversion + " format: a real number is required, not " + python_type_name(value));
}

std::string format_one(char conversion, const ConversionSpec& spec, const Value& value) {
  char buffer[512];
  switch (conversion) {
    case 's':
    case 'r':
    case 'a': {
      std::string text = conversion == 's' ? to_python_str(value) : to_python_repr(value);
      if (spec.precision >= 0) {
        const std::u32string code_points = decode_utf8(text);
        if (static_cast<int64_t>(code_points.size()) > spec.precision) {
          text = encode_utf8(std::u32string_view(code_points).substr(0, spec.precision));
        }
      }
      return pad(text, spec, false);
    }
    case 'd':
    case 'i':
    case 'u': {
      if (!value.is_number()) {
        fail(FailureKind::kType, std::string("%") + conversion + " format: a real number is required, not " +
                                     python_type_name(value));
      }
      const int64_t number =
          value.is_float() ? static_cast<int64_t>(std::trunc(value.as_double())) : value.as_int();
      std::string digits = std::to_string(number);
      if (number < 0) digits.erase(0, 1);
      return pad(sign_prefix(number < 0, spec.flags) + digits, spec, true);
    }
    case 'x':
    case 'X':
    case 'o': {
      if (!value.is_int() && !value.is_bool()) {
        fail(FailureKind::kType, std::string("%") + conversion + " format: an integer is required, not " +
                                     python_type_name(value));
      }
      const int64_t number = value.as_int();
      const unsigned long long magnitude = number < 0 ? 0ULL - static_cast<unsigned long long>(number)
                                                      : static_cast<unsigned long long>(number);
      std::snprintf(buffer, sizeof(buffer),
                    conversion == 'x'   ? "%llx"
                    : conversion == 'X' ? "%llX"
                                        : "%llo",
                    magnitude);
      std::string prefix;
      if (spec.flags.find('#') != std::string::npos)
        prefix = conversion == 'o' ? "0o" : conversion == 'x' ? "0x" : "0X";
      return pad(sign_prefix(number < 0, spec.flags) + prefix + buffer, spec, true);
    }
    case 'f':
    case 'F':
    case 'e':
    case 'E':
    case 'g':
    case 'G': {
      const double number = number_argument(value, conversion);
      const int precision = spec.precision >= 0 ? spec.precision : 6;
      std::string format = "%";
      if (spec.flags.find('#') != std::string::npos) format += "#";
      format += ".*";
      format.push_back(conversion);
      std::snprintf(buffer, sizeof(buffer), format.c_str(), precision, std::fabs(number));
      std::string text = buffer;
      if (std::isinf(number)) text = (conversion >= 'a') ? "inf" : "INF";
      if (std::isnan(number)) text = (conversion >= 'a') ? "nan" : "NAN";
      return pad(sign_prefix(std::signbit(number) && !std::isnan(number), spec.flags) + text, spec, true);
    }
    case 'c': {
      if (value.is_string() && count_code_points(value.as_string()) == 1)
        return pad(value.as_string(), spec, false);
      if (value.is_int()) {
        std::string text;
        append_utf8(text, static_cast<char32_t>(value.as_int()));
        return pad(text, spec, false);
      }
      fail(FailureKind::kType, "%c requires int or char");
    }
    default: fail(FailureKind::kUnsupported, std::string("the printf conversion '%") + conversion + "'");
  }
}

}  // namespace

std::string printf_format(std::string_view format, const Value& arguments) {
  std::vector<Value> positional;
  const Dict* mapping = nullptr;
  // CPython treats any single argument with __getitem__ (but not a str) like a mapping: leftover
  // arguments are then no error.
  bool mapping_like = false;
  if (arguments.is_sequence() && arguments.sequence_kind() == SequenceKind::kTuple) {
    positional = arguments.items();
  } else {
    positional.push_back(arguments);
    if (arguments.is_dict()) mapping = &arguments.as_dict();
    mapping_like = arguments.is_dict() || arguments.is_list_or_tuple() || arguments.is_undefined();
  }
  size_t next_argument = 0;
  bool used_mapping = false;
  std::string out;
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] != '%') {
      out.push_back(format[i]);
      continue;
    }
    if (++i >= format.size()) fail(FailureKind::kValue, "incomplete format");
    const Value* value = nullptr;
    if (format[i] == '(') {
      const size_t close = format.find(')', i);
      if (close == std::string_view::npos) fail(FailureKind::kValue, "incomplete format key");
      if (arguments.is_undefined()) raise_undefined(arguments);
      if (!mapping) fail(FailureKind::kType, "format requires a mapping");
      const std::string key(format.substr(i + 1, close - i - 1));
      value = mapping->find(key);
      if (!value) fail(FailureKind::kKey, "'" + key + "'");
      used_mapping = true;
      i = close + 1;
    }
    ConversionSpec spec;
    while (i < format.size() && std::string("-+ #0").find(format[i]) != std::string::npos)
      spec.flags += format[i++];
    auto read_number = [&]() {
      int number = 0;
      if (i < format.size() && format[i] == '*')
        fail(FailureKind::kUnsupported, "'*' widths in % formatting");
      while (i < format.size() && format[i] >= '0' && format[i] <= '9')
        number = number * 10 + (format[i++] - '0');
      return number;
    };
    if (i < format.size() && format[i] >= '0' && format[i] <= '9') spec.width = read_number();
    if (i < format.size() && format[i] == '.') {
      ++i;
      spec.precision = read_number();
    }
    while (i < format.size() && (format[i] == 'h' || format[i] == 'l' || format[i] == 'L')) ++i;
    if (i >= format.size()) fail(FailureKind::kValue, "incomplete format");
    const char conversion = format[i];
    if (conversion == '%') {
      out.push_back('%');
      continue;
    }
    if (!value) {
      if (next_argument >= positional.size())
        fail(FailureKind::kType, "not enough arguments for format string");
      value = &positional[next_argument++];
    }
    out += format_one(conversion, spec, *value);
  }
  if (!used_mapping && !mapping_like && next_argument < positional.size()) {
    fail(FailureKind::kType, "not all arguments converted during string formatting");
  }
  return out;
}

// --- format() specs ---------------------------------------------------------------------------------

std::string format_with_spec(const Value& value, std::string_view spec) {
  if (spec.empty()) return to_python_str(value);
  // [[fill]align][sign][#][0][width][,|_][.precision][type]
  size_t i = 0;
  std::string fill = " ";
  char align = 0;
  auto is_align = [](char c) { return c == '<' || c == '>' || c == '^' || c == '='; };
  {
    // The fill may be any character (a whole UTF-8 sequence) when an alignment follows it.
    size_t first_length = 1;
    while (first_length < spec.size() && (static_cast<unsigned char>(spec[first_length]) & 0xC0) == 0x80) {
      ++first_length;
    }
    if (first_length < spec.size() && is_align(spec[first_length])) {
      fill = std::string(spec.substr(0, first_length));
      align = spec[first_length];
      i = first_length + 1;
    } else if (is_align(spec[0])) {
      align = spec[0];
      i = 1;
    }
  }
  char sign = '-';
  if (i < spec.size() && (spec[i] == '+' || spec[i] == '-' || spec[i] == ' ')) sign = spec[i++];
  bool alternate = false;
  if (i < spec.size() && spec[i] == '#') {
    alternate = true;
    ++i;
  }
  if (i < spec.size() && spec[i] == '0') {
    if (!align) {
      fill = "0";
      align = '=';
    }
    ++i;
  }
  int width = -1;
  while (i < spec.size() && spec[i] >= '0' && spec[i] <= '9')
    width = (width < 0 ? 0 : width * 10) + (spec[i++] - '0');
  if (i < spec.size() && (spec[i] == ',' || spec[i] == '_')) {
    fail(FailureKind::kUnsupported, "digit grouping in format specs");
  }
  int precision = -1;
  if (i < spec.size() && spec[i] == '.') {
    ++i;
    precision = 0;
    while (i < spec.size() && spec[i] >= '0' && spec[i] <= '9')
      precision = precision * 10 + (spec[i++] - '0');
  }
  char type = 0;
  if (i < spec.size()) type = spec[i++];
  if (i != spec.size()) fail(FailureKind::kValue, "Invalid format specifier '" + std::string(spec) + "'");

  std::string body;
  std::string sign_text;
  bool numeric = false;
  if (value.is_string() || (!value.is_number() && (type == 0 || type == 's'))) {
    if (type != 0 && type != 's') {
      fail(FailureKind::kValue, std::string("Unknown format code '") + type + "' for object of type '" +
                                    python_type_name(value) + "'");
    }
    body = to_python_str(value);
    if (precision >= 0) {
      const std::u32string code_points = decode_utf8(body);
      if (static_cast<int64_t>(code_points.size()) > precision) {
        body = encode_utf8(std::u32string_view(code_points).substr(0, precision));
      }
    }
    if (!align) align = '<';
  } else if (value.is_number()) {
    numeric = true;
    if (!align) align = '>';
    char buffer[512];
    const bool integer_value = !value.is_float();
    if (integer_value &&
        (type == 0 || type == 'd' || type == 'x' || type == 'X' || type == 'o' || type == 'b')) {
      const int64_t number = value.as_int();
      const unsigned long long magnitude = number < 0 ? 0ULL - static_cast<unsigned long long>(number)
                                                      : static_cast<unsigned long long>(number);
      if (type == 'b') {
        std::string bits;
        for (unsigned long long m = magnitude; m > 0; m >>= 1)
          bits.insert(bits.begin(), static_cast<char>('0' + (m & 1)));
        body = bits.empty() ? "0" : bits;
      } else {
        std::snprintf(buffer, sizeof(buffer),
                      type == 'x'   ? "%llx"
                      : type == 'X' ? "%llX"
                      : type == 'o' ? "%llo"
                                    : "%llu",
                      magnitude);
        body = buffer;
      }
      if (alternate && type != 0 && type != 'd') body = std::string("0") + (type == 'X' ? 'X' : type) + body;
      sign_text = number < 0 ? "-" : sign == '+' ? "+" : sign == ' ' ? " " : "";
    } else if (type == 'f' || type == 'F' || type == 'e' || type == 'E' || type == 'g' || type == 'G' ||
               type == '%' || (type == 0 && precision >= 0) || (integer_value && type != 0)) {
      if (type == 'c' || type == 's' || type == 'n') fail(FailureKind::kUnsupported, "this format spec type");
      double number = value.as_double();
      char conversion = type == 0 ? 'g' : type == '%' ? 'f' : type;
      if (type == '%') number *= 100;
      std::string format = alternate ? "%#.*" : "%.*";
      format.push_back(conversion);
      std::snprintf(buffer, sizeof(buffer), format.c_str(), precision >= 0 ? precision : 6,
                    std::fabs(number));
      body = buffer;
      if (type == '%') body += "%";
      sign_text = std::signbit(number) ? "-" : sign == '+' ? "+" : sign == ' ' ? " " : "";
    } else if (type == 0) {
      body = python_float_repr(std::fabs(value.as_double()));
      sign_text = std::signbit(value.as_double()) ? "-" : sign == '+' ? "+" : sign == ' ' ? " " : "";
    } else {
      fail(FailureKind::kValue, std::string("Unknown format code '") + type + "' for object of type '" +
                                    python_type_name(value) + "'");
    }
  } else {
    fail(FailureKind::kType,
         "unsupported format string passed to " + python_type_name(value) + ".__format__");
  }
  const int64_t length = count_code_points(sign_text) + count_code_points(body);
  if (width < 0 || length >= width) return sign_text + body;
  const int64_t padding = width - length;
  auto repeat_fill = [&](int64_t count) {
    std::string out;
    for (int64_t k = 0; k < count; ++k) out += fill;
    return out;
  };
  switch (align) {
    case '<': return sign_text + body + repeat_fill(padding);
    case '^': return repeat_fill(padding / 2) + sign_text + body + repeat_fill(padding - padding / 2);
    case '=':
      if (numeric) return sign_text + repeat_fill(padding) + body;
      fail(FailureKind::kValue, "'=' alignment not allowed in string format specifier");
    default: return repeat_fill(padding) + sign_text + body;
  }
}

// --- numbers from text ------------------------------------------------------------------------------

namespace {

// Digits with single underscores between them; the digits without underscores, or nullopt.
std::optional<std::string> strip_underscores(std::string_view text, bool (*is_digit)(char)) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '_') {
      if (i == 0 || i + 1 == text.size() || !is_digit(text[i - 1]) || !is_digit(text[i + 1]))
        return std::nullopt;
      continue;
    }
    if (!is_digit(text[i])) return std::nullopt;
    out.push_back(text[i]);
  }
  if (out.empty()) return std::nullopt;
  return out;
}

bool is_decimal_digit(char c) { return c >= '0' && c <= '9'; }

}  // namespace

std::optional<int64_t> parse_python_int(std::string_view text, int base) {
  const std::string stripped = python_strip(text, std::nullopt, true, true);
  std::string_view body = stripped;
  bool negative = false;
  if (!body.empty() && (body[0] == '+' || body[0] == '-')) {
    negative = body[0] == '-';
    body.remove_prefix(1);
  }
  if (base == 16 || base == 8 || base == 2) {
    const char prefix = base == 16 ? 'x' : base == 8 ? 'o' : 'b';
    if (body.size() > 2 && body[0] == '0' && (body[1] == prefix || body[1] == prefix - 32)) {
      body.remove_prefix(body[2] == '_' ? 3 : 2);
    }
  } else if (base != 10) {
    fail(FailureKind::kUnsupported, "int() with base " + std::to_string(base));
  }
  std::string digits;
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (c == '_' && i > 0 && i + 1 < body.size() && body[i - 1] != '_') continue;
    int digit = -1;
    if (c >= '0' && c <= '9') digit = c - '0';
    if (c >= 'a' && c <= 'z') digit = c - 'a' + 10;
    if (c >= 'A' && c <= 'Z') digit = c - 'A' + 10;
    if (digit < 0 || digit >= base) return std::nullopt;
    digits.push_back(c);
  }
  if (digits.empty()) return std::nullopt;
  errno = 0;
  const long long value = std::strtoll(digits.c_str(), nullptr, base);
  if (errno == ERANGE) fail(FailureKind::kUnsupported, "integer beyond 64 bits");
  return negative ? -value : value;
}

std::optional<double> parse_python_float(std::string_view text) {
  const std::string stripped = python_strip(text, std::nullopt, true, true);
  std::string_view body = stripped;
  std::string sign;
  if (!body.empty() && (body[0] == '+' || body[0] == '-')) {
    sign = body.substr(0, 1);
    body.remove_prefix(1);
  }
  const std::string lower = python_lower(body);
  if (lower == "inf" || lower == "infinity") return sign == "-" ? -INFINITY : INFINITY;
  if (lower == "nan") return NAN;
  // digits [. digits] [e [sign] digits], or . digits ...; underscores only between digits.
  const size_t exponent_position = lower.find('e');
  const std::string_view mantissa = std::string_view(lower).substr(0, exponent_position);
  std::string normalized = sign;
  const size_t dot = mantissa.find('.');
  const std::string_view integer_part = mantissa.substr(0, dot);
  const std::string_view fraction_part =
      dot == std::string_view::npos ? std::string_view() : mantissa.substr(dot + 1);
  if (integer_part.empty() && fraction_part.empty()) return std::nullopt;
  if (!integer_part.empty()) {
    auto digits = strip_underscores(integer_part, is_decimal_digit);
    if (!digits) return std::nullopt;
    normalized += *digits;
  } else {
    normalized += "0";
  }
  if (dot != std::string_view::npos) {
    normalized += ".";
    if (!fraction_part.empty()) {
      auto digits = strip_underscores(fraction_part, is_decimal_digit);
      if (!digits) return std::nullopt;
      normalized += *digits;
    }
  }
  if (exponent_position != std::string::npos) {
    std::string_view exponent = std::string_view(lower).substr(exponent_position + 1);
    normalized += "e";
    if (!exponent.empty() && (exponent[0] == '+' || exponent[0] == '-')) {
      normalized += exponent[0];
      exponent.remove_prefix(1);
    }
    auto digits = strip_underscores(exponent, is_decimal_digit);
    if (!digits) return std::nullopt;
    normalized += *digits;
  }
  return std::strtod(normalized.c_str(), nullptr);
}

}  // namespace cartridge::jinja
