// The one mapping between safetensors' stored dtypes and libtorch's, for every layer that reads or writes
// safetensors tensors with libtorch (model weights, adapters, checkpoints, fingerprints).
#pragma once

#include <c10/core/ScalarType.h>

#include "io/safetensors.h"

namespace cartridge {

// The torch dtype of a stored dtype; at::ScalarType::Undefined for the unsigned types torch lacks (U16,
// U32, U64). Callers check for the dtypes they accept and name them in their error.
at::ScalarType torch_dtype(SafetensorsDType dtype);

// The stored dtype of a torch dtype (float, bool and signed integer types, uint8); TORCH_CHECK otherwise.
SafetensorsDType safetensors_dtype(at::ScalarType dtype);

}  // namespace cartridge
