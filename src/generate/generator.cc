#include "generate/generator.h"

#include <c10/core/InferenceMode.h>

#include "generate/decode_batch.h"

namespace cartridge {

std::vector<GenerationResult> generate(const Model& model, const Tokenizer& tokenizer,
                                       const std::vector<GenerationRequest>& requests,
                                       const TextCallback& on_text) {
  if (requests.empty()) return {};
  c10::InferenceMode inference_mode;
  std::vector<GenerationResult> results(requests.size());
  DecodeHooks hooks;
  // A fresh batch numbers its rows 0, 1, ... in the order added: a row id is the request's index.
  if (on_text)
    hooks.on_text = [&](RowId row, const std::string& text) { on_text(static_cast<size_t>(row), text); };
  hooks.on_finished = [&](RowId row, GenerationResult result) { results[row] = std::move(result); };
  DecodeBatch batch(model, tokenizer, std::move(hooks));
  std::vector<const GenerationRequest*> pointers;
  for (const GenerationRequest& request : requests) pointers.push_back(&request);
  batch.add(pointers);
  while (!batch.empty()) batch.step();
  return results;
}

}  // namespace cartridge
