#include "tokenizer/jinja/value.h"

#include <algorithm>
#include <cmath>

#include "tokenizer/jinja/failure.h"
#include "tokenizer/jinja/python_string.h"

namespace cartridge::jinja {

std::string Callable::repr() const { return "<built-in function " + name() + ">"; }

namespace {

// loop.cycle(a, b, ...): the argument at loop.index0 modulo their count.
class LoopCycle : public Callable {
 public:
  explicit LoopCycle(int64_t index0) : index0_(index0) {}
  std::string name() const override { return "cycle"; }
  Value call(CallArguments arguments, Renderer&) const override {
    if (arguments.positional.empty()) fail(FailureKind::kType, "no items for cycling given");
    return arguments.positional[index0_ % static_cast<int64_t>(arguments.positional.size())];
  }

 private:
  int64_t index0_;
};

// loop.changed(*values): whether the values differ from the previous call in this loop.
class LoopChanged : public Callable {
 public:
  explicit LoopChanged(std::shared_ptr<std::optional<std::vector<Value>>> last) : last_(std::move(last)) {}
  std::string name() const override { return "changed"; }
  Value call(CallArguments arguments, Renderer&) const override {
    const std::vector<Value>& values = arguments.positional;
    bool same = last_->has_value() && (*last_)->size() == values.size();
    for (size_t i = 0; same && i < values.size(); ++i) same = python_equals((**last_)[i], values[i]);
    if (same) return Value::boolean(false);
    *last_ = values;
    return Value::boolean(true);
  }

