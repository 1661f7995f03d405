// Seed prompts (docs/self_study.md, step 2): the first user turn given to the model that writes a
// conversation's question. Five generic types, never specific to a corpus, drawn uniformly per conversation;
// each asks for one instruction or question about the document in the system prompt and nothing else.
#pragma once

#include <string>
#include <vector>

#include "selfstudy/synthesis_random.h"

namespace cartridge {

// The type names, in this order: "structuring", "summarization", "question", "use_cases", "creative" (the
// paper's five, the default).
const std::vector<std::string>& seed_prompt_types();

// Besides the five, "quote" (drawn only when named): not a prompt for the question writer but the question
// itself, asking to quote a passage of the chunk from its first words ("{quote}" in the text, filled by
// fill_quote); the passage's own text is the answer, and the teacher's distributions over it are recorded
// (docs/self_study.md).
std::string fill_quote(const std::string& text, const std::string& quote);

// Throws InvalidArgumentError (naming the choices) for an empty list or a name that is not one of the five
// or "quote".
void check_seed_prompt_types(const std::vector<std::string>& types);

// The formats a structuring prompt asks for, one drawn at random: JSON, YAML, TOML, INI, XML, plain text.
const std::vector<std::string>& structuring_formats();

struct SeedPrompt {
  std::string type;  // one of seed_prompt_types()
  std::string text;  // the user message
};

// Draws a type uniformly among `types` (names from seed_prompt_types(); throws InvalidArgumentError for an
// unknown name or an empty list), then one of that type's phrasings (and, for structuring, a format).
SeedPrompt sample_seed_prompt(SynthesisRandom& random, const std::vector<std::string>& types);

// Every phrasing of every type with its format placeholder filled by each format (for tests and to size
// the prompt).
std::vector<std::string> all_seed_prompt_texts();

}  // namespace cartridge
