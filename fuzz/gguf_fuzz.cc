// Fuzz target: the GGUF reader (io/gguf.h) on arbitrary file bytes: header, metadata (strings, arrays,
// nested arrays), tensor table, alignment and data offsets; then, for a file it accepts, the metadata
// accessors, dequantisation of every small tensor, and the tokenizer built from tokenizer.ggml.* metadata.
// A file the reader accepts must keep its promises: every tensor's bytes inside the file, sized as its type
// and element count say.
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "io/gguf.h"
#include "tokenizer/tokenizer.h"

namespace {
constexpr const char* kTarget = "gguf_fuzz";
constexpr int64_t kMaxDequantizedElements = 1 << 16;

template <typename Function>
void ignore_exceptions(Function function) {
  try {
    function();
  } catch (const std::exception&) {
  }
}

void visit(const std::string& key, const cartridge::GgufValue& value, int depth) {
  ignore_exceptions([&] { (void)value.as_int(key); });
  ignore_exceptions([&] { (void)value.as_double(key); });
  ignore_exceptions([&] { (void)value.as_bool(key); });
  ignore_exceptions([&] { (void)value.as_string(key); });
  ignore_exceptions([&] {
    const cartridge::GgufArray& array = value.as_array(key);
    fuzz::check(depth < 64, kTarget, "array nesting bounded");
    size_t seen = 0;
    for (const cartridge::GgufValue& element : array) {
      if (++seen > 4) break;  // a few elements of each array are enough
      visit(key, element, depth + 1);
    }
  });
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fuzz::MemoryFile file("gguf_fuzz");
  const std::string& path = file.write(data, size);
  std::vector<float> out;
  try {
    cartridge::GgufFile gguf(path);
    fuzz::check(gguf.version() == 2 || gguf.version() == 3, kTarget, "version 2 or 3");
    fuzz::check(gguf.alignment() > 0, kTarget, "alignment positive");
    // With no tensors the data section may start past the end (the padding after the table is optional).
    if (!gguf.tensors().empty())
      fuzz::check(gguf.data_offset() <= size, kTarget, "data section starts inside the file");
    for (const auto& [key, value] : gguf.metadata()) {
      fuzz::check(gguf.find(key) == &value, kTarget, "find() returns the metadata value");
      visit(key, value, 0);
    }
    const uint8_t* base = nullptr;
    for (const cartridge::GgufTensorInfo& tensor : gguf.tensors()) {
      fuzz::check(gguf.find_tensor(tensor.name) != nullptr, kTarget, "find_tensor() finds each tensor");
      fuzz::check(tensor.offset <= size - gguf.data_offset(), kTarget,
                  "tensor offset inside the data section");
      fuzz::check(tensor.byte_size <= size - gguf.data_offset() - tensor.offset, kTarget,
                  "tensor bytes inside the file");
      const int64_t elements = tensor.element_count();
      fuzz::check(elements >= 0, kTarget, "element count not negative");
      fuzz::check(cartridge::ggml_byte_size(tensor.type, elements) == tensor.byte_size, kTarget,
                  "byte size matches type and element count");
      (void)cartridge::ggml_type_name(tensor.type);
      const uint8_t* bytes = gguf.tensor_data(tensor);
      const uint8_t* tensor_base = bytes - gguf.data_offset() - tensor.offset;
      if (base == nullptr) base = tensor_base;
      fuzz::check(tensor_base == base, kTarget, "tensor_data() consistent with the offsets");
      for (uint64_t i = 0; i < tensor.byte_size; ++i)
        fuzz::check(bytes[i] == data[gguf.data_offset() + tensor.offset + i], kTarget,
                    "tensor_data() bytes are the file's");
      if (elements <= kMaxDequantizedElements) {
        out.assign(static_cast<size_t>(elements), 0.0f);
        ignore_exceptions([&] { gguf.dequantize(tensor, out.data()); });
      }
    }
    ignore_exceptions([&] {
      for (auto source :
           {cartridge::GgufPreTokenizerSource::kTransformers, cartridge::GgufPreTokenizerSource::kLlamaCpp}) {
        const cartridge::Tokenizer tokenizer = cartridge::Tokenizer::from_gguf(gguf, source);
        const std::vector<int32_t> ids = tokenizer.encode("Hello world! 123 <|im_start|>user\n\xc3\xa9\xff");
        for (int32_t id : ids)
          fuzz::check(id >= 0 && id < tokenizer.vocab_size(), kTarget, "encoded ids inside the vocabulary");
        (void)tokenizer.decode(ids, false);
        (void)tokenizer.decode(ids, true);
      }
    });
  } catch (const std::exception&) {
    // FormatError / UnsupportedError (util/error.h): the expected outcome for a bad file.
  }
  return 0;
}