 private:
  std::shared_ptr<std::optional<std::vector<Value>>> last_;
};

}  // namespace

Value loop_attribute(const LoopData& loop, const std::string& name) {
  const int64_t index0 = loop.index0;
  const int64_t length = static_cast<int64_t>(loop.items->size());
  if (name == "index") return Value::integer(index0 + 1);
  if (name == "index0") return Value::integer(index0);
  if (name == "revindex") return Value::integer(length - index0);
  if (name == "revindex0") return Value::integer(length - index0 - 1);
  if (name == "first") return Value::boolean(index0 == 0);
  if (name == "last") return Value::boolean(index0 == length - 1);
  if (name == "length") return Value::integer(length);
  if (name == "depth") return Value::integer(1);
  if (name == "depth0") return Value::integer(0);
  if (name == "previtem")
    return index0 > 0 ? (*loop.items)[index0 - 1] : Value::undefined("there is no previous item");
  if (name == "nextitem") {
    return index0 + 1 < length ? (*loop.items)[index0 + 1] : Value::undefined("there is no next item");
  }
  if (name == "cycle") return Value::callable(std::make_shared<LoopCycle>(index0));
  if (name == "changed") return Value::callable(std::make_shared<LoopChanged>(loop.last_changed));
  return Value::undefined("'LoopContext object' has no attribute '" + name + "'");
}

Value Value::undefined(std::string message, bool unsafe) {
  Value value;
  value.data_ = std::make_shared<const UndefinedData>(UndefinedData{std::move(message), unsafe});
  return value;
}

Value Value::none() {
  Value value;
  value.type_ = Type::kNone;
  return value;
}

Value Value::boolean(bool b) {
  Value value;
  value.type_ = Type::kBool;
  value.scalar_.boolean = b;
  return value;
}

Value Value::integer(int64_t i) {
  Value value;
  value.type_ = Type::kInt;
  value.scalar_.integer = i;
  return value;
}

Value Value::floating(double f) {
  Value value;
  value.type_ = Type::kFloat;
  value.scalar_.floating = f;
  return value;
}

Value Value::string(std::string s, bool markup) {
  Value value;
  value.type_ = Type::kString;
  value.markup_ = markup;
  value.data_ = std::make_shared<const std::string>(std::move(s));
  return value;
}

Value Value::sequence(std::vector<Value> items, SequenceKind kind) {
  Value value;
  value.type_ = Type::kSequence;
  auto data = std::make_shared<SequenceData>();
  data->items = std::move(items);
  data->kind = kind;
  value.data_ = std::move(data);
  return value;
}

Value Value::dict(Dict entries) {
  Value value;
  value.type_ = Type::kDict;
  value.data_ = std::make_shared<const Dict>(std::move(entries));
  return value;
}

Value Value::new_namespace(Dict attributes) {
  Value value;
  value.type_ = Type::kNamespace;
  value.data_ = std::make_shared<NamespaceData>(NamespaceData{std::move(attributes)});
  return value;
}

Value Value::loop(std::shared_ptr<const LoopData> loop) {
  Value value;
  value.type_ = Type::kLoop;
  value.data_ = std::move(loop);
  return value;
}

Value Value::callable(std::shared_ptr<const Callable> function) {
  Value value;
  value.type_ = Type::kCallable;
  value.data_ = std::move(function);
  return value;
}

double Value::as_double() const {
  switch (type_) {
    case Type::kFloat: return scalar_.floating;
    case Type::kInt: return static_cast<double>(scalar_.integer);
    case Type::kBool: return scalar_.boolean ? 1.0 : 0.0;
    default: return 0.0;
  }
}

const std::vector<Value>& Value::items() const { return sequence_data().items; }
SequenceKind Value::sequence_kind() const { return sequence_data().kind; }

const UndefinedData& Value::undefined_data() const {
  static const UndefinedData kPlain{};
  return data_ ? *static_cast<const UndefinedData*>(data_.get()) : kPlain;
}

const Value* Dict::find(const Value& key) const {
  for (const auto& [existing, value] : entries_) {
    if (python_equals(existing, key)) return &value;
  }
  return nullptr;
}

const Value* Dict::find(std::string_view key) const {
  for (const auto& [existing, value] : entries_) {
    if (existing.is_string() && existing.as_string() == key) return &value;
  }
  return nullptr;
}

void Dict::set(Value key, Value value) {
  for (auto& entry : entries_) {
    if (python_equals(entry.first, key)) {
      entry.second = std::move(value);
      return;
    }
  }
  entries_.emplace_back(std::move(key), std::move(value));
}

std::string python_type_name(const Value& value) {
  switch (value.type()) {
    case Value::Type::kUndefined: return "Undefined";
    case Value::Type::kNone: return "NoneType";
    case Value::Type::kBool: return "bool";
    case Value::Type::kInt: return "int";
    case Value::Type::kFloat: return "float";
    case Value::Type::kString: return value.is_markup() ? "Markup" : "str";
    case Value::Type::kSequence:
      switch (value.sequence_kind()) {
        case SequenceKind::kList: return "list";
        case SequenceKind::kTuple: return "tuple";
        case SequenceKind::kGenerator: return "generator";
        case SequenceKind::kDictItems: return "dict_items";
        case SequenceKind::kDictKeys: return "dict_keys";
        case SequenceKind::kDictValues: return "dict_values";
      }
      return "list";
    case Value::Type::kDict: return "dict";
    case Value::Type::kNamespace: return "Namespace";
    case Value::Type::kLoop: return "LoopContext";
    case Value::Type::kCallable: return "function";
  }
  return "object";
}

namespace {

// Values nested deeper than this are refused when printed, compared or serialised (Python itself stops
// at its recursion limit; the C++ stack must never overflow).
constexpr int kMaxValueDepth = 500;

void check_depth(int depth) {
  if (depth > kMaxValueDepth) {
    fail(FailureKind::kUnsupported,
         "values nested more than " + std::to_string(kMaxValueDepth) + " levels deep");
  }
}

std::string repr_at(const Value& value, int depth);

std::string join_reprs(const std::vector<Value>& items, int depth) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ", ";
    out += repr_at(items[i], depth);
  }
  return out;
}

std::string dict_repr(const Dict& dict, int depth) {
  std::string out = "{";
  bool first = true;
  for (const auto& [key, value] : dict.entries()) {
    if (!first) out += ", ";
    first = false;
    out += repr_at(key, depth) + ": " + repr_at(value, depth);
  }
  return out + "}";
}

}  // namespace

