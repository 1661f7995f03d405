#include "model/quantized_kernels.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include "ggml-cpu.h"
#include "ggml.h"
#include "util/error.h"

#ifndef CARTRIDGE_GGML_LIB_DIR
#error "CARTRIDGE_GGML_LIB_DIR (the folder of ggml's libraries) is set by CMakeLists.txt"
#endif

namespace cartridge {
namespace {

// ggml's x86-64 variants from the lowest instruction-set level to the highest (scripts/build_ggml.sh
// builds each). ggml_backend_score() of a variant is 0 where the CPU lacks one of its instructions.
const char* const kVariantLevels[] = {"x64",      "sse42",   "sandybridge", "haswell",
                                      "skylakex", "icelake", "alderlake",   "sapphirerapids"};

// The GGUF types we multiply in their stored form. Others (F16, BF16, IQ*, ...) are converted to the
// model's dtype at load, as before.
constexpr ggml_type kQuantizedTypes[] = {GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1,
                                         GGML_TYPE_Q8_0, GGML_TYPE_Q2_K, GGML_TYPE_Q3_K, GGML_TYPE_Q4_K,
                                         GGML_TYPE_Q5_K, GGML_TYPE_Q6_K};

bool is_listed_type(uint32_t type) {
  return std::find(std::begin(kQuantizedTypes), std::end(kQuantizedTypes), static_cast<ggml_type>(type)) !=
         std::end(kQuantizedTypes);
}

// A row of weights is reused from the L1 cache for every token when the rows are visited in tiles of this
// many (a tile of Q4_1 rows of 1536 columns is 16 x 960 bytes).
constexpr int64_t kRowsPerTile = 16;

}  // namespace

struct QuantizedKernels::Library {
  void* handle = nullptr;
  const ggml_type_traits_cpu* (*type_traits)(ggml_type) = nullptr;

  const ggml_type_traits_cpu& traits(ggml_type type) const { return *type_traits(type); }
};

namespace {

struct LoadedVariants {
  std::mutex mutex;
  // name -> the variant, or null when it is installed but this CPU cannot run it (or it failed to load).
  std::map<std::string, std::unique_ptr<QuantizedKernels>> by_name;
  std::map<std::string, std::string> why_not;  // name -> why it is null
};

LoadedVariants& loaded_variants() {
  static LoadedVariants variants;
  return variants;
}

}  // namespace

std::string QuantizedKernels::library_folder() {
  const char* folder = std::getenv("CARTRIDGE_GGML_LIB_DIR");
  return folder != nullptr && *folder != '\0' ? folder : CARTRIDGE_GGML_LIB_DIR;
}

const QuantizedKernels& QuantizedKernels::variant(const std::string& name) {
  LoadedVariants& variants = loaded_variants();
  std::lock_guard<std::mutex> lock(variants.mutex);
  auto found = variants.by_name.find(name);
  if (found == variants.by_name.end()) {
    std::unique_ptr<QuantizedKernels> kernels;
    std::string why_not;
    const std::string path = library_folder() + "/libggml-cpu-" + name + ".so";
    // RTLD_LOCAL: every variant exports the same symbols; each is reached only through its own handle.
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      why_not = "cannot load " + path + " (" + dlerror() + "); run scripts/build_ggml.sh";
    } else {
      auto score = reinterpret_cast<int (*)()>(dlsym(handle, "ggml_backend_score"));
      auto init = reinterpret_cast<void (*)()>(dlsym(handle, "ggml_cpu_init"));
      auto type_traits = reinterpret_cast<const ggml_type_traits_cpu* (*)(ggml_type)>(
          dlsym(handle, "ggml_get_type_traits_cpu"));
      if (score == nullptr || init == nullptr || type_traits == nullptr) {
        why_not = path +
                  " is not one of ggml's CPU variants (no ggml_backend_score, ggml_cpu_init or "
                  "ggml_get_type_traits_cpu)";
        dlclose(handle);
      } else if (score() == 0) {
        why_not = "this CPU lacks instructions the \"" + name + "\" kernels use";
        dlclose(handle);
      } else {
        init();  // ggml's half-precision tables, which the x64 variant's kernels read
        auto* library = new Library{handle, type_traits};  // lives as long as the process
        kernels.reset(new QuantizedKernels(name, library));
      }
    }
    variants.why_not[name] = why_not;
    found = variants.by_name.emplace(name, std::move(kernels)).first;
  }
  if (found->second == nullptr) {
    throw UnsupportedError("the ggml CPU kernels \"" + name + "\" are not usable: " + variants.why_not[name]);
  }
  return *found->second;
}

