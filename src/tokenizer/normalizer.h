// The normalizer step of an HF tokenizer: applied to each piece of text between added tokens, before
// pre-tokenization. Byte-level BPE models use none or Unicode NFC; the other normalization forms come free.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/unicode.h"

namespace cartridge {

class Normalizer {
 public:
  // Appends a step; steps run in order (an HF "Sequence" normalizer).
  void add_step(unicode::NormalizationForm form) { steps_.push_back(form); }
  bool empty() const { return steps_.empty(); }

  // `text` (valid UTF-8) after every step.
  std::string apply(std::string_view text) const;

 private:
  std::vector<unicode::NormalizationForm> steps_;
};

}  // namespace cartridge