std::string to_python_str(const Value& value) {
  switch (value.type()) {
    case Value::Type::kUndefined: return "";
    case Value::Type::kString: return value.as_string();
    default: return to_python_repr(value);
  }
}

namespace {

std::string repr_at(const Value& value, int depth) {
  check_depth(depth);
  switch (value.type()) {
    case Value::Type::kUndefined: return "Undefined";
    case Value::Type::kNone: return "None";
    case Value::Type::kBool: return value.as_bool() ? "True" : "False";
    case Value::Type::kInt: return std::to_string(value.as_int());
    case Value::Type::kFloat: return python_float_repr(value.as_double());
    case Value::Type::kString:
      return value.is_markup() ? "Markup(" + python_string_repr(value.as_string()) + ")"
                               : python_string_repr(value.as_string());
    case Value::Type::kSequence: {
      const auto& items = value.items();
      switch (value.sequence_kind()) {
        case SequenceKind::kList: return "[" + join_reprs(items, depth + 1) + "]";
        case SequenceKind::kTuple:
          return "(" + join_reprs(items, depth + 1) + (items.size() == 1 ? ",)" : ")");
        case SequenceKind::kGenerator: return "<generator object>";
        case SequenceKind::kDictItems: return "dict_items([" + join_reprs(items, depth + 1) + "])";
        case SequenceKind::kDictKeys: return "dict_keys([" + join_reprs(items, depth + 1) + "])";
        case SequenceKind::kDictValues: return "dict_values([" + join_reprs(items, depth + 1) + "])";
      }
      return "";
    }
    case Value::Type::kDict: return dict_repr(value.as_dict(), depth + 1);
    case Value::Type::kNamespace:
      return "<Namespace " + dict_repr(value.as_namespace().attributes, depth + 1) + ">";
    case Value::Type::kLoop: {
      const LoopData& loop = value.as_loop();
      return "<LoopContext " + std::to_string(loop.index0 + 1) + "/" + std::to_string(loop.items->size()) +
             ">";
    }
    case Value::Type::kCallable: return value.as_callable().repr();
  }
  return "";
}

}  // namespace

std::string to_python_repr(const Value& value) { return repr_at(value, 0); }

bool is_truthy(const Value& value) {
  switch (value.type()) {
    case Value::Type::kUndefined:
    case Value::Type::kNone: return false;
    case Value::Type::kBool: return value.as_bool();
    case Value::Type::kInt: return value.as_int() != 0;
    case Value::Type::kFloat: return value.as_double() != 0.0;
    case Value::Type::kString: return !value.as_string().empty();
    case Value::Type::kSequence:
      // A generator object is always true in Python, even when it will yield nothing.
      return value.sequence_kind() == SequenceKind::kGenerator || !value.items().empty();
    case Value::Type::kDict: return !value.as_dict().empty();
    default: return true;
  }
}

