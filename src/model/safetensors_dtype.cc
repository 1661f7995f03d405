#include "model/safetensors_dtype.h"

#include <c10/util/Exception.h>

namespace cartridge {

at::ScalarType torch_dtype(SafetensorsDType dtype) {
  switch (dtype) {
    case SafetensorsDType::F32: return at::kFloat;
    case SafetensorsDType::F16: return at::kHalf;
    case SafetensorsDType::BF16: return at::kBFloat16;
    case SafetensorsDType::F64: return at::kDouble;
    case SafetensorsDType::BOOL: return at::kBool;
    case SafetensorsDType::U8: return at::kByte;
    case SafetensorsDType::I8: return at::kChar;
    case SafetensorsDType::I16: return at::kShort;
    case SafetensorsDType::I32: return at::kInt;
    case SafetensorsDType::I64: return at::kLong;
    default: return at::ScalarType::Undefined;  // U16, U32, U64: no torch dtype here
  }
}

SafetensorsDType safetensors_dtype(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return SafetensorsDType::F32;
    case at::kHalf: return SafetensorsDType::F16;
    case at::kBFloat16: return SafetensorsDType::BF16;
    case at::kDouble: return SafetensorsDType::F64;
    case at::kBool: return SafetensorsDType::BOOL;
    case at::kByte: return SafetensorsDType::U8;
    case at::kChar: return SafetensorsDType::I8;
    case at::kShort: return SafetensorsDType::I16;
    case at::kInt: return SafetensorsDType::I32;
    case at::kLong: return SafetensorsDType::I64;
    default: TORCH_CHECK(false, "no safetensors dtype for ", dtype);
  }
}

}  // namespace cartridge
