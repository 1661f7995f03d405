// The post-processor of an HF tokenizer, reduced to what it does to the ids of one sequence when special
// tokens are added: templates such as "<bos> $A" or "$A <eos>" (TemplateProcessing, RobertaProcessing,
// BertProcessing, Sequence). ByteLevel post-processing only trims offsets, so it changes no id.
#pragma once

#include <cstdint>
#include <vector>

namespace cartridge {

class PostProcessor {
 public:
  // One element of a single-sequence template: the ids of a special token, or the sequence itself.
  struct Item {
    bool is_sequence = false;
    std::vector<int32_t> ids;  // when !is_sequence
  };
  // Adds a template; templates apply in order, each to the result of the previous (an HF "Sequence").
  void add_template(std::vector<Item> items) { templates_.push_back(std::move(items)); }
  void clear() { templates_.clear(); }

  // The ids with every template applied.
  std::vector<int32_t> apply(std::vector<int32_t> ids) const;
  // Ids added before the sequence and after it (for callers that must know, e.g. truncation).
  std::vector<int32_t> prefix() const;
  std::vector<int32_t> suffix() const;

 private:
  std::vector<std::vector<Item>> templates_;
};

}  // namespace cartridge
