#include "tokenizer/normalizer.h"

namespace cartridge {

std::string Normalizer::apply(std::string_view text) const {
  std::string result(text);
  for (const unicode::NormalizationForm form : steps_) result = unicode::normalize(result, form);
  return result;
}

}  // namespace cartridge
