// Fuzz target: the self-study dataset file (selfstudy/dataset.h), read from arbitrary bytes as a file. A
// file the reader accepts must survive being written again: its header line and every conversation's line
// read back to the same bytes, the answer-only copy of a conversation writes, and the vocabulary and
// framing checks may refuse it only with the project's errors. Anything else thrown is a finding.
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "selfstudy/dataset.h"
#include "util/error.h"

namespace {
constexpr const char* kTarget = "dataset_fuzz";
constexpr int64_t kVocabularySize = 49152;  // the default model's
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fuzz::MemoryFile file("dataset.jsonl");
  const std::string& path = file.write(data, size);
  cartridge::Dataset dataset;
  try {
    dataset = cartridge::read_dataset(path);
  } catch (const cartridge::Error&) {
    return 0;  // FormatError / UnsupportedError / FileNotFoundError: the expected outcome for a bad file.
  }
  try {
    cartridge::check_token_ids(dataset, kVocabularySize);
    cartridge::dataset_framing(dataset.header);
  } catch (const cartridge::Error&) {
  }
  const std::string header_line = cartridge::dataset_header_line(dataset.header);
  const cartridge::DatasetHeader header_again =
      cartridge::DatasetHeader::from_json(nlohmann::json::parse(header_line), "written header");
  fuzz::check(cartridge::dataset_header_line(header_again) == header_line, kTarget,
              "the written header reads back unchanged");
  for (const cartridge::Conversation& conversation : dataset.conversations) {
    const std::string line = cartridge::conversation_to_json_line(conversation);
    const cartridge::Conversation again = cartridge::conversation_from_json_line(
        line, dataset.header.top_k, dataset.header.version, "written line");
    fuzz::check(cartridge::conversation_to_json_line(again) == line, kTarget,
                "a written conversation reads back unchanged");
    const std::string answers =
        cartridge::conversation_to_json_line(cartridge::with_answer_targets_only(conversation));
    fuzz::check(!answers.empty(), kTarget, "the answer-only copy writes");
  }
  return 0;
}
