#include "selfstudy/loss.h"

#include <ATen/ATen.h>

namespace cartridge {

namespace {

// Teacher probabilities p_k [N, K] with padding entries (log-prob -inf) at exactly 0.
at::Tensor teacher_probabilities(const at::Tensor& teacher_log_probs) {
  return teacher_log_probs.to(at::kFloat).exp();  // exp(-inf) = 0
}

void check_shapes(const at::Tensor& student_logits, const at::Tensor& teacher_ids,
                  const at::Tensor& teacher_log_probs) {
  TORCH_CHECK(student_logits.dim() == 2, "student_logits must be [N, V]");
  TORCH_CHECK(teacher_ids.dim() == 2 && teacher_ids.sizes() == teacher_log_probs.sizes(),
              "teacher_ids and teacher_log_probs must both be [N, K]");
  TORCH_CHECK(teacher_ids.size(0) == student_logits.size(0), "one teacher row per student row");
}

}  // namespace

at::Tensor distillation_cross_entropy(const at::Tensor& student_logits, const at::Tensor& teacher_ids,
                                      const at::Tensor& teacher_log_probs) {
  check_shapes(student_logits, teacher_ids, teacher_log_probs);
  const at::Tensor logits = student_logits.to(at::kFloat);                                        // [N, V]
  const at::Tensor probabilities = teacher_probabilities(teacher_log_probs).to(logits.device());  // [N, K]
  // Padding ids may be anything in range; their probability is 0, so they contribute nothing.
  const at::Tensor ids = teacher_ids.to(logits.device(), at::kLong).clamp(0, logits.size(1) - 1);  // [N, K]
  const at::Tensor log_normalizer = at::logsumexp(logits, /*dim=*/{1});                            // [N]
  const at::Tensor picked = logits.gather(1, ids);                                                 // [N, K]
  return log_normalizer * probabilities.sum(1) - (probabilities * picked).sum(1);                  // [N]
}

at::Tensor truncated_kl(const at::Tensor& cross_entropy, const at::Tensor& teacher_log_probs) {
  const at::Tensor log_probs = teacher_log_probs.to(cross_entropy.device(), at::kFloat);  // [N, K]
  const at::Tensor probabilities = log_probs.exp();
  // 0 * log 0 is 0, not NaN.
  const at::Tensor negative_entropy =
      at::where(probabilities > 0, probabilities * log_probs, at::zeros_like(log_probs)).sum(1);  // [N]
  return cross_entropy + negative_entropy;
}

}  // namespace cartridge