std::vector<std::string> QuantizedKernels::runnable_variants() {
  std::vector<std::string> names;
  for (const char* name : kVariantLevels) {
    try {
      variant(name);
      names.push_back(name);
    } catch (const UnsupportedError&) {
    }
  }
  return names;
}

const QuantizedKernels& QuantizedKernels::for_this_cpu() {
  static const QuantizedKernels* chosen = [] {
    const char* requested = std::getenv("CARTRIDGE_CPU_ISA");
    if (requested != nullptr && *requested != '\0') return &variant(requested);
    const std::vector<std::string> names = runnable_variants();
    if (names.empty()) {
      throw UnsupportedError("no ggml CPU kernels could be loaded from " + library_folder() +
                             "; run scripts/build_ggml.sh (scripts/setup.sh does)");
    }
    return &variant(names.back());  // the highest level this CPU runs
  }();
  return *chosen;
}

bool QuantizedKernels::supports(uint32_t ggml_type_number) const {
  if (!is_listed_type(ggml_type_number)) return false;
  const ggml_type type = static_cast<ggml_type>(ggml_type_number);
  const ggml_type_traits_cpu& weight = library_->traits(type);
  return weight.vec_dot != nullptr && library_->traits(weight.vec_dot_type).from_float != nullptr;
}

int64_t QuantizedKernels::row_bytes(uint32_t ggml_type_number, int64_t columns) {
  const ggml_type type = static_cast<ggml_type>(ggml_type_number);
  TORCH_CHECK(columns % ggml_blck_size(type) == 0, "a row of ", columns, " values is not whole ",
              ggml_type_name(type), " blocks of ", ggml_blck_size(type));
  return static_cast<int64_t>(ggml_row_size(type, columns));
}

void QuantizedKernels::multiply(uint32_t ggml_type_number, const uint8_t* weight, int64_t rows,
                                int64_t columns, const float* input, int64_t tokens, float* output) const {
  TORCH_CHECK(supports(ggml_type_number), "QuantizedKernels: no kernel for GGUF type ", ggml_type_number);
  const ggml_type type = static_cast<ggml_type>(ggml_type_number);
  const ggml_type_traits_cpu& weight_traits = library_->traits(type);
  const ggml_type dot_type = weight_traits.vec_dot_type;
  const int64_t weight_row_bytes = row_bytes(type, columns);
  const int64_t input_row_bytes = row_bytes(dot_type, columns);

  // The activations rounded to 8-bit blocks of the weight type's dot type: [tokens, input_row_bytes].
  std::vector<uint8_t> quantized_input(static_cast<size_t>(tokens * input_row_bytes));
  const ggml_from_float_t quantize = library_->traits(dot_type).from_float;
  at::parallel_for(0, tokens, 1, [&](int64_t begin, int64_t end) {
    for (int64_t token = begin; token < end; ++token) {
      quantize(input + token * columns, quantized_input.data() + token * input_row_bytes, columns);
    }
  });

  const ggml_vec_dot_t dot = weight_traits.vec_dot;
  const int columns_int = static_cast<int>(columns);
  at::parallel_for(0, rows, kRowsPerTile, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; tile += kRowsPerTile) {
      const int64_t tile_end = std::min(tile + kRowsPerTile, end);
      for (int64_t token = 0; token < tokens; ++token) {
        const uint8_t* token_input = quantized_input.data() + token * input_row_bytes;
        float* token_output = output + token * rows;
        for (int64_t row = tile; row < tile_end; ++row) {
          // nrc = 1: one weight row against one activation row (the strides are then unused).
          dot(columns_int, token_output + row, 0, weight + row * weight_row_bytes, 0, token_input, 0, 1);
        }
      }
    }
  });
}

void QuantizedKernels::dequantize(uint32_t ggml_type_number, const uint8_t* weight, int64_t rows,
                                  int64_t columns, float* output) {
  const ggml_type type = static_cast<ggml_type>(ggml_type_number);
  const ggml_to_float_t to_float = ggml_get_type_traits(type)->to_float;
  TORCH_CHECK(to_float != nullptr, "QuantizedKernels: ggml cannot dequantise ", ggml_type_name(type));
  const int64_t weight_row_bytes = row_bytes(type, columns);
  at::parallel_for(0, rows, kRowsPerTile, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      to_float(weight + row * weight_row_bytes, output + row * columns, columns);
    }
  });
}

}  // namespace cartridge
