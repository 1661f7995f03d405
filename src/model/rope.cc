#include "model/rope.h"

#include <cmath>

#include <ATen/ATen.h>

namespace cartridge {

at::Tensor rope_inverse_frequencies(const ModelConfig& config, const at::Tensor& frequency_factors) {
  const int64_t dim = config.head_dim;
  // Same float32 operations, in the same order, as transformers, so the angles agree to the last bit.
  const at::Tensor exponents = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
  at::Tensor inverse = at::reciprocal(at::pow(config.rope_theta, exponents));  // [D / 2]
  if (config.rope_scaling.type == "llama3") {
    const RopeScaling& scaling = config.rope_scaling;
    const double old_context = static_cast<double>(scaling.original_max_position_embeddings);  // tokens
    const double low_freq_wavelength = old_context / scaling.low_freq_factor;                  // tokens
    const double high_freq_wavelength = old_context / scaling.high_freq_factor;                // tokens
    const at::Tensor wavelength = at::reciprocal(inverse) * (2 * M_PI);
    // Long wavelengths are slowed down by `factor`, short ones kept, the band between interpolated.
    at::Tensor scaled = at::where(wavelength > low_freq_wavelength, inverse / scaling.factor, inverse);
    const at::Tensor smooth = (at::reciprocal(wavelength) * old_context - scaling.low_freq_factor) /
                              (scaling.high_freq_factor - scaling.low_freq_factor);
    const at::Tensor smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled;
    const at::Tensor is_medium =
        (wavelength >= high_freq_wavelength).logical_and(wavelength <= low_freq_wavelength);
    inverse = at::where(is_medium, smoothed, scaled);
  }
  if (frequency_factors.defined()) {
    TORCH_CHECK(frequency_factors.numel() == dim / 2, "rope frequency factors: expected ", dim / 2,
                " values, got ", frequency_factors.numel());
    inverse = inverse / frequency_factors.to(at::kFloat).reshape({dim / 2}).cpu();
  }
  return inverse.contiguous();
}

std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& positions,
                                               const at::Tensor& inverse_frequencies, at::ScalarType dtype) {
  const at::Tensor angles = positions.to(at::kFloat).unsqueeze(-1) * inverse_frequencies;  // [B, T, D / 2]
  const at::Tensor doubled = at::cat({angles, angles}, -1).unsqueeze(1);                   // [B, 1, T, D]
  return {doubled.cos().to(dtype), doubled.sin().to(dtype)};
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const at::Tensor first = x.narrow(-1, 0, half);
  const at::Tensor second = x.narrow(-1, half, half);
  const at::Tensor rotated = at::cat({-second, first}, -1);  // rotate_half(x)
  return x * cos + rotated * sin;
}

at::Tensor rotate_positions(const at::Tensor& x, int64_t delta, const at::Tensor& inverse_frequencies) {
  const int64_t tokens = x.size(-2);
  const at::Tensor positions =
      at::full({1, tokens}, delta, at::TensorOptions().dtype(at::kLong).device(x.device()));
  const auto [cos, sin] = rope_cos_sin(positions, inverse_frequencies.to(x.device()), x.scalar_type());
  return apply_rope(x, cos[0][0], sin[0][0]);  // cos/sin [T, D] broadcast over x's leading dimensions
}

}  // namespace cartridge