namespace {

bool equals_at(const Value& left, const Value& right, int depth) {
  check_depth(depth);
  if (left.is_number() && right.is_number()) {
    if (left.is_float() || right.is_float()) return left.as_double() == right.as_double();
    return left.as_int() == right.as_int();
  }
  if (left.type() != right.type()) return false;
  switch (left.type()) {
    case Value::Type::kUndefined:
    case Value::Type::kNone: return true;
    case Value::Type::kString: return left.as_string() == right.as_string();
    case Value::Type::kSequence: {
      const SequenceKind kind = left.sequence_kind();
      if (kind != right.sequence_kind()) return false;
      if (kind == SequenceKind::kGenerator) return left.identity() == right.identity();
      const auto& a = left.items();
      const auto& b = right.items();
      if (a.size() != b.size()) return false;
      if (kind == SequenceKind::kDictKeys || kind == SequenceKind::kDictItems) {
        // Set-like views compare regardless of order.
        for (const Value& item : a) {
          if (std::none_of(b.begin(), b.end(),
                           [&](const Value& other) { return equals_at(item, other, depth + 1); })) {
            return false;
          }
        }
        return true;
      }
      if (kind == SequenceKind::kDictValues) return left.identity() == right.identity();
      for (size_t i = 0; i < a.size(); ++i) {
        if (!equals_at(a[i], b[i], depth + 1)) return false;
      }
      return true;
    }
    case Value::Type::kDict: {
      const Dict& a = left.as_dict();
      const Dict& b = right.as_dict();
      if (a.size() != b.size()) return false;
      for (const auto& [key, value] : a.entries()) {
        const Value* other = b.find(key);
        if (!other || !equals_at(value, *other, depth + 1)) return false;
      }
      return true;
    }
    default: return left.identity() == right.identity();
  }
}

bool less_at(const Value& left, const Value& right, int depth) {
  check_depth(depth);
  if (left.is_number() && right.is_number()) {
    if (left.is_float() || right.is_float()) return left.as_double() < right.as_double();
    return left.as_int() < right.as_int();
  }
  if (left.is_string() && right.is_string()) return left.as_string() < right.as_string();
  if (left.is_sequence() && right.is_sequence() && left.sequence_kind() == right.sequence_kind() &&
      (left.sequence_kind() == SequenceKind::kList || left.sequence_kind() == SequenceKind::kTuple)) {
    const auto& a = left.items();
    const auto& b = right.items();
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
      if (!equals_at(a[i], b[i], depth + 1)) return less_at(a[i], b[i], depth + 1);
    }
    return a.size() < b.size();
  }
  if (left.is_undefined() || right.is_undefined()) {
    fail(FailureKind::kUndefined, left.is_undefined() && !left.undefined_data().message.empty()
                                      ? left.undefined_data().message
                                      : right.undefined_data().message);
  }
  fail(FailureKind::kType, "'<' not supported between instances of '" + python_type_name(left) + "' and '" +
                               python_type_name(right) + "'");
}

}  // namespace

bool python_equals(const Value& left, const Value& right) { return equals_at(left, right, 0); }

bool python_less(const Value& left, const Value& right) { return less_at(left, right, 0); }

int64_t python_len(const Value& value) {
  switch (value.type()) {
    case Value::Type::kUndefined: return 0;
    case Value::Type::kString: return count_code_points(value.as_string());
    case Value::Type::kSequence:
      if (value.sequence_kind() != SequenceKind::kGenerator)
        return static_cast<int64_t>(value.items().size());
      break;
    case Value::Type::kDict: return static_cast<int64_t>(value.as_dict().size());
    default: break;
  }
  fail(FailureKind::kType, "object of type '" + python_type_name(value) + "' has no len()");
}

bool python_is_iterable(const Value& value) {
  switch (value.type()) {
    case Value::Type::kUndefined:
    case Value::Type::kString:
    case Value::Type::kSequence:
    case Value::Type::kDict: return true;
    default: return false;
  }
}

std::vector<Value> python_iterate(const Value& value) {
  switch (value.type()) {
    case Value::Type::kUndefined: return {};
    case Value::Type::kString: {
      std::vector<Value> characters;
      std::string character;
      for (char32_t c : decode_utf8(value.as_string())) {
        character.clear();
        append_utf8(character, c);
        characters.push_back(Value::string(character));  // iterating a Markup yields plain str
      }
      return characters;
    }
    case Value::Type::kSequence: {
      const SequenceData& data = value.sequence_data();
      if (data.kind == SequenceKind::kGenerator) {
        if (data.consumed) return {};
        data.consumed = true;
      }
      return data.items;
    }
    case Value::Type::kDict: {
      std::vector<Value> keys;
      for (const auto& entry : value.as_dict().entries()) keys.push_back(entry.first);
      return keys;
    }
    default: fail(FailureKind::kType, "'" + python_type_name(value) + "' object is not iterable");
  }
}

