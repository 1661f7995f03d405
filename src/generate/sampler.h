// Token sampling, with the semantics of transformers' logits processors: temperature, then top-k, then
// top-p (nucleus, keeping at least one token), then a draw from the softmax. Temperature 0 is greedy
// (argmax, ties to the lowest id as torch.argmax). Each sampler owns its seeded random stream, so a
// request's tokens do not depend on what else shares its batch.
#pragma once

#include <cstdint>
#include <random>
#include <utility>

#include <ATen/ATen.h>

namespace cartridge {

struct SamplingOptions {
  double temperature = 0.0;  // 0 = greedy
  double top_p = 1.0;        // 1 = off
  int64_t top_k = 0;         // 0 = off
  uint64_t seed = 0;
};

class Sampler {
 public:
  // Throws InvalidArgumentError for a negative temperature, top_p outside (0, 1] or a negative top_k.
  explicit Sampler(const SamplingOptions& options);

  // Picks the next token from `logits` [V] (any float dtype, any device).
  int64_t sample(const at::Tensor& logits);

 private:
  SamplingOptions options_;
  std::mt19937_64 random_;
};

// The `count` most probable tokens of each row of `logits` [..., V] under the full-vocabulary log-softmax at
// temperature 1, sorted by decreasing probability: ids [..., K] int32 and log-probabilities [..., K]
// float32, contiguous on the CPU (K = min(count, V)). Self-study records the teacher's targets with it.
std::pair<at::Tensor, at::Tensor> top_log_probabilities(const at::Tensor& logits, int64_t count);

}  // namespace cartridge
