#include "generate/generation_timings.h"

#include <fmt/format.h>

namespace cartridge {

namespace {

nlohmann::json per_token_ms(int64_t tokens, double milliseconds) {
  return tokens > 0 ? nlohmann::json(milliseconds / static_cast<double>(tokens)) : nlohmann::json();
}

nlohmann::json per_second(double rate) { return rate > 0 ? nlohmann::json(rate) : nlohmann::json(); }

std::string phase_text(int64_t tokens, double milliseconds, double rate) {
  const std::string time = milliseconds >= 1000 ? fmt::format("{:.2f} s", milliseconds / 1000)
                                                : fmt::format("{:.1f} ms", milliseconds);
  return rate > 0 ? fmt::format("{} tokens in {} ({:.1f} tok/s)", tokens, time, rate)
                  : fmt::format("{} tokens in {}", tokens, time);
}

}  // namespace

nlohmann::json timings_json(const GenerationTimings& timings) {
  return {{"prompt_n", timings.prompt_tokens},
          {"prompt_ms", timings.prompt_ms},
          {"prompt_per_token_ms", per_token_ms(timings.prompt_tokens, timings.prompt_ms)},
          {"prompt_per_second", per_second(timings.prompt_tokens_per_second())},
          {"predicted_n", timings.generated_tokens},
          {"predicted_ms", timings.generated_ms},
          {"predicted_per_token_ms", per_token_ms(timings.generated_tokens, timings.generated_ms)},
          {"predicted_per_second", per_second(timings.generated_tokens_per_second())}};
}

std::string timings_text(const GenerationTimings& timings) {
  return "prompt " +
         phase_text(timings.prompt_tokens, timings.prompt_ms, timings.prompt_tokens_per_second()) +
         ", generated " +
         phase_text(timings.generated_tokens, timings.generated_ms, timings.generated_tokens_per_second());
}

}  // namespace cartridge
