// Fuzz target: chat templates (tokenizer/chat_template.h and the Jinja subset in tokenizer/jinja/): the
// input is the template text, parsed and rendered with a fixed conversation (system, user, assistant with
// reasoning and tool calls, tool result) and fixed extra variables (tools, a date, assorted values), with
// and without the generation prompt. Template errors (syntax, undefined, type, raise_exception, ...) come
// back as exceptions and are expected; a crash, sanitizer report, hang or blown memory limit is a finding.
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <exception>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/chat_template.h"

namespace {

const nlohmann::ordered_json& conversation() {
  static const nlohmann::ordered_json messages = nlohmann::ordered_json::parse(R"([
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "  Gr\u00fc\u00dfe, \u4e16\u754c! <tag> & \"q\"\n\tWhat's the weather in Paris? \ud83d\ude42"},
    {"role": "assistant", "content": "The answer is 4.", "reasoning_content": "2 plus 2 makes 4."},
    {"role": "assistant", "content": null, "tool_calls": [{"id": "call12345", "type": "function",
      "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
    {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": "{\"temperature\": 21}"},
    {"role": "user", "content": [{"type": "text", "text": "And 3+3?"}]}
  ])");
  return messages;
}

const std::vector<cartridge::ChatMessage>& plain_conversation() {
  static const std::vector<cartridge::ChatMessage> messages = {
      {"system", "You are a helpful assistant."},
      {"user", "Hello! What is 2+2?"},
      {"assistant", "2+2 equals 4."},
      {"user", "And 3+3? \xc3\xa9\xe2\x9c\x93"},
  };
  return messages;
}

cartridge::ChatTemplateOptions options(bool add_generation_prompt) {
  static const nlohmann::ordered_json extra = nlohmann::ordered_json::parse(R"({
    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
    "enable_thinking": false,
    "m": {"a": 1, "items": 2, "b": [1, 2], "n": null}, "l": [3, 1, 2], "s": "  H\u00e9llo W\u00f6rld  ",
    "words": ["b", "A", "a", "c"], "people": [{"name": "Ann", "age": 31, "tags": ["x"]}, {"name": "bob", "age": 25}],
    "n": null, "t": true, "f": 1.5, "big": 12345678901, "html": "<b>'x' & \"y\"</b>", "empty": []
  })");
  cartridge::ChatTemplateOptions result;
  result.add_generation_prompt = add_generation_prompt;
  result.extra_variables = extra;
  std::tm now{};
  now.tm_year = 2025 - 1900;
  now.tm_mon = 2;
  now.tm_mday = 5;
  now.tm_hour = 14;
  now.tm_min = 7;
  now.tm_sec = 9;
  result.now = now;
  return result;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string source(reinterpret_cast<const char*>(data), size);
  try {
    const cartridge::ChatTemplate chat_template(source, "<s>", "</s>", "fuzz template");
    for (bool generation_prompt : {false, true}) {
      try {
        (void)chat_template.render_json(conversation(), options(generation_prompt));
      } catch (const std::exception&) {
      }
      try {
        (void)chat_template.render(plain_conversation(), options(generation_prompt));
      } catch (const std::exception&) {
      }
    }
  } catch (const std::exception&) {
    // A template that does not parse (FormatError / UnsupportedError): the expected outcome.
  }
  return 0;
}
