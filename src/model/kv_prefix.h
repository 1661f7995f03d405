// A KV prefix: keys and values of P slots per layer that real tokens attend to before their own, what a
// cartridge becomes at run time (docs/positions_and_masks.md). Stored keys are post-RoPE (the slot at
// index j was rotated for position j when it came from a prefill); tokens that follow go at positions
// P + i. Nothing re-rotates a prefix.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

namespace cartridge {

struct KvPrefix {
  std::vector<at::Tensor> keys;    // per layer [H_kv, P, D], model dtype and device
  std::vector<at::Tensor> values;  // per layer [H_kv, P, D]

  int64_t length() const { return keys.empty() ? 0 : keys.front().size(1); }  // P, in slots
  int64_t num_layers() const { return static_cast<int64_t>(keys.size()); }

  // The first `slots` slots (views, no copy); 0 <= slots <= length().
  KvPrefix first(int64_t slots) const;
};

// The prefixes' slots one after another in one new prefix (a copy; null or empty parts skipped): what a
// composition of cartridges holds. Throws MismatchError when the parts have different layer counts.
KvPrefix concatenate_prefixes(const std::vector<std::shared_ptr<const KvPrefix>>& parts);

}  // namespace cartridge
