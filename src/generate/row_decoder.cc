#include "generate/row_decoder.h"

#include <algorithm>

#include <ATen/ATen.h>

#include "util/error.h"

namespace cartridge {

void check_generation_request(const ModelConfig& config, const GenerationRequest& request) {
  if (request.prompt_ids.empty()) throw InvalidArgumentError("the prompt is empty: give at least one token");
  if (request.max_new_tokens < 0) throw InvalidArgumentError("max_new_tokens must be >= 0");
  const int64_t prefix_length = request.prefix_length();
  const int64_t needed =
      prefix_length + static_cast<int64_t>(request.prompt_ids.size()) + request.max_new_tokens;
  if (needed > config.max_position_embeddings) {
    throw InvalidArgumentError(
        "cartridge (" + std::to_string(prefix_length) + ") + prompt (" +
        std::to_string(request.prompt_ids.size()) + ") + max_new_tokens (" +
        std::to_string(request.max_new_tokens) + ") tokens exceed the model's context of " +
        std::to_string(config.max_position_embeddings) + " (shorten the prompt or lower max_new_tokens)");
  }
}

RowDecoder::RowDecoder(const GenerationRequest& request, const Tokenizer& tokenizer)
    : request_(&request),
      tokenizer_(&tokenizer),
      sampler_(request.sampling),
      decoder_(tokenizer, /*skip_special_tokens=*/true),
      stop_matcher_(request.stop_strings) {
  result_.prompt_tokens = static_cast<int64_t>(request.prompt_ids.size());
  if (request.max_new_tokens == 0) finish("length");
}

bool RowDecoder::is_stop_token(int32_t token) const {
  if (request_->stop_at_eos && tokenizer_->eos_token_id() && token == *tokenizer_->eos_token_id())
    return true;
  return std::find(request_->stop_token_ids.begin(), request_->stop_token_ids.end(), token) !=
         request_->stop_token_ids.end();
}

std::string RowDecoder::finish(const std::string& reason) {
  std::string tail = stop_matcher_.stopped() ? "" : stop_matcher_.push(decoder_.flush());
  tail += stop_matcher_.flush();
  result_.text += tail;
  result_.finish_reason = reason;
  finished_ = true;
  return tail;
}

int64_t RowDecoder::tokens_left() const {
  return finished_ ? 0 : request_->max_new_tokens - static_cast<int64_t>(result_.token_ids.size());
}

std::string RowDecoder::accept(int32_t token) {
  TORCH_CHECK(!finished_, "RowDecoder::accept on a finished row");
  if (is_stop_token(token)) {
    result_.stop_token_id = token;
    return finish("stop");
  }
  result_.token_ids.push_back(token);
  std::string visible = stop_matcher_.push(decoder_.push(token));
  result_.text += visible;
  if (stop_matcher_.stopped()) return visible + finish("stop");
  if (static_cast<int64_t>(result_.token_ids.size()) >= request_->max_new_tokens)
    return visible + finish("length");
  return visible;
}

}  // namespace cartridge
