// Entry point of the `cartridge` command-line tool.
#include <cstdio>
#include <exception>

#include <c10/util/Exception.h>

#include "tools/commands.h"
#include "util/error.h"

namespace cartridge::tools {

void add_model_options(CLI::App& command, ModelOptions& options) {
  command
      .add_option("-m,--model", options.model,
                  "A GGUF file, a Hugging Face model folder, or a Hub id (org/name) in the local HF cache")
      ->capture_default_str();
  command
      .add_option(
          "--dtype", options.dtype,
          "Compute dtype. auto: fp32 arithmetic, with a GGUF's quantised matrices kept as stored on the "
          "CPU where the command allows it (--weights auto); `train` and `study` run the frozen model in "
          "bf16 on CPUs with bf16 units (AVX512-BF16, AMX). fp32: every weight dequantised to fp32, exact "
          "parity with transformers. bf16: faster on CPUs with bf16 units, half memory")
      ->check(CLI::IsMember({"auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16"}))
      ->capture_default_str();
  command.add_option("--device", options.device, "cpu, cuda, cuda:N, or auto (CUDA when available)")
      ->capture_default_str();
  command.add_flag("-q,--quiet", options.quiet, "No progress bars or loading messages");
}

void add_weights_option(CLI::App& command, ModelOptions& options) {
  command
      .add_option("--weights", options.weights,
                  "auto: stored with --dtype auto on the CPU, else dense. "
                  "dense: every weight in --dtype (exact parity with transformers). "
                  "stored: a GGUF's Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K and Q6_K matrices stay as stored and "
                  "multiply float32 activations (one token times Q4, Q5 or Q6_K blocks: rounded to 16 bits "
                  "per 32 values): the fp32 results up to rounding, decoding several times faster. "
                  "stored-int8: every quantised type stays as stored, activations rounded to 8 bits as "
                  "llama.cpp does (ggml's kernels): fastest with batches, close to fp32 but not equal "
                  "(docs/quantized.md)")
      ->check(CLI::IsMember({"auto", "dense", "stored", "stored-int8"}))
      ->capture_default_str();
  options.offers_weights = true;
}

std::string resolved_weights(const ModelOptions& options, const at::Device& device) {
  if (options.weights != "auto") return options.weights;
  // The fastest path that keeps fp32's results (docs/quantized.md); an explicit --dtype pins the dense one.
  return options.offers_weights && options.dtype == "auto" && device.is_cpu() ? "stored" : "dense";
}

namespace {

// A resolved --weights ("dense", "stored" or "stored-int8") as the loader's option.
QuantizedWeights quantized_weights_for(const std::string& weights) {
  return weights == "stored"        ? QuantizedWeights::kFloatActivations
         : weights == "stored-int8" ? QuantizedWeights::kInt8Activations
                                    : QuantizedWeights::kDequantize;
}

// GCC's cpuid test, as ATen's dispatch does its own: bf16 dot products in hardware.
bool cpu_has_bf16_units() {
  return __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
}

}  // namespace

at::ScalarType resolved_dtype(const ModelOptions& options, const at::Device& device) {
  if (options.dtype != "auto") return parse_dtype(options.dtype);
  return options.trains && device.is_cpu() && cpu_has_bf16_units() ? at::kBFloat16 : at::kFloat;
}

LoadedModel load_model_from_options(const ModelOptions& options) {
  LoadOptions load;
  load.device = parse_device(options.device);
  load.dtype = resolved_dtype(options, load.device);
  const std::string weights = resolved_weights(options, load.device);
  load.quantized_weights = quantized_weights_for(weights);
  load.show_progress = !options.quiet;
  if (!options.quiet && load.dtype == at::kBFloat16 && load.device.is_cpu() && !cpu_has_bf16_units()) {
    // Without AVX512-BF16 or AMX, libtorch converts every bf16 product to float32 and back: on a 2-core
    // AVX2 EPYC, a bf16 matrix product ran at 13-18 GFLOP/s against float32's 70-180, and a 256-token
    // prefill at 87 tokens/s against 621 (2026-12-07, docs/training.md).
    std::fprintf(stderr,
                 "warning: this CPU has no bf16 units (AVX512-BF16 or AMX), so --dtype %s runs several "
                 "times slower than fp32 here; --dtype auto picks fp32 on it\n",
                 options.dtype.c_str());
  }
  LoadedModel loaded = load_model(options.model, load);
  if (!options.quiet && options.trains && options.dtype == "auto" && load.dtype == at::kBFloat16) {
    std::fprintf(stderr,
                 "training: the frozen model runs in bf16, this CPU has bf16 units (--dtype fp32 for the "
                 "exact path)\n");
  }
  if (!options.quiet && loaded.model->has_quantized_weights()) {
    std::fprintf(stderr,
                 "weights: the GGUF's quantised matrices kept as stored (--weights %s; --dtype fp32 "
                 "for the exact dense path)\n",
                 weights.c_str());
  }
  return loaded;
}

std::shared_ptr<const Model> load_synthesis_model(const ModelOptions& options, const LoadedModel& training) {
  const at::Device device = parse_device(options.device);
  const std::string weights = resolved_weights(options, device);
  // Only a GGUF holds blocks: a Hugging Face folder would be loaded a second time for nothing.
  if (weights == "dense" || training.files.format != ModelFormat::kGguf) return nullptr;
  LoadOptions load;
  load.dtype = at::kFloat;  // blocks multiply float32 activations
  load.device = device;
  load.quantized_weights = quantized_weights_for(weights);
  load.show_progress = !options.quiet;
  std::shared_ptr<const Model> model = Model::load(training.files, load);
  if (!model->has_quantized_weights()) return nullptr;  // the same dense weights: no second copy
  if (!options.quiet) {
    std::fprintf(stderr,
                 "synthesis: the GGUF's quantised matrices kept as stored (--weights %s; training uses "
                 "the dense model)\n",
                 weights.c_str());
  }
  return model;
}

}  // namespace cartridge::tools

int main(int argc, char** argv) {
  CLI::App app{
      "cartridge: train and use Cartridges, small trained KV-cache prefixes that stand in for a long "
      "document.\n"
      "Adapters are read and written in Hugging Face PEFT's CARTRIDGE format.\n"
      "Run `cartridge <command> --help` for each command's options and an example."};
  app.require_subcommand(1);
  app.fallthrough(false);
  cartridge::tools::add_generate_command(app);
  cartridge::tools::add_chat_command(app);
  cartridge::tools::add_tokenize_command(app);
  cartridge::tools::add_inspect_model_command(app);
  cartridge::tools::add_init_command(app);
  cartridge::tools::add_compose_command(app);
  cartridge::tools::add_inspect_command(app);
  cartridge::tools::add_synthesize_command(app);
  cartridge::tools::add_serve_command(app);
  cartridge::tools::add_train_command(app);
  cartridge::tools::add_eval_command(app);
  cartridge::tools::add_study_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return cartridge::tools::report_parse_error(app, error, argc, argv);
  } catch (const cartridge::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  } catch (const c10::Error& error) {
    // An internal check failed: report the first line only, which names the check.
    std::string message = error.what_without_backtrace();
    std::fprintf(stderr, "internal error: %s\n", message.substr(0, message.find('\n')).c_str());
    return 2;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
