// Cartridge speed and size: initialisation from a text (tokenize + prefill of the first p tokens), greedy
// decode tokens/s with the cartridge in front of a question, decode tokens/s with the whole document in
// context instead (ICL), and the bytes of both. Prints one JSON object per measurement on stdout;
// bench/cartridge_bench.py runs this and PEFT + transformers in the same run and prints the markdown table.
//
//   cartridge_bench --model models/SmolLM2-135M-Instruct.Q4_1.gguf --text-file examples/data/varnholm.md
//                   [--tokens 128] [--decode-steps 32] [--repeats 3] [--dtype f32|bf16] [--device cpu|cuda]
#include <ATen/Parallel.h>
#include <torch/cuda.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>

#include "cartridge/text_init.h"
#include "generate/generator.h"
#include "generate/loaded_model.h"
#include "io/model_files.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace {

using Clock = std::chrono::steady_clock;

constexpr char kQuestion[] = "In which year was the town founded, and by whom?";

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void synchronize(const at::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

void print_json(const std::string& body) {
  std::printf("{\"impl\": \"cartridge.cpp\", \"threads\": %d, %s}\n", at::get_num_threads(), body.c_str());
  std::fflush(stdout);
}

// Seconds for a greedy generation of `new_tokens` tokens (EOS ignored) after `prompt` and `prefix`.
double time_generation(const cartridge::LoadedModel& loaded, const std::vector<int32_t>& prompt,
                       const std::shared_ptr<const cartridge::KvPrefix>& prefix, int64_t new_tokens) {
  cartridge::GenerationRequest request;
  request.prompt_ids = prompt;
  if (prefix) request.prefixes = {prefix};
  request.max_new_tokens = new_tokens;
  request.stop_at_eos = false;
  request.sampling.temperature = 0;
  const auto start = Clock::now();
  cartridge::generate(*loaded.model, *loaded.tokenizer, {request});
  synchronize(loaded.model->device());
  return seconds_since(start);
}

// Decode tokens/s: the time of `steps` more tokens than a 1-token generation (which is the prefill),
// best of `repeats`.
double decode_tokens_per_second(const cartridge::LoadedModel& loaded, const std::vector<int32_t>& prompt,
                                const std::shared_ptr<const cartridge::KvPrefix>& prefix, int64_t steps,
                                int repeats) {
  double best = 1e30;
  time_generation(loaded, prompt, prefix, steps + 1);  // warm-up
  for (int run = 0; run < repeats; ++run) {
    const double prefill = time_generation(loaded, prompt, prefix, 1);
    const double full = time_generation(loaded, prompt, prefix, steps + 1);
    best = std::min(best, std::max(full - prefill, 1e-9));
  }
  return steps / best;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("cartridge.cpp cartridge benchmark (init from text, decode with a cartridge, bytes)");
  std::string model_spec = cartridge::kDefaultModelPath;
  std::string text_file = "examples/data/varnholm.md";
  std::string dtype_name = "f32";
  std::string device_name = "cpu";
  int64_t tokens = 128;
  int64_t decode_steps = 32;
  int repeats = 3;
  app.add_option("--model", model_spec, "GGUF file, Hugging Face folder or Hub id");
  app.add_option("--text-file", text_file, "the document");
  app.add_option("--tokens", tokens, "p, the cartridge length");
  app.add_option("--decode-steps", decode_steps, "tokens decoded per measurement");
  app.add_option("--repeats", repeats, "best of N runs");
  app.add_option("--dtype", dtype_name, "f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}));
  app.add_option("--device", device_name, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  CLI11_PARSE(app, argc, argv);

  try {
    cartridge::LoadOptions options;
    options.dtype = dtype_name == "bf16" ? at::kBFloat16 : at::kFloat;
    options.device = cartridge::parse_device(device_name);
    options.show_progress = false;
    const cartridge::LoadedModel loaded = cartridge::load_model(model_spec, options);
    const cartridge::ModelConfig& config = loaded.model->config();
    const std::string text = cartridge::read_text_file(text_file);

    // Initialisation from text: tokenization (chat template, PEFT's default) + prefill of p tokens.
    double init_best = 1e30;
    int64_t document_tokens = 0;
    std::optional<cartridge::Cartridge> cartridge;
    for (int run = 0; run <= repeats; ++run) {  // run 0 warms up
      const auto start = Clock::now();
      const std::vector<int32_t> ids = cartridge::tokenize_init_text(
          *loaded.tokenizer, loaded.chat_template.get(), text, cartridge::InitTokenization::kAuto);
      cartridge = cartridge::Cartridge::from_token_ids(*loaded.model, ids, tokens, 1);
      synchronize(loaded.model->device());
      if (run > 0) init_best = std::min(init_best, seconds_since(start));
      document_tokens = static_cast<int64_t>(ids.size());
    }
    print_json("\"measure\": \"init\", \"tokens\": " + std::to_string(tokens) + ", \"document_tokens\": " +
               std::to_string(document_tokens) + ", \"seconds\": " + std::to_string(init_best));

    // Decode with the cartridge in front of a chat question, and with the document in context instead.
    const std::vector<int32_t> question = loaded.encode_chat({{"user", kQuestion}}, true);
    const std::vector<int32_t> in_context = loaded.encode_chat({{"system", text}, {"user", kQuestion}}, true);
    const auto prefix = cartridge->kv_prefix_for(*loaded.model);
    print_json("\"measure\": \"decode_cartridge\", \"prompt_tokens\": " + std::to_string(question.size()) +
               ", \"tokens_per_second\": " +
               std::to_string(decode_tokens_per_second(loaded, question, prefix, decode_steps, repeats)));
    print_json("\"measure\": \"decode_in_context\", \"prompt_tokens\": " + std::to_string(in_context.size()) +
               ", \"tokens_per_second\": " +
               std::to_string(decode_tokens_per_second(loaded, in_context, nullptr, decode_steps, repeats)));

    // Bytes: the cartridge's KV in the model dtype vs the document's KV in context.
    const int64_t per_token = config.kv_bytes_per_token(loaded.model->dtype());
    print_json(
        "\"measure\": \"bytes\", \"cartridge_kv_bytes\": " + std::to_string(tokens * per_token) +
        ", \"cartridge_file_bytes_f32\": " + std::to_string(cartridge->parameter_bytes()) +
        ", \"in_context_kv_bytes\": " + std::to_string(static_cast<int64_t>(in_context.size()) * per_token) +
        ", \"kv_bytes_per_token\": " + std::to_string(per_token));
  } catch (const cartridge::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
