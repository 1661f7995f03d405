#include "cartridge/python_json.h"

#include <cstdio>

#include "util/error.h"

namespace cartridge {

namespace {

void append_escape(std::string& out, uint32_t code_unit) {
  char buffer[16];
  std::snprintf(buffer, sizeof(buffer), "\\u%04x", code_unit);  // Python writes lowercase hex
  out += buffer;
}

// Python's ensure_ascii escaping: `"` and `\` and the usual control escapes by name, every other
// character outside ' '..'~' (including DEL) as \uXXXX, characters beyond the BMP as a surrogate pair.
void append_python_string(std::string& out, const std::string& text) {
  out += '"';
  for (size_t i = 0; i < text.size();) {
    const unsigned char lead = static_cast<unsigned char>(text[i]);
    uint32_t code_point = 0;
    size_t length = 1;
    if (lead < 0x80) {
      code_point = lead;
    } else if ((lead & 0xE0) == 0xC0) {
      code_point = lead & 0x1F, length = 2;
    } else if ((lead & 0xF0) == 0xE0) {
      code_point = lead & 0x0F, length = 3;
    } else if ((lead & 0xF8) == 0xF0) {
      code_point = lead & 0x07, length = 4;
    } else {
      throw InvalidArgumentError("a JSON string is not valid UTF-8 (byte " + std::to_string(i) + ")");
    }
    if (i + length > text.size()) throw InvalidArgumentError("a JSON string ends inside a UTF-8 sequence");
    for (size_t k = 1; k < length; ++k) {
      const unsigned char next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xC0) != 0x80) throw InvalidArgumentError("a JSON string is not valid UTF-8");
      code_point = (code_point << 6) | (next & 0x3F);
    }
    i += length;
    switch (code_point) {
      case '"': out += "\\\""; continue;
      case '\\': out += "\\\\"; continue;
      case '\n': out += "\\n"; continue;
      case '\r': out += "\\r"; continue;
      case '\t': out += "\\t"; continue;
      case '\b': out += "\\b"; continue;
      case '\f': out += "\\f"; continue;
      default: break;
    }
    if (code_point >= 0x20 && code_point <= 0x7E) {
      out += static_cast<char>(code_point);
    } else if (code_point < 0x10000) {
      append_escape(out, code_point);
    } else {
      const uint32_t offset = code_point - 0x10000;
      append_escape(out, 0xD800 + (offset >> 10));
      append_escape(out, 0xDC00 + (offset & 0x3FF));
    }
  }
  out += '"';
}

void dump(std::string& out, const nlohmann::json& value, int indent, int depth) {
  const std::string inner(static_cast<size_t>(indent * (depth + 1)), ' ');
  const std::string outer(static_cast<size_t>(indent * depth), ' ');
  if (value.is_object()) {
    if (value.empty()) {
      out += "{}";
      return;
    }
    // nlohmann's object is a std::map: keys in byte order, which for UTF-8 is code point order, the
    // order Python's sort_keys gives.
    out += "{\n";
    bool first = true;
    for (const auto& [key, item] : value.items()) {
      if (!first) out += ",\n";
      first = false;
      out += inner;
      append_python_string(out, key);
      out += ": ";
      dump(out, item, indent, depth + 1);
    }
    out += "\n" + outer + "}";
  } else if (value.is_array()) {
    if (value.empty()) {
      out += "[]";
      return;
    }
    out += "[\n";
    for (size_t i = 0; i < value.size(); ++i) {
      if (i > 0) out += ",\n";
      out += inner;
      dump(out, value[i], indent, depth + 1);
    }
    out += "\n" + outer + "]";
  } else if (value.is_string()) {
    append_python_string(out, value.get_ref<const std::string&>());
  } else {
    // null, booleans, integers; floats use the shortest round-trip form, as Python's repr does.
    out += value.dump();
  }
}

}  // namespace

std::string python_json_dumps(const nlohmann::json& value, int indent) {
  std::string out;
  dump(out, value, indent, 0);
  return out;
}

}  // namespace cartridge