Value value_from_json(const nlohmann::ordered_json& json) {
  switch (json.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::none();
    case nlohmann::ordered_json::value_t::boolean: return Value::boolean(json.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value::integer(json.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const uint64_t number = json.get<uint64_t>();
      if (number > static_cast<uint64_t>(INT64_MAX)) {
        fail(FailureKind::kUnsupported, "integer " + std::to_string(number) + " does not fit in 64 bits");
      }
      return Value::integer(static_cast<int64_t>(number));
    }
    case nlohmann::ordered_json::value_t::number_float: return Value::floating(json.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value::string(json.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      std::vector<Value> items;
      items.reserve(json.size());
      for (const auto& item : json) items.push_back(value_from_json(item));
      return Value::sequence(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict dict;
      for (const auto& [key, item] : json.items()) dict.set(key, value_from_json(item));
      return Value::dict(std::move(dict));
    }
    default: fail(FailureKind::kUnsupported, "JSON binary values cannot be passed to a template");
  }
}

namespace {

std::string json_float(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
  return python_float_repr(value);
}

std::string json_key(const Value& key) {
  switch (key.type()) {
    case Value::Type::kString: return key.as_string();
    case Value::Type::kFloat: return json_float(key.as_double());
    case Value::Type::kBool: return key.as_bool() ? "true" : "false";
    case Value::Type::kNone: return "null";
    case Value::Type::kInt: return std::to_string(key.as_int());
    default:
      fail(FailureKind::kType, "keys must be str, int, float, bool or None, not " + python_type_name(key));
  }
}

void dump_json(const Value& value, const JsonDumpOptions& options, int level, std::string& out) {
  check_depth(level);
  const std::string item_separator =
      options.separators ? options.separators->first : (options.indent ? "," : ", ");
  const std::string key_separator = options.separators ? options.separators->second : ": ";
  auto newline_indent = [&](int depth) {
    std::string text = "\n";
    for (int i = 0; i < depth; ++i) text += *options.indent;
    return text;
  };
  switch (value.type()) {
    case Value::Type::kNone: out += "null"; return;
    case Value::Type::kBool: out += value.as_bool() ? "true" : "false"; return;
    case Value::Type::kInt: out += std::to_string(value.as_int()); return;
    case Value::Type::kFloat: out += json_float(value.as_double()); return;
    case Value::Type::kString: out += json_quote(value.as_string(), options.ensure_ascii); return;
    case Value::Type::kSequence: {
      if (!value.is_list_or_tuple()) break;
      const auto& items = value.items();
      if (items.empty()) {
        out += "[]";
        return;
      }
      out += "[";
      const std::string separator =
          options.indent ? item_separator + newline_indent(level + 1) : item_separator;
      if (options.indent) out += newline_indent(level + 1);
      for (size_t i = 0; i < items.size(); ++i) {
        if (i > 0) out += separator;
        dump_json(items[i], options, level + 1, out);
      }
      if (options.indent) out += newline_indent(level);
      out += "]";
      return;
    }
    case Value::Type::kDict: {
      std::vector<std::pair<Value, Value>> entries = value.as_dict().entries();
      if (entries.empty()) {
        out += "{}";
        return;
      }
      if (options.sort_keys) {
        std::stable_sort(entries.begin(), entries.end(),
                         [](const auto& a, const auto& b) { return python_less(a.first, b.first); });
      }
      out += "{";
      const std::string separator =
          options.indent ? item_separator + newline_indent(level + 1) : item_separator;
      if (options.indent) out += newline_indent(level + 1);
      bool first = true;
      for (const auto& [key, item] : entries) {
        if (!first) out += separator;
        first = false;
        out += json_quote(json_key(key), options.ensure_ascii);
        out += key_separator;
        dump_json(item, options, level + 1, out);
      }
      if (options.indent) out += newline_indent(level);
      out += "}";
      return;
    }
    default: break;
  }
  fail(FailureKind::kType, "Object of type " + python_type_name(value) + " is not JSON serializable");
}

}  // namespace

std::string python_json_dumps(const Value& value, const JsonDumpOptions& options) {
  std::string out;
  dump_json(value, options, 0, out);
  return out;
}

}  // namespace cartridge::jinja
