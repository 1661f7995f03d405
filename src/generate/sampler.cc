#include "generate/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "util/error.h"

namespace cartridge {

Sampler::Sampler(const SamplingOptions& options) : options_(options), random_(options.seed) {
  if (!(options.temperature >= 0.0)) {
    throw InvalidArgumentError("temperature must be >= 0 (0 = greedy), got " +
                               std::to_string(options.temperature));
  }
  if (!(options.top_p > 0.0 && options.top_p <= 1.0)) {
    throw InvalidArgumentError("top_p must be in (0, 1], got " + std::to_string(options.top_p));
  }
  if (options.top_k < 0) {
    throw InvalidArgumentError("top_k must be >= 0 (0 = off), got " + std::to_string(options.top_k));
  }
}

int64_t Sampler::sample(const at::Tensor& logits) {
  if (options_.temperature == 0.0) return logits.argmax().item<int64_t>();

  const at::Tensor scores_tensor = logits.to(at::kCPU, at::kFloat).contiguous();  // [V]
  const float* scores = scores_tensor.data_ptr<float>();
  const int64_t vocab = scores_tensor.numel();

  // Candidates sorted by decreasing score; top-k and top-p only ever keep a prefix of this order.
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  int64_t kept = vocab;
  if (options_.top_k > 0 && options_.top_k < vocab) kept = options_.top_k;
  auto by_score = [&](int32_t a, int32_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  };
  if (kept < vocab) {
    std::partial_sort(order.begin(), order.begin() + kept, order.end(), by_score);
    order.resize(kept);
  } else {
    std::sort(order.begin(), order.end(), by_score);
  }

  // Softmax over the kept candidates at this temperature (in double, max-subtracted).
  const double inverse_temperature = 1.0 / options_.temperature;
  const double max_score = scores[order.front()] * inverse_temperature;
  std::vector<double> probabilities(order.size());
  double total = 0.0;
  for (size_t i = 0; i < order.size(); ++i) {
    probabilities[i] = std::exp(scores[order[i]] * inverse_temperature - max_score);
    total += probabilities[i];
  }
  // top-p: keep the smallest prefix whose mass reaches top_p (the token that crosses it is kept).
  size_t count = order.size();
  if (options_.top_p < 1.0) {
    double mass = 0.0;
    for (size_t i = 0; i < order.size(); ++i) {
      mass += probabilities[i] / total;
      if (mass >= options_.top_p) {
        count = i + 1;
        break;
      }
    }
  }
  const double kept_total = std::accumulate(probabilities.begin(), probabilities.begin() + count, 0.0);
  std::uniform_real_distribution<double> uniform(0.0, kept_total);
  double draw = uniform(random_);
  for (size_t i = 0; i < count; ++i) {
    draw -= probabilities[i];
    if (draw <= 0.0) return order[i];
  }
  return order[count - 1];
}

std::pair<at::Tensor, at::Tensor> top_log_probabilities(const at::Tensor& logits, int64_t count) {
  const at::Tensor log_softmax = logits.to(at::kFloat).log_softmax(-1);  // [..., V]
  const auto top = log_softmax.topk(std::min<int64_t>(count, log_softmax.size(-1)), -1, /*largest=*/true,
                                    /*sorted=*/true);
  return {std::get<1>(top).to(at::kCPU, at::kInt).contiguous(), std::get<0>(top).to(at::kCPU).contiguous()};
}

}  // namespace cartridge
