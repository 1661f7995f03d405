#include "tokenizer/jinja/arguments.h"

#include "tokenizer/jinja/failure.h"

namespace cartridge::jinja {

BoundArguments::BoundArguments(std::string_view function, CallArguments arguments,
                               std::initializer_list<std::string_view> parameters, size_t required)
    : values_(parameters.size()) {
  const std::vector<std::string_view> names(parameters);
  if (arguments.positional.size() > names.size()) {
    fail(FailureKind::kType, std::string(function) + "() takes at most " + std::to_string(names.size()) +
                                 " argument(s) (" + std::to_string(arguments.positional.size()) + " given)");
  }
  for (size_t i = 0; i < arguments.positional.size(); ++i) values_[i] = std::move(arguments.positional[i]);
  for (auto& [key, value] : arguments.keyword) {
    size_t index = 0;
    while (index < names.size() && names[index] != key) ++index;
    if (index == names.size()) {
      fail(FailureKind::kType, std::string(function) + "() got an unexpected keyword argument '" + key + "'");
    }
    if (values_[index]) {
      fail(FailureKind::kType, std::string(function) + "() got multiple values for argument '" + key + "'");
    }
    values_[index] = std::move(value);
  }
  for (size_t i = 0; i < required; ++i) {
    if (!values_[i]) {
      fail(FailureKind::kType,
           std::string(function) + "() missing required argument '" + std::string(names[i]) + "'");
    }
  }
}

const Value* BoundArguments::get(size_t index) const {
  return index < values_.size() && values_[index] ? &*values_[index] : nullptr;
}

Value BoundArguments::get_or(size_t index, Value fallback) const {
  const Value* value = get(index);
  return value ? *value : std::move(fallback);
}

int64_t integer_argument(const Value& value, std::string_view what) {
  if (value.is_int() || value.is_bool()) return value.as_int();
  fail(FailureKind::kType, std::string(what) + " must be an integer, not '" + python_type_name(value) + "'");
}

const std::string& string_argument(const Value& value, std::string_view what) {
  if (value.is_string()) return value.as_string();
  fail(FailureKind::kType, std::string(what) + " must be str, not " + python_type_name(value));
}

}  // namespace cartridge::jinja
