#include "selfstudy/seed_prompts.h"

#include <algorithm>
#include <map>

#include "util/error.h"

namespace cartridge {
namespace {

// Several phrasings per type, so the questions do not all start the same way. "{format}" is replaced by a
// structuring format; "{quote}" (type "quote") by the first words of a passage of the chunk.
const std::map<std::string, std::vector<std::string>>& phrasings() {
  static const std::map<std::string, std::vector<std::string>> table = {
      {"structuring",
       {"Choose one specific part of the document above and name it precisely (by its heading, its topic or "
        "the people, dates or items it covers). Write an instruction asking to rewrite the information in "
        "that "
        "part as {format}, keeping every name, date and number exactly. Reply with the instruction only.",
        "Write a request that asks for the facts of one clearly identified section of the document above to "
        "be "
        "organised as {format}. Say which section you mean so that nobody could confuse it with another, and "
        "ask that no detail (names, figures, dates) be lost. Reply with the request only."}},
      {"summarization",
       {"Choose one specific part of the document above and identify it clearly (its heading, its subject, "
        "or "
        "what happens in it). Write an instruction asking for a summary of that part. Reply with the "
        "instruction only.",
        "Write a request for a short summary of one well-defined passage of the document above. Describe the "
        "passage precisely enough that a reader could find it, and say what the summary should cover. Reply "
        "with the request only."}},
      {"question",
       {"Write one question that tests whether someone knows what the document above says. Include specific "
        "names, dates, numbers or terms from it so that the question is unambiguous even for someone who "
        "cannot see the document. Reply with the question only.",
        "Ask one factual question about a detail of the document above that only a careful reader would "
        "know. "
        "Make the question self-contained: mention the names, places, figures or terms it is about. Reply "
        "with "
        "the question only."}},
      {"use_cases",
       {"Think about who would need the information in the document above and what real task they would use "
        "it for. Then write one question such a person would ask, which can only be answered well with the "
        "document's content. Reply with the question only.",
        "Imagine a practical situation in which someone relies on the document above (a decision to make, a "
        "problem to solve, a task to finish). Write the question they would ask about it. Reply with the "
        "question only."}},
      {"creative",
       {"Write one open-ended, creative question or request inspired by the document above, for example "
        "about "
        "its implications, a comparison, or a story built on its details, that still depends on what the "
        "document actually says. Reply with the question or request only.",
        "Write an imaginative prompt that starts a conversation about the document above: a thought "
        "experiment, a what-if, or a creative task that uses its specific details. Reply with the prompt "
        "only."}},
      // Not a prompt for the question writer: the question itself, and the answer is the passage's own text.
      {"quote",
       {"Quote the passage of the document that begins with \"{quote}\", word for word.",
        "Continue this passage of the document exactly as it is written: \"{quote}\"",
        "What does the document say, word for word, starting from \"{quote}\"?"}},
  };
  return table;
}

// `text` with its first `placeholder` (if any) replaced by `value`.
std::string fill_placeholder(std::string text, const std::string& placeholder, const std::string& value) {
  const size_t at = text.find(placeholder);
  if (at != std::string::npos) text.replace(at, placeholder.size(), value);
  return text;
}

std::string fill_format(const std::string& text, const std::string& format) {
  return fill_placeholder(text, "{format}", format);
}

}  // namespace

const std::vector<std::string>& seed_prompt_types() {
  static const std::vector<std::string> types = {"structuring", "summarization", "question", "use_cases",
                                                 "creative"};
  return types;
}

std::string fill_quote(const std::string& text, const std::string& quote) {
  return fill_placeholder(text, "{quote}", quote);
}

void check_seed_prompt_types(const std::vector<std::string>& types) {
  const std::string choices =
      "(choose among structuring, summarization, question, use_cases, creative, quote)";
  if (types.empty()) throw InvalidArgumentError("no seed-prompt types given " + choices);
  for (const std::string& type : types) {
    if (!phrasings().count(type)) {
      throw InvalidArgumentError("unknown seed-prompt type '" + type + "' " + choices);
    }
  }
}

const std::vector<std::string>& structuring_formats() {
  static const std::vector<std::string> formats = {"JSON", "YAML", "TOML", "INI", "XML", "plain text"};
  return formats;
}

SeedPrompt sample_seed_prompt(SynthesisRandom& random, const std::vector<std::string>& types) {
  check_seed_prompt_types(types);
  SeedPrompt prompt;
  prompt.type = types[random.pick(types.size())];
  const std::vector<std::string>& options = phrasings().at(prompt.type);
  const std::string& phrasing = options[random.pick(options.size())];
  // Every type draws a format, so the stream advances the same way whatever the type.
  const std::string& format = structuring_formats()[random.pick(structuring_formats().size())];
  prompt.text = fill_format(phrasing, format);
  return prompt;
}

std::vector<std::string> all_seed_prompt_texts() {
  std::vector<std::string> texts;
  for (const auto& [type, options] : phrasings()) {
    for (const std::string& phrasing : options) {
      for (const std::string& format : structuring_formats()) {
        const std::string text = fill_format(phrasing, format);
        if (std::find(texts.begin(), texts.end(), text) == texts.end()) texts.push_back(text);
      }
    }
  }
  return texts;
}

}  // namespace cartridge
