// PEFT's `prompt_embeddings` layout and the KV prefix the model runs with (docs/cartridge_format.md): row j
// of [P, 2*L*H_kv*D] holds slot j's keys and values of every layer, [K_0|V_0|K_1|V_1|...], each block
// head-major then channel.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "model/kv_prefix.h"
#include "model/model_config.h"

namespace cartridge {

// Splits `prompt_embeddings` [P, 2*L*H_kv*D] into per-layer keys and values [H_kv, P, D], cast to `dtype`
// on `device`. The result shares autograd history with `prompt_embeddings` (training flows through it).
KvPrefix kv_prefix_from_prompt_embeddings(const at::Tensor& prompt_embeddings, const ModelConfig& config,
                                          at::ScalarType dtype, at::Device device);

// The inverse: per-layer keys/values [H_kv, P, D] -> [P, 2*L*H_kv*D] float32 on the CPU.
at::Tensor prompt_embeddings_from_kv_prefix(const KvPrefix& prefix);

}  // namespace cartridge
