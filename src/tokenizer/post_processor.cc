#include "tokenizer/post_processor.h"

namespace cartridge {

std::vector<int32_t> PostProcessor::apply(std::vector<int32_t> ids) const {
  for (const std::vector<Item>& items : templates_) {
    std::vector<int32_t> result;
    result.reserve(ids.size() + 4);
    for (const Item& item : items) {
      const std::vector<int32_t>& part = item.is_sequence ? ids : item.ids;
      result.insert(result.end(), part.begin(), part.end());
    }
    ids = std::move(result);
  }
  return ids;
}

std::vector<int32_t> PostProcessor::prefix() const {
  // The sequence is marked by a sentinel that no id can equal; what precedes it is the prefix.
  const std::vector<int32_t> marked = apply({-1});
  std::vector<int32_t> result;
  for (const int32_t id : marked) {
    if (id == -1) break;
    result.push_back(id);
  }
  return result;
}

std::vector<int32_t> PostProcessor::suffix() const {
  const std::vector<int32_t> marked = apply({-1});
  std::vector<int32_t> result;
  bool after = false;
  for (const int32_t id : marked) {
    if (after) result.push_back(id);
    if (id == -1) after = true;
  }
  return result;
}

}  // namespace cartridge
