// Helpers shared by the tokenizer tests: reading the oracle fixtures written by
// tests/fixtures/make_tokenizer.py and comparing a Tokenizer with them.
#pragma once

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_support.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace cartridge::testing {

inline nlohmann::json read_json_fixture(const std::string& relative) {
  const std::string path = fixture_path(relative);
  std::ifstream stream(path, std::ios::binary);
  std::stringstream buffer;
  buffer << stream.rdbuf();
  return nlohmann::json::parse(buffer.str());
}

inline const std::vector<std::string>& tokenizer_strings() {
  static const std::vector<std::string> strings =
      read_json_fixture("tokenizer/strings.json").get<std::vector<std::string>>();
  return strings;
}

// Printable form of a test string for failure messages (JSON-escaped, cut short).
inline std::string shown(const std::string& text) {
  std::string escaped = nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (escaped.size() > 120) escaped = escaped.substr(0, 117) + "...";
  return escaped;
}

inline std::string shown(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size() && i < 40; ++i) out += (i ? " " : "") + std::to_string(ids[i]);
  if (ids.size() > 40) out += " ...";
  return out + "]";
}

// Compares `tokenizer` with one expected_<name>.json on every string: ids with and without special tokens,
// decode (skip_special_tokens false and true), streaming decode, the round trip where HF's holds, and the
// decode of random id sequences. Reports the first few differences of each kind and their count.
inline void expect_matches_oracle(const Tokenizer& tokenizer, const nlohmann::json& expected) {
  const std::vector<std::string>& strings = tokenizer_strings();
  const auto ids = expected["ids"].get<std::vector<std::vector<int32_t>>>();
  const auto ids_plain = expected["ids_plain"].get<std::vector<std::vector<int32_t>>>();
  const auto decoded = expected["decoded"].get<std::vector<std::string>>();
  const auto decoded_skip = expected["decoded_skip_special"].get<std::vector<std::string>>();
  ASSERT_EQ(ids.size(), strings.size());
  size_t failures[6] = {};
  auto report = [&](size_t kind, const std::string& message) {
    if (failures[kind]++ < 5) ADD_FAILURE() << expected["name"].get<std::string>() << ": " << message;
  };
  for (size_t i = 0; i < strings.size(); ++i) {
    const std::vector<int32_t> ours = tokenizer.encode(strings[i]);
    if (ours != ids[i])
      report(0, "ids of " + shown(strings[i]) + ": ours " + shown(ours) + ", HF " + shown(ids[i]));
    const std::vector<int32_t> ours_plain = tokenizer.encode(strings[i], false);
    if (ours_plain != ids_plain[i]) {
      report(1, "ids without special tokens of " + shown(strings[i]) + ": ours " + shown(ours_plain) +
                    ", HF " + shown(ids_plain[i]));
    }
    const std::string text = tokenizer.decode(ids[i]);
    if (text != decoded[i])
      report(2, "decode of " + shown(ids[i]) + ": ours " + shown(text) + ", HF " + shown(decoded[i]));
    const std::string text_skip = tokenizer.decode(ids[i], true);
    if (text_skip != decoded_skip[i]) {
      report(3, "decode(skip_special_tokens) of " + shown(ids[i]) + ": ours " + shown(text_skip) + ", HF " +
                    shown(decoded_skip[i]));
    }
    // Streaming: every piece is whole UTF-8 characters, and the pieces add up to decode().
    StreamingDecoder stream(tokenizer, false);
    std::string streamed;
    for (const int32_t id : ids[i]) {
      const std::string piece = stream.push(id);
      if (!unicode::is_valid_utf8(piece))
        report(4, "streaming piece with half a character: " + shown(ids[i]));
      streamed += piece;
    }
    streamed += stream.flush();
    if (streamed != decoded[i]) report(4, "streaming decode of " + shown(ids[i]) + ": " + shown(streamed));
    // decode(encode(x)) == x wherever HF's round trip holds (it does not where NFC changes the text).
    if (decoded[i] == strings[i] && tokenizer.decode(tokenizer.encode(strings[i])) != strings[i]) {
      report(5, "round trip of " + shown(strings[i]));
    }
  }
  EXPECT_EQ(failures[0], 0u) << "strings whose ids differ from HF, of " << strings.size();
  EXPECT_EQ(failures[1], 0u) << "strings whose ids without special tokens differ";
  EXPECT_EQ(failures[2], 0u) << "decodes that differ";
  EXPECT_EQ(failures[3], 0u) << "decodes with skip_special_tokens that differ";
  EXPECT_EQ(failures[4], 0u) << "streaming decodes that differ";
  EXPECT_EQ(failures[5], 0u) << "round trips that fail";

  const auto random_ids = expected["random_ids"].get<std::vector<std::vector<int32_t>>>();
  const auto random_decoded = expected["random_decoded"].get<std::vector<std::string>>();
  const auto random_decoded_skip = expected["random_decoded_skip_special"].get<std::vector<std::string>>();
  for (size_t i = 0; i < random_ids.size(); ++i) {
    EXPECT_EQ(tokenizer.decode(random_ids[i]), random_decoded[i]) << "random ids " << shown(random_ids[i]);
    EXPECT_EQ(tokenizer.decode(random_ids[i], true), random_decoded_skip[i])
        << "random ids " << shown(random_ids[i]);
    StreamingDecoder stream(tokenizer, true);
    std::string streamed;
    for (const int32_t id : random_ids[i]) streamed += stream.push(id);
    streamed += stream.flush();
    EXPECT_EQ(streamed, random_decoded_skip[i]) << "streaming random ids " << shown(random_ids[i]);
  }

  const nlohmann::json& info = expected["info"];
  EXPECT_EQ(tokenizer.vocab_size(), info["vocab_size"].get<int64_t>());
  for (const int32_t id : info["special_ids"].get<std::vector<int32_t>>())
    EXPECT_TRUE(tokenizer.is_special(id)) << id;
  if (info.contains("bos_token")) {
    auto optional_id = [](const nlohmann::json& value) {
      return value.is_null() ? std::optional<int32_t>() : std::optional<int32_t>(value.get<int32_t>());
    };
    EXPECT_EQ(tokenizer.bos_token(), info["bos_token"].get<std::string>());
    EXPECT_EQ(tokenizer.eos_token(), info["eos_token"].get<std::string>());
    EXPECT_EQ(tokenizer.pad_token(), info["pad_token"].get<std::string>());
    EXPECT_EQ(tokenizer.bos_token_id(), optional_id(info["bos_token_id"]));
    EXPECT_EQ(tokenizer.eos_token_id(), optional_id(info["eos_token_id"]));
    EXPECT_EQ(tokenizer.pad_token_id(), optional_id(info["pad_token_id"]));
    EXPECT_EQ(tokenizer.unk_token_id(), optional_id(info["unk_token_id"]));
    EXPECT_EQ(tokenizer.chat_template(), info["chat_template"].get<std::string>());
  }
}

}  // namespace cartridge::testing
