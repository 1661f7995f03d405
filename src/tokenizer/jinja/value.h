// The values a Jinja template computes with, modelled on the Python objects jinja2 sees: None, bool, int,
// float, str (plain or Markup), list / tuple / generator / dict views, dict (insertion ordered), jinja2's
// Namespace and Undefined, and callables (macros, builtins, bound methods). Copies are cheap: strings,
// sequences and dicts are shared immutable data; a Namespace is shared and mutable, as in Python.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cartridge::jinja {

class Value;
class Dict;
class Renderer;

// What kind of Python iterable a sequence value stands for; it decides how it prints and what it allows.
enum class SequenceKind {
  kList,        // list: [1, 2]
  kTuple,       // tuple: (1, 2)
  kGenerator,   // a generator from map/select/...: single use, no len(), no indexing
  kDictItems,   // dict.items(): prints as dict_items([...]), no indexing
  kDictKeys,    // dict.keys()
  kDictValues,  // dict.values()
};

struct SequenceData {
  std::vector<Value> items;
  SequenceKind kind = SequenceKind::kList;
  // A generator can be iterated once; later iterations see nothing (as in Python).
  mutable bool consumed = false;
};

// jinja2's Namespace: a mutable attribute bag shared by reference.
struct NamespaceData;
// jinja2's LoopContext: `loop` inside a for loop (its attributes are computed on access).
struct LoopData;
struct UndefinedData {
  std::string message;  // what jinja2's UndefinedError would say when the value is used
  bool unsafe = false;  // produced by the sandbox (SecurityError instead of UndefinedError)
};

// Arguments of a call: positional, then keyword in the order given.
struct CallArguments {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

// Something a template can call: a macro, a global function, a bound method, a loop helper.
class Callable {
 public:
  virtual ~Callable() = default;
  // The name used in messages and in repr().
  virtual std::string name() const = 0;
  virtual Value call(CallArguments arguments, Renderer& renderer) const = 0;
  // Python's repr(), e.g. "<Macro 'render'>".
  virtual std::string repr() const;
};

class Value {
 public:
  enum class Type {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kSequence,
    kDict,
    kNamespace,
    kLoop,
    kCallable
  };

  // An Undefined with no message ("'x' is undefined" messages are set by the lookup that failed).
  Value() = default;
  static Value undefined(std::string message, bool unsafe = false);
  static Value none();
  static Value boolean(bool value);
  static Value integer(int64_t value);
  static Value floating(double value);
  // A str; `markup` marks markupsafe.Markup (what |safe returns), which escapes what is added to it.
  static Value string(std::string value, bool markup = false);
  static Value sequence(std::vector<Value> items, SequenceKind kind = SequenceKind::kList);
  static Value dict(Dict entries);
  static Value new_namespace(Dict attributes);
  static Value loop(std::shared_ptr<const LoopData> loop);
  static Value callable(std::shared_ptr<const Callable> function);

