// The self-study distillation objective (docs/training.md, "The objective").
//
// For every target position the teacher recorded its top-k token ids and their FULL-vocabulary
// log-probabilities (not renormalised over the k). With p_k = exp(teacher_log_prob_k) and q the student's
// softmax at the position that predicts the target, the per-position cross-entropy is
//     CE = -sum_k p_k * log q(id_k)
// and the truncated KL (what held-out scoring reports, CE minus the constant teacher term) is
//     KL = sum_k p_k * (log p_k - log q(id_k)).
// The training loss is the MEAN OVER ALL TARGET POSITIONS OF THE BATCH (sum of CE / number of target
// positions), the official v1 reduction "averaged per position over the mask": a long answer weighs more
// than a short one. (PEFT's example instead averages per conversation, then over conversations.)
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace cartridge {

// Per-position cross-entropy to the truncated teacher distribution.
// student_logits [N, V] (float32, may require grad): the student's logits at the positions predicting the
// N targets. teacher_ids [N, K] int64 (any entries where teacher_log_probs is -inf are padding and
// ignored). teacher_log_probs [N, K] float32. Returns [N] float32, differentiable w.r.t. student_logits.
// Computed as lse(logits) * sum_k p_k - sum_k p_k * logits[id_k] so the [N, V] log-softmax is never
// materialised in the forward pass.
at::Tensor distillation_cross_entropy(const at::Tensor& student_logits, const at::Tensor& teacher_ids,
                                      const at::Tensor& teacher_log_probs);

// Per-position truncated KL(teacher || student) over the recorded top-k, [N] float32, from the
// cross-entropy distillation_cross_entropy gave for the same targets: CE + sum_k p_k log p_k (a padding
// entry, log-probability -inf, adds 0). Held-out scoring reports it.
at::Tensor truncated_kl(const at::Tensor& cross_entropy, const at::Tensor& teacher_log_probs);

}  // namespace cartridge
