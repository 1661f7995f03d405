// How long a generation took, in llama.cpp's terms, so that numbers read side by side with llama.cpp's
// tools and server mean the same thing.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace cartridge {

// Wall-clock time a generation took, as llama.cpp reports it (its server's "timings"): the prompt phase
// runs from when the row joined the batch until its first token was chosen (the prefill, shared with the
// rows prefilled in the same pass), the generation phase from that first token until the row finished
// (steps shared with the whole batch).
struct GenerationTimings {
  int64_t prompt_tokens = 0;     // llama.cpp's prompt_n
  double prompt_ms = 0;          // milliseconds
  int64_t generated_tokens = 0;  // llama.cpp's predicted_n: tokens chosen, the stop token included
  double generated_ms = 0;       // milliseconds

  // Tokens per second of each phase; 0 when the phase took no measurable time.
  double prompt_tokens_per_second() const { return prompt_ms > 0 ? prompt_tokens * 1000.0 / prompt_ms : 0; }
  double generated_tokens_per_second() const {
    return generated_ms > 0 ? generated_tokens * 1000.0 / generated_ms : 0;
  }
};

// llama.cpp's server "timings" object: prompt_n, prompt_ms, prompt_per_token_ms, prompt_per_second,
// predicted_n, predicted_ms, predicted_per_token_ms, predicted_per_second (null where a phase took no
// measurable time or had no tokens).
nlohmann::json timings_json(const GenerationTimings& timings);

// One line for people: "prompt 12 tokens in 35.1 ms (341.9 tok/s), generated 32 tokens in 1.21 s (26.4
// tok/s)".
std::string timings_text(const GenerationTimings& timings);

}  // namespace cartridge