  Type type() const { return type_; }
  bool is_undefined() const { return type_ == Type::kUndefined; }
  bool is_none() const { return type_ == Type::kNone; }
  bool is_bool() const { return type_ == Type::kBool; }
  bool is_int() const { return type_ == Type::kInt; }
  bool is_float() const { return type_ == Type::kFloat; }
  // int, float or bool (Python's numbers.Number).
  bool is_number() const { return type_ == Type::kInt || type_ == Type::kFloat || type_ == Type::kBool; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_markup() const { return type_ == Type::kString && markup_; }
  bool is_sequence() const { return type_ == Type::kSequence; }
  bool is_list_or_tuple() const {
    return is_sequence() &&
           (sequence_kind() == SequenceKind::kList || sequence_kind() == SequenceKind::kTuple);
  }
  bool is_dict() const { return type_ == Type::kDict; }
  bool is_namespace() const { return type_ == Type::kNamespace; }
  bool is_callable() const { return type_ == Type::kCallable; }

  bool as_bool() const { return scalar_.boolean; }
  int64_t as_int() const { return type_ == Type::kBool ? (scalar_.boolean ? 1 : 0) : scalar_.integer; }
  // int, bool or float as a double.
  double as_double() const;
  const std::string& as_string() const { return *static_cast<const std::string*>(data_.get()); }
  const std::vector<Value>& items() const;
  SequenceKind sequence_kind() const;
  const SequenceData& sequence_data() const { return *static_cast<const SequenceData*>(data_.get()); }
  const Dict& as_dict() const { return *static_cast<const Dict*>(data_.get()); }
  // A namespace is the one mutable value: {% set ns.x = ... %} changes it for every holder.
  NamespaceData& as_namespace() const { return *static_cast<NamespaceData*>(const_cast<void*>(data_.get())); }
  const LoopData& as_loop() const { return *static_cast<const LoopData*>(data_.get()); }
  const Callable& as_callable() const { return *static_cast<const Callable*>(data_.get()); }
  const UndefinedData& undefined_data() const;
  // Identity, for Python's `is` (sameas) on shared objects; null for scalars.
  const void* identity() const { return data_.get(); }

 private:
  Type type_ = Type::kUndefined;
  bool markup_ = false;
  union {
    bool boolean;
    int64_t integer;
    double floating;
  } scalar_{};
  // The shared payload, by type: std::string, SequenceData, Dict, NamespaceData, LoopData, Callable,
  // UndefinedData (optional); null for None, bool, int and float. One pointer keeps Value small.
  std::shared_ptr<const void> data_;
};

// An insertion-ordered dict with Python key equality (1, 1.0 and True are the same key). Small dicts
// (messages, tool schemas) dominate, so lookups are linear.
class Dict {
 public:
  const Value* find(const Value& key) const;
  const Value* find(std::string_view key) const;
  // Replaces the value of an existing key in place, or appends.
  void set(Value key, Value value);
  void set(std::string_view key, Value value) { set(Value::string(std::string(key)), std::move(value)); }
  const std::vector<std::pair<Value, Value>>& entries() const { return entries_; }
  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }

 private:
  std::vector<std::pair<Value, Value>> entries_;
};

struct NamespaceData {
  Dict attributes;
};

struct LoopData {
  std::shared_ptr<const std::vector<Value>> items;  // everything the loop iterates over
  int64_t index0 = 0;                               // the current iteration
  // Last values passed to loop.changed(), shared by all iterations of this loop.
  std::shared_ptr<std::optional<std::vector<Value>>> last_changed;
};

// `loop.name` for a LoopContext: index, index0, revindex, revindex0, first, last, length, depth,
// depth0, previtem, nextitem, cycle, changed; Undefined otherwise.
Value loop_attribute(const LoopData& loop, const std::string& name);

// Python's type(x).__name__: "str", "int", "NoneType", "dict", "list", "Undefined", ...
std::string python_type_name(const Value& value);
// Python's str(x) (what {{ x }} prints; Undefined prints nothing).
std::string to_python_str(const Value& value);
// Python's repr(x).
std::string to_python_repr(const Value& value);
// Python's bool(x).
bool is_truthy(const Value& value);
// Python's ==.
bool python_equals(const Value& left, const Value& right);
// Python's < (TypeError for unorderable types); used by comparisons, sort, min and max.
bool python_less(const Value& left, const Value& right);
// Python's len(); TypeError when the value has none.
int64_t python_len(const Value& value);
// Python's iter() drained into a vector (a dict yields its keys, a str its characters, Undefined nothing);
// TypeError when the value is not iterable. Marks a generator consumed.
std::vector<Value> python_iterate(const Value& value);
// Whether iter(x) works (jinja2's `iterable` test).
bool python_is_iterable(const Value& value);

// Converts JSON (order kept) to template values: objects become dicts, arrays lists.
Value value_from_json(const nlohmann::ordered_json& json);

// json.dumps options, as transformers' tojson filter exposes them.
struct JsonDumpOptions {
  bool ensure_ascii = false;
  std::optional<std::string> indent;  // unset: one line; else the indent unit ("    " for indent=4)
  std::optional<std::pair<std::string, std::string>> separators;  // (item, key) separators
  bool sort_keys = false;
};
// json.dumps(x); TypeError for values JSON cannot hold (Undefined, callables, namespaces, generators).
std::string python_json_dumps(const Value& value, const JsonDumpOptions& options);

}  // namespace cartridge::jinja
