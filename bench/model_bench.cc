// Model forward speed: prefill tokens/s and decode tokens/s (batch 1 and 8) for a model in a
// given dtype on a given device. Prints one JSON object per measurement on stdout; bench/model_bench.py runs
// this and transformers in the same run and prints the markdown table.
//
//   model_bench --model models/SmolLM2-135M-Instruct.Q4_1.gguf [--dtype f32|bf16] [--weights
//   dense|stored|stored-int8]
//               [--device cpu|cuda]
//               [--prompt-tokens 256] [--decode-steps 32] [--batches 1,8] [--repeats 3]
//               [--cartridge-tokens 512]
//
// With --cartridge-tokens P, also decode with every row after the same P-slot cartridge (random KV), held
// once and shared by the rows ("decode_cartridge_shared") and copied into every row
// ("decode_cartridge_copied").
#include <chrono>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/cuda.h>
#include <CLI/CLI.hpp>

#include "generate/decode_batch.h"
#include "io/model_files.h"
#include "model/model.h"
#include "util/error.h"

namespace {

using Clock = std::chrono::steady_clock;

void synchronize(const at::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string g_weights = "dense";  // --weights, printed with every result

void print_result(const std::string& phase, int64_t batch, int64_t tokens, double seconds,
                  const std::string& dtype, const std::string& device) {
  std::printf(
      "{\"impl\": \"cartridge.cpp\", \"phase\": \"%s\", \"batch\": %lld, \"tokens\": %lld, \"seconds\": "
      "%.6f, "
      "\"tokens_per_second\": %.3f, \"dtype\": \"%s\", \"weights\": \"%s\", \"device\": \"%s\", "
      "\"threads\": %d}\n",
      phase.c_str(), static_cast<long long>(batch), static_cast<long long>(tokens), seconds, tokens / seconds,
      dtype.c_str(), g_weights.c_str(), device.c_str(), at::get_num_threads());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("cartridge.cpp model forward benchmark");
  std::string model_path = cartridge::kDefaultModelPath;
  std::string dtype_name = "f32";
  std::string device_name = "cpu";
  int64_t prompt_tokens = 256;
  int64_t decode_steps = 32;
  std::vector<int64_t> batches = {1, 8};
  int repeats = 3;
  int64_t cartridge_tokens = 0;
  std::string decode_step = "fused";
  app.add_option("--model", model_path, "GGUF file or Hugging Face folder");
  app.add_option("--dtype", dtype_name, "f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}));
  app.add_option("--device", device_name, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--weights", g_weights, "dense, stored or stored-int8 (cartridge --help: --weights)")
      ->check(CLI::IsMember({"dense", "stored", "stored-int8"}));
  app.add_option("--prompt-tokens", prompt_tokens, "prefill length (tokens)");
  app.add_option("--decode-steps", decode_steps, "decode steps after a prefill");
  app.add_option("--batches", batches, "batch sizes (prefill and decode)")->delimiter(',');
  app.add_option("--repeats", repeats, "best of N runs");
  app.add_option("--cartridge-tokens", cartridge_tokens, "also decode after a shared cartridge of P slots");
  app.add_option("--decode-step", decode_step,
                 "fused (the default: model/decode_step.h) or layers (the ATen layers, its oracle)")
      ->check(CLI::IsMember({"fused", "layers"}));
  CLI11_PARSE(app, argc, argv);

  try {
    cartridge::LoadOptions options;
    options.dtype = dtype_name == "bf16" ? at::kBFloat16 : at::kFloat;
    if (device_name == "cuda") {
      if (!torch::cuda::is_available())
        throw cartridge::UnsupportedError("--device cuda: no CUDA device available");
      options.device = at::Device(at::kCUDA, 0);
    }
    options.show_progress = false;
    options.quantized_weights = g_weights == "stored"        ? cartridge::QuantizedWeights::kFloatActivations
                                : g_weights == "stored-int8" ? cartridge::QuantizedWeights::kInt8Activations
                                                             : cartridge::QuantizedWeights::kDequantize;
    const auto load_start = Clock::now();
    const auto model = cartridge::Model::load(cartridge::resolve_model_files(model_path), options);
    std::fprintf(stderr, "loaded %s in %.2f s (%d threads)\n", model_path.c_str(), seconds_since(load_start),
                 at::get_num_threads());
    const int64_t vocab = model->config().vocab_size;
    c10::InferenceMode inference;
    at::manual_seed(0);
    const auto ids_options = at::TensorOptions().dtype(at::kLong).device(options.device);

    // Prefill: `batch` prompts of prompt_tokens each, all positions through the model, logits of the last
    // one.
    for (const int64_t batch : batches) {
      const at::Tensor ids = at::randint(vocab, {batch, prompt_tokens}, ids_options);          // [B, T]
      const at::Tensor mask = at::ones({batch, prompt_tokens}, ids_options.dtype(at::kBool));  // [B, T]
      cartridge::ForwardOptions last_only;
      last_only.last_token_only = true;
      last_only.fused_decode = decode_step == "fused";
      double best = 1e30;
      for (int run = 0; run <= repeats; ++run) {  // run 0 warms up
        cartridge::KvCache cache = model->new_cache(batch);
        synchronize(options.device);
        const auto start = Clock::now();
        model->forward(ids, mask, cache, last_only);
        synchronize(options.device);
        if (run > 0) best = std::min(best, seconds_since(start));
      }
      print_result("prefill", batch, batch * prompt_tokens, best, dtype_name, device_name);
    }

    // Decode: after a short prefill, `decode_steps` single-token steps per row.
    for (const int64_t batch : batches) {
      const int64_t context = 32;  // tokens of prompt before decoding
      const at::Tensor ids = at::randint(vocab, {batch, context}, ids_options);
      const at::Tensor mask = at::ones({batch, context}, ids_options.dtype(at::kBool));
      const at::Tensor step_mask = at::ones({batch, 1}, ids_options.dtype(at::kBool));
      cartridge::ForwardOptions last_only;
      last_only.last_token_only = true;
      last_only.fused_decode = decode_step == "fused";
      double best = 1e30;
      for (int run = 0; run <= repeats; ++run) {
        cartridge::KvCache cache = model->new_cache(batch);
        at::Tensor logits = model->forward(ids, mask, cache, last_only);
        cache.reserve(decode_steps);
        synchronize(options.device);
        const auto start = Clock::now();
        for (int64_t step = 0; step < decode_steps; ++step) {
          const at::Tensor next = logits.argmax(-1);  // [B, 1]
          logits = model->forward(next, step_mask, cache, last_only);
        }
        synchronize(options.device);
        if (run > 0) best = std::min(best, seconds_since(start));
      }
      print_result("decode", batch, batch * decode_steps, best, dtype_name, device_name);
    }

    // Decode after one cartridge that every row reads: held once (shared) or copied into each row.
    const cartridge::ModelConfig& config = model->config();
    auto cartridge = std::make_shared<cartridge::KvPrefix>();
    for (int64_t layer = 0; layer < config.num_layers && cartridge_tokens > 0; ++layer) {
      const auto kv_options = at::TensorOptions().dtype(options.dtype).device(options.device);
      cartridge->keys.push_back(
          at::randn({config.num_key_value_heads, cartridge_tokens, config.head_dim}, kv_options));
      cartridge->values.push_back(
          at::randn({config.num_key_value_heads, cartridge_tokens, config.head_dim}, kv_options));
    }
    for (const bool shared : {true, false}) {
      for (const int64_t batch : batches) {
        if (cartridge_tokens == 0) break;
        const int64_t context = 16;  // tokens of prompt after the cartridge
        const at::Tensor ids = at::randint(vocab, {batch, context}, ids_options);
        const at::Tensor mask = at::ones({batch, context}, ids_options.dtype(at::kBool));
        const at::Tensor step_mask = at::ones({batch, 1}, ids_options.dtype(at::kBool));
        const std::vector<std::shared_ptr<const cartridge::KvPrefix>> prefixes(batch, cartridge);
        const std::vector<std::vector<std::shared_ptr<const cartridge::KvPrefix>>> row_prefixes(batch,
                                                                                                {cartridge});
        cartridge::ForwardOptions last_only;
        last_only.last_token_only = true;
        last_only.fused_decode = decode_step == "fused";
        last_only.fused_decode = decode_step == "fused";
        double best = 1e30;
        for (int run = 0; run <= repeats; ++run) {
          cartridge::KvCache cache =
              shared ? cartridge::KvCache::with_shared_prefixes(config, options.dtype, options.device,
                                                                row_prefixes)
                     : cartridge::KvCache::with_row_prefixes(config, options.dtype, options.device, prefixes);
          cache.reserve(context + decode_steps);
          at::Tensor logits = model->forward(ids, mask, cache, last_only);
          synchronize(options.device);
          const auto start = Clock::now();
          for (int64_t step = 0; step < decode_steps; ++step) {
            logits = model->forward(logits.argmax(-1), step_mask, cache, last_only);
          }
          synchronize(options.device);
          if (run > 0) best = std::min(best, seconds_since(start));
        }
        print_result(shared ? "decode_cartridge_shared" : "decode_cartridge_copied", batch,
                     batch * decode_steps, best, dtype_name, device_name);
      }
    }
  } catch (const cartridge::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
