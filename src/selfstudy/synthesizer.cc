#include "selfstudy/synthesizer.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>

#include "cartridge/fingerprint.h"
#include "generate/decode_batch.h"
#include "generate/loaded_model.h"
#include "generate/sampler.h"
#include "selfstudy/sha256.h"
#include "selfstudy/synthesis_random.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/progress.h"

namespace cartridge {

const char* const kDefaultSynthesisSystemPrompt =
    "You are in a conversation about the document excerpt below. Parts of the larger document may be "
    "missing from the excerpt; rely on what it says. Do not begin your messages with phrases like "
    "\"According to the document\".\n\n<document>\n{chunk}\n</document>";

namespace {

// Bumped whenever the prompts or the algorithm change what a seed produces, so an old file is not
// silently continued with differently made conversations.
// Revision 2: the teacher's top-k is recorded for the question's tokens too.
constexpr const char* kGeneratorRevision = "cartridge.cpp self-study 2";

// Tokens of slack between a chunk's length in corpus tokens and its length once decoded and tokenized
// again inside the template (a chunk boundary can split a word or a multi-byte character).
constexpr int64_t kRetokenizationSlack = 64;

int64_t common_prefix_length(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  const size_t limit = std::min(a.size(), b.size());
  size_t length = 0;
  while (length < limit && a[length] == b[length]) ++length;
  return static_cast<int64_t>(length);
}

int64_t common_suffix_length(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  const size_t limit = std::min(a.size(), b.size());
  size_t length = 0;
  while (length < limit && a[a.size() - 1 - length] == b[b.size() - 1 - length]) ++length;
  return static_cast<int64_t>(length);
}

std::string trim(const std::string& text) {
  const char* whitespace = " \t\r\n";
  const size_t first = text.find_first_not_of(whitespace);
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(whitespace) - first + 1);
}

std::vector<int32_t> without_stop(const BatchDecodeOutput& output) {
  std::vector<int32_t> ids = output.token_ids;
  if (output.stopped && !ids.empty()) ids.pop_back();
  return ids;
}

// Runs the first `length` tokens of `ids` through the model once (batch 1): the prefix every row of a
// chunk's group shares.
std::shared_ptr<const KvPrefix> prefill_shared(const Model& model, const std::vector<int32_t>& ids,
                                               int64_t length) {
  c10::InferenceMode inference_mode;
  KvCache cache = model.new_cache(1);
  std::vector<int64_t> prefix(ids.begin(), ids.begin() + length);
  const at::Tensor input = at::tensor(prefix, at::kLong).view({1, length}).to(model.device());  // [1, L]
  const at::Tensor mask = at::ones({1, length}, at::TensorOptions().dtype(at::kBool).device(model.device()));
  ForwardOptions options;
  options.last_token_only = true;  // the logits are not needed; this keeps the lm_head cost to one row
  model.forward(input, mask, cache, options);
  return std::make_shared<const KvPrefix>(cache.row_prefix(0, length));
}

// The last group's shared prefill, kept for the next group: groups drawn from the same chunk (every group,
// when the document fits in one chunk, as in `study`'s recipe) start with the same tokens, the system
// message with the chunk. Reused only for exactly the same tokens, so the KV is bit for bit what a new
// prefill would give; prefilling them again per group was a third of the main job's synthesis.
struct SharedPrefill {
  std::vector<int32_t> ids;
  std::shared_ptr<const KvPrefix> prefix;
};

// Everything one synthesis run needs, built once.
struct SynthesisContext {
  const LoadedModel* loaded;
  const SynthesisOptions* options;
  const Chunker* chunker;
  std::vector<int32_t> stop_ids;
  int64_t context_tokens;  // the model's context length
};

// Words that start a quote: enough to find the passage, few enough that most of it is still to be said.
constexpr int64_t kQuoteCueTokens = 12;

// A "quote" conversation's passage: max_answer_tokens (at most the chunk) of the chunk's tokens from a
// uniform start, drawn from the conversation's stream; fills the seed's "{quote}" with its first words.
std::vector<int32_t> quote_passage(const SynthesisContext& context, const Chunk& chunk,
                                   SynthesisRandom& random, SeedPrompt& seed) {
  const Tokenizer& tokenizer = *context.loaded->tokenizer;
  const int64_t length = std::min<int64_t>(context.options->max_answer_tokens, chunk.length);
  const int64_t start = chunk.start + random.uniform_int(0, chunk.length - length);
  const std::vector<int32_t>& corpus = context.chunker->corpus_ids();
  const std::vector<int32_t> tokens(corpus.begin() + start, corpus.begin() + start + length);
  const std::vector<int32_t> cue(tokens.begin(), tokens.begin() + std::min(kQuoteCueTokens, length));
  seed.text = fill_quote(seed.text, trim(tokenizer.decode(cue, /*skip_special_tokens=*/true)));
  // Tokenized again from its text, as it will be read in the conversation.
  return tokenizer.encode(tokenizer.decode(tokens, /*skip_special_tokens=*/true),
                          /*add_special_tokens=*/false);
}

// Generates conversations [first, end) of chunk group `group` (all of the group's rows are generated, so
// that every row sees the same batch whichever of them are needed).
std::vector<Conversation> generate_group(const SynthesisContext& context, int64_t group, int64_t first,
                                         int64_t end, SharedPrefill& last_prefill,
                                         BatchDecodeCounts& counts) {
  const LoadedModel& loaded = *context.loaded;
  const SynthesisOptions& options = *context.options;
  const Model& model = *loaded.model;

  SynthesisRandom chunk_random(options.seed, RandomPurpose::kChunk, static_cast<uint64_t>(group));
  const Chunk chunk = context.chunker->sample(chunk_random);
  const std::string system = synthesis_system_message(options, chunk.text);

  // Per conversation: its seed prompt and its question's sampling seed, from its own stream. A "quote"
  // conversation's question is made here (the first words of a passage of the chunk) and its answer is
  // that passage; the others' questions are written by the model.
  std::vector<SeedPrompt> seeds;
  std::vector<std::vector<int32_t>> first_prompts;  // per row: system + user turn (seed prompt or question)
  std::vector<std::vector<int32_t>> quoted;         // per row: the passage a quote answers with (else empty)
  std::vector<BatchDecodeRow> question_rows;        // the rows whose question the model writes
  std::vector<int64_t> question_row_of;             // per row: its index in question_rows, or -1
  for (int64_t index = first; index < end; ++index) {
    SynthesisRandom random(options.seed, RandomPurpose::kConversation, static_cast<uint64_t>(index));
    seeds.push_back(sample_seed_prompt(random, options.seed_types));
    if (seeds.back().type == "quote") {
      quoted.push_back(quote_passage(context, chunk, random, seeds.back()));
      first_prompts.push_back(loaded.encode_chat({{"system", system}, {"user", seeds.back().text}}, true));
      question_row_of.push_back(-1);
      continue;
    }
    quoted.emplace_back();
    BatchDecodeRow row;
    row.prompt_ids = loaded.encode_chat({{"system", system}, {"user", seeds.back().text}}, true);
    row.temperature = options.question_temperature;
    row.sampling_seed = random.next();
    row.max_new_tokens = std::min<int64_t>(
        options.max_question_tokens, context.context_tokens - static_cast<int64_t>(row.prompt_ids.size()));
    if (row.max_new_tokens < 1) {
      throw InvalidArgumentError("a question prompt of " + std::to_string(row.prompt_ids.size()) +
                                 " tokens fills the model's context of " +
                                 std::to_string(context.context_tokens) + " (lower --max-chunk)");
    }
    first_prompts.push_back(row.prompt_ids);
    question_row_of.push_back(static_cast<int64_t>(question_rows.size()));
    question_rows.push_back(std::move(row));
  }

  // The tokens every prompt of the group starts with (the system message with the chunk), prefilled once.
  int64_t shared_length = 0;
  std::shared_ptr<const KvPrefix> shared_prefix;
  const std::vector<int32_t>& reference = first_prompts.front();
  if (options.share_prefill) {
    shared_length = static_cast<int64_t>(reference.size());
    for (const std::vector<int32_t>& prompt : first_prompts) {
      shared_length = std::min(shared_length, common_prefix_length(reference, prompt));
      shared_length = std::min<int64_t>(shared_length, static_cast<int64_t>(prompt.size()) - 1);
    }
    if (shared_length > 0) {
      std::vector<int32_t> shared_ids(reference.begin(), reference.begin() + shared_length);
      if (shared_ids != last_prefill.ids) {
        last_prefill = {std::move(shared_ids), prefill_shared(model, reference, shared_length)};
        counts.prefill_tokens += shared_length;
      }
      shared_prefix = last_prefill.prefix;
    }
  }

  const std::vector<BatchDecodeOutput> questions =
      question_rows.empty() ? std::vector<BatchDecodeOutput>()
                            : decode_with_teacher_top_k(model, *loaded.tokenizer, question_rows,
                                                        context.stop_ids, 0, shared_prefix, &counts);

  std::vector<std::string> question_texts;
  std::vector<std::vector<int32_t>> student_prompts;  // per row: the question alone in the chat template
  std::vector<int64_t> question_target_counts;        // per row: student prompt tokens that get targets
  std::vector<BatchDecodeRow> answer_rows;
  int64_t answer_shared = shared_length;
  for (int64_t row_index = 0; row_index < end - first; ++row_index) {
    const int64_t question_row = question_row_of[row_index];
    question_texts.push_back(question_row < 0
                                 ? seeds[row_index].text
                                 : trim(loaded.tokenizer->decode(without_stop(questions[question_row]),
                                                                 /*skip_special_tokens=*/true)));
    BatchDecodeRow row;
    row.prompt_ids = loaded.encode_chat({{"system", system}, {"user", question_texts.back()}}, true);
    const int64_t question_prompt_length = static_cast<int64_t>(row.prompt_ids.size());
    // The student sees the question after the cartridge, framed as the cartridge will be used. Its prompt
    // and the teacher's end alike from some point on (system_turn: from the end of the system turn; new_chat:
    // from the user turn): those common tokens get the teacher's distributions as targets (the paper's
    // objective distils the whole conversation), except the first, whose preceding token differs.
    student_prompts.push_back(
        loaded.encode_chat_after_cartridge({{"user", question_texts.back()}}, options.student_framing, true));
    const int64_t common = common_suffix_length(row.prompt_ids, student_prompts.back());
    question_target_counts.push_back(std::max<int64_t>(common - 1, 0));
    if (question_target_counts.back() > 0) {
      row.record_prompt_from = question_prompt_length - question_target_counts.back();
    }
    const std::vector<int32_t>& passage = quoted[row_index];
    if (!passage.empty()) {
      // The passage is the answer, teacher-forced: its distributions come from the prefill; the teacher
      // then writes one more token of its own (normally the end of its turn).
      row.prompt_ids.insert(row.prompt_ids.end(), passage.begin(), passage.end());
      if (row.record_prompt_from == 0) row.record_prompt_from = question_prompt_length;
    }
    row.temperature = 0;
    const int64_t room = context.context_tokens - static_cast<int64_t>(row.prompt_ids.size());
    if (room < 1) {
      throw InvalidArgumentError("an answer prompt of " + std::to_string(row.prompt_ids.size()) +
                                 " tokens fills the model's context of " +
                                 std::to_string(context.context_tokens) +
                                 " (lower --max-chunk or --max-question-tokens)");
    }
    row.max_new_tokens = passage.empty() ? std::min<int64_t>(options.max_answer_tokens, room) : 1;
    // The answer prompts share the system message with the question prompts: reuse that much of the cache.
    answer_shared = std::min(answer_shared, common_prefix_length(reference, row.prompt_ids));
    answer_shared = std::min<int64_t>(answer_shared, static_cast<int64_t>(row.prompt_ids.size()) - 1);
    if (row.record_prompt_from > 0) answer_shared = std::min(answer_shared, row.record_prompt_from - 1);
    answer_rows.push_back(std::move(row));
  }
  const std::shared_ptr<const KvPrefix> answer_prefix =
      answer_shared > 0 ? std::make_shared<const KvPrefix>(shared_prefix->first(answer_shared)) : nullptr;
  const std::vector<BatchDecodeOutput> answers = decode_with_teacher_top_k(
      model, *loaded.tokenizer, answer_rows, context.stop_ids, options.top_k, answer_prefix, &counts);

  std::vector<Conversation> conversations;
  for (int64_t row = 0; row < end - first; ++row) {
    const BatchDecodeOutput& answer = answers[row];
    Conversation conversation;
    conversation.index = first + row;
    conversation.seed_type = seeds[row].type;
    conversation.chunk_start = chunk.start;
    conversation.chunk_tokens = chunk.length;
    conversation.question = question_texts[row];
    const std::vector<int32_t>& passage = quoted[row];
    conversation.answer = loaded.tokenizer->decode(passage, /*skip_special_tokens=*/true) +
                          loaded.tokenizer->decode(without_stop(answer), /*skip_special_tokens=*/true);
    // The student sequence: the question alone, then the answer (a quote's passage, then the teacher's
    // tokens); targets from the user turn on.
    conversation.input_ids = student_prompts[row];
    conversation.answer_start = static_cast<int64_t>(conversation.input_ids.size());
    conversation.target_start = conversation.answer_start - question_target_counts[row];
    conversation.input_ids.insert(conversation.input_ids.end(), passage.begin(), passage.end());
    conversation.input_ids.insert(conversation.input_ids.end(), answer.token_ids.begin(),
                                  answer.token_ids.end());
    conversation.target_ids = answer.prompt_top_ids;
    conversation.target_ids.insert(conversation.target_ids.end(), answer.top_ids.begin(),
                                   answer.top_ids.end());
    conversation.target_logprobs = answer.prompt_top_logprobs;
    conversation.target_logprobs.insert(conversation.target_logprobs.end(), answer.top_logprobs.begin(),
                                        answer.top_logprobs.end());
    conversations.push_back(std::move(conversation));
  }
  return conversations;
}

}  // namespace

std::string synthesis_system_message(const SynthesisOptions& options, const std::string& chunk_text) {
  const std::string placeholder = "{chunk}";
  const size_t at = options.system_prompt.find(placeholder);
  if (at == std::string::npos) {
    throw InvalidArgumentError(
        "the synthesis system prompt must contain {chunk} where the corpus chunk goes");
  }
  std::string message = options.system_prompt;
  message.replace(at, placeholder.size(), chunk_text);
  return message;
}

std::vector<int32_t> end_of_turn_ids(const Tokenizer& tokenizer) {
  std::vector<int32_t> ids;
  if (tokenizer.eos_token_id()) ids.push_back(*tokenizer.eos_token_id());
  for (const char* piece : {"<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<|end_of_text|>"}) {
    const std::optional<int32_t> id = tokenizer.token_id(piece);
    if (id && tokenizer.is_special(*id) && std::find(ids.begin(), ids.end(), *id) == ids.end())
      ids.push_back(*id);
  }
  return ids;
}

int64_t longest_chunk_allowed(const LoadedModel& model, const SynthesisOptions& options) {
  // The longest prompt around a chunk: the system message without the chunk (but with the description)
  // and the longest seed prompt or a question of max_question_tokens, whichever template turn is longer.
  const std::string empty_chunk =
      options.chunks.description.empty() ? "" : options.chunks.description + "\n\n";
  const std::string system = synthesis_system_message(options, empty_chunk);
  int64_t around = 0;
  for (const std::string& seed : all_seed_prompt_texts()) {
    around = std::max<int64_t>(around, model.encode_chat({{"system", system}, {"user", seed}}, true).size());
  }
  const int64_t answer_prompt =
      static_cast<int64_t>(model.encode_chat({{"system", system}, {"user", ""}}, true).size()) +
      options.max_question_tokens;
  const int64_t question_total = around + options.max_question_tokens;
  const int64_t answer_total = answer_prompt + options.max_answer_tokens;
  return model.model->config().max_position_embeddings - std::max(question_total, answer_total) -
         kRetokenizationSlack;
}

DatasetHeader synthesis_header(const LoadedModel& model, const std::string& corpus_text,
                               int64_t corpus_tokens, const SynthesisOptions& options) {
  DatasetHeader header;
  header.model = options.model_name.empty() ? model.files.name : options.model_name;
  ModelFingerprint fingerprint = fingerprint_model(model.files, model.model->config());
  fingerprint.model_name.clear();
  header.model_fingerprint = fingerprint.to_json();
  // The path the model was loaded from is not part of its identity.
  header.model_fingerprint.erase("model_name");
  header.corpus_sha256 = sha256_hex(corpus_text);
  header.corpus_tokens = corpus_tokens;
  header.seed = options.seed;
  header.top_k = std::min<int64_t>(options.top_k, model.model->config().vocab_size);
  header.settings = {
      {"generator", kGeneratorRevision},
      {"min_chunk_tokens", options.chunks.min_tokens},
      {"max_chunk_tokens", options.chunks.max_tokens},
      {"description", options.chunks.description},
      {"chunk_placement", chunk_placement_name(options.chunks.placement)},
      {"conversations_per_chunk", options.conversations_per_chunk},
      {"max_question_tokens", options.max_question_tokens},
      {"max_answer_tokens", options.max_answer_tokens},
      {"question_temperature", options.question_temperature},
      {"answer_temperature", 0.0},
      {"system_prompt", options.system_prompt},
      {"seed_prompt_types", options.seed_types},
      {"dtype", dtype_name(model.model->dtype())},
      {"student_framing", framing_name(options.student_framing)},
  };
  return header;
}

std::vector<BatchDecodeOutput> decode_with_teacher_top_k(const Model& model, const Tokenizer& tokenizer,
                                                         const std::vector<BatchDecodeRow>& rows,
                                                         const std::vector<int32_t>& stop_ids,
                                                         int64_t record_top_k,
                                                         const std::shared_ptr<const KvPrefix>& shared_prefix,
                                                         BatchDecodeCounts* counts) {
  c10::InferenceMode inference_mode;
  TORCH_CHECK(!rows.empty(), "decode_with_teacher_top_k: no rows");
  const int64_t shared_length = shared_prefix ? shared_prefix->length() : 0;
  // Each row runs as a generation request: the rest of its prompt after the shared prefix.
  std::vector<GenerationRequest> requests(rows.size());
  for (size_t index = 0; index < rows.size(); ++index) {
    const BatchDecodeRow& row = rows[index];
    TORCH_CHECK(static_cast<int64_t>(row.prompt_ids.size()) > shared_length,
                "decode_with_teacher_top_k: a prompt is not longer than the shared prefix");
    TORCH_CHECK(
        row.record_prompt_from == 0 ||
            (row.record_prompt_from > shared_length &&
             row.record_prompt_from <= static_cast<int64_t>(row.prompt_ids.size())),
        "decode_with_teacher_top_k: record_prompt_from must lie after the shared prefix, inside the prompt");
    GenerationRequest& request = requests[index];
    request.prompt_ids.assign(row.prompt_ids.begin() + shared_length, row.prompt_ids.end());
    request.prefixes = {shared_prefix};
    request.sampling.temperature = row.temperature;
    request.sampling.seed = row.sampling_seed;
    request.max_new_tokens = row.max_new_tokens;
    request.stop_at_eos = false;  // the stop tokens are exactly stop_ids
    request.stop_token_ids = stop_ids;
    if (record_top_k > 0 && row.record_prompt_from > 0)
      request.prompt_logits_from = row.record_prompt_from - shared_length;
  }

  std::vector<BatchDecodeOutput> outputs(rows.size());
  DecodeHooks hooks;
  if (record_top_k > 0) {
    // Every generated token's distribution: the teacher's top-k of each row, recorded before it samples.
    hooks.on_logits = [&](const std::vector<RowId>& ids, const at::Tensor& logits) {
      const auto [top_ids, top_log_probs] = top_log_probabilities(logits, record_top_k);  // [N, K] each
      const int64_t k = top_ids.size(1);
      for (size_t index = 0; index < ids.size(); ++index) {
        BatchDecodeOutput& output = outputs[ids[index]];
        const int32_t* id_row = top_ids.data_ptr<int32_t>() + index * k;
        const float* value_row = top_log_probs.data_ptr<float>() + index * k;
        output.top_ids.insert(output.top_ids.end(), id_row, id_row + k);
        output.top_logprobs.insert(output.top_logprobs.end(), value_row, value_row + k);
      }
    };
    // The prompt tokens' distributions, from the prefill (the question's tokens).
    hooks.on_prompt_logits = [&](RowId id, const at::Tensor& logits) {
      const auto [top_ids, top_log_probs] = top_log_probabilities(logits, record_top_k);  // [m, K] each
      BatchDecodeOutput& output = outputs[id];
      output.prompt_top_ids.assign(top_ids.data_ptr<int32_t>(),
                                   top_ids.data_ptr<int32_t>() + top_ids.numel());
      output.prompt_top_logprobs.assign(top_log_probs.data_ptr<float>(),
                                        top_log_probs.data_ptr<float>() + top_log_probs.numel());
    };
  }
  hooks.on_finished = [&](RowId id, GenerationResult result) {
    BatchDecodeOutput& output = outputs[id];
    output.token_ids = std::move(result.token_ids);
    output.stopped = result.stop_token_id >= 0;
    if (output.stopped)
      output.token_ids.push_back(result.stop_token_id);  // the dataset keeps the end of turn
  };
  DecodeBatch batch(model, tokenizer, std::move(hooks));
  std::vector<const GenerationRequest*> pointers;
  for (const GenerationRequest& request : requests) pointers.push_back(&request);
  batch.add(pointers);
  while (!batch.empty()) batch.step();
  if (counts) {
    counts->prefill_tokens += batch.counts().prefill_tokens;
    counts->generated_tokens += batch.counts().generated_tokens;
  }
  return outputs;
}

namespace {

// The progress bar's rates: tokens run through the model as prompts (chunks, questions, and the answers
// that quote conversations score without generating) and tokens generated, each per second of synthesis.
std::string token_rates(const BatchDecodeCounts& counts, double seconds) {
  const double per_second = seconds > 0 ? 1.0 / seconds : 0.0;
  return fmt::format("{:.0f} prompt + {:.1f} generated tok/s", counts.prefill_tokens * per_second,
                     counts.generated_tokens * per_second);
}

std::string group_file_path(const std::string& groups_folder, int64_t group) {
  return fmt::format("{}/group-{:08d}.jsonl", groups_folder, group);
}

// Reads a group file written by synthesize_in_groups: the header line, then the group's conversations.
std::vector<Conversation> read_group_file(const std::string& path, const std::string& header_line,
                                          const DatasetHeader& header, int64_t expected) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw FileNotFoundError(describe_file_problem(path, "cannot be read", "check its permissions"));
  std::string line;
  const std::string folder = std::filesystem::path(path).parent_path().string();
  if (!std::getline(file, line) || line != header_line) {
    throw MismatchError(describe_file_problem(
        path, "was synthesized with other settings than this run's",
        "delete the folder " + folder + " (an interrupted run's parts) or rerun that run's command"));
  }
  std::vector<Conversation> conversations;
  for (int64_t number = 2; std::getline(file, line); ++number) {
    conversations.push_back(conversation_from_json_line(line, header.top_k, header.version,
                                                        fmt::format("{} line {}", path, number)));
  }
  if (static_cast<int64_t>(conversations.size()) != expected) {
    throw FormatError(describe_file_problem(
        path, fmt::format("holds {} conversations, expected {}", conversations.size(), expected),
        "delete it: the run makes it again"));
  }
  return conversations;
}

// True when `path` holds a finished group for this run: our header line and `expected` conversation lines.
// Anything else (missing, or left by a run with other settings or another --samples) is made again.
bool group_file_is_finished(const std::string& path, const std::string& header_line, int64_t expected) {
  std::ifstream file(path, std::ios::binary);
  std::string line;
  if (!file || !std::getline(file, line) || line != header_line) return false;
  int64_t lines = 0;
  while (std::getline(file, line)) ++lines;
  return lines == expected;
}

// Synthesis in chunk groups across the ranks of a run (docs/distributed.md): rank r generates groups
// r, r + W, ... of those the file does not hold yet, each written atomically to
// <dataset>.groups/group-<g>.jsonl (the header line, then its conversations), so an interrupted run
// continues with any world size. When every rank is done, rank 0 appends the groups in order through a
// DatasetWriter, exactly as one process appends them, so the file is the same bytes.
SynthesisStats synthesize_in_groups(const SynthesisContext& context, const ProcessGroup& ranks,
                                    const DatasetHeader& header, const std::string& dataset_path) {
  const SynthesisOptions& options = *context.options;
  const int64_t per_group = options.conversations_per_chunk;
  const std::string header_line = dataset_header_line(header);
  ranks.check_same_as_writer(header_line, "the synthesis settings (corpus, model, options)");
  // Rank 0 alone opens the file (checking its header, cutting away a torn last line).
  std::unique_ptr<DatasetWriter> writer;
  at::Tensor existing = at::zeros({1}, at::kLong);
  if (ranks.writes()) {
    writer = std::make_unique<DatasetWriter>(dataset_path, header);
    existing.fill_(writer->conversation_count());
  }
  ranks.broadcast(existing, "sharing the dataset's length");
  SynthesisStats stats;
  stats.existing_conversations = existing.item<int64_t>();
  stats.rank_conversations.assign(ranks.world_size(), 0);
  if (stats.existing_conversations >= options.samples) return stats;

  const std::string groups_folder = dataset_path + ".groups";
  std::filesystem::create_directories(groups_folder);
  const int64_t first_group = stats.existing_conversations / per_group;
  const int64_t group_count = (options.samples + per_group - 1) / per_group - first_group;
  const auto start = std::chrono::steady_clock::now();
  ProgressBar progress("synthesize", options.samples - stats.existing_conversations, "conversations",
                       options.show_progress && ranks.writes());
  int64_t shown = 0;
  BatchDecodeCounts counts;
  SharedPrefill last_prefill;
  for (const int64_t position : ranks.share(group_count)) {
    const int64_t group = first_group + position;
    const int64_t first = std::max(group * per_group, stats.existing_conversations);
    const int64_t end = std::min((group + 1) * per_group, options.samples);
    const std::string path = group_file_path(groups_folder, group);
    // A finished file is an interrupted run's work (with any world size): merged below as it is.
    if (!group_file_is_finished(path, header_line, end - group * per_group)) {
      std::string text = header_line + "\n";
      for (const Conversation& conversation :
           generate_group(context, group, group * per_group, end, last_prefill, counts)) {
        text += conversation_to_json_line(conversation) + "\n";
      }
      write_file_atomic(path, text);
      stats.rank_conversations[ranks.rank()] += end - group * per_group;
    }
    const int64_t done = ranks.add_to_counter("synthesized conversations", end - first);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    progress.advance(std::max<int64_t>(done - shown, 0), token_rates(counts, seconds) + " on rank 0");
    shown = std::max(shown, done);
  }
  ranks.wait_for_all("synthesis");
  if (writer) {
    for (int64_t group = first_group; group < first_group + group_count; ++group) {
      const int64_t end = std::min((group + 1) * per_group, options.samples);
      for (const Conversation& conversation : read_group_file(group_file_path(groups_folder, group),
                                                              header_line, header, end - group * per_group)) {
        if (conversation.index < writer->conversation_count()) continue;  // already in the file
        writer->append(conversation);
        ++stats.written_conversations;
        if (options.on_conversation) options.on_conversation(conversation);
      }
    }
    std::filesystem::remove_all(groups_folder);
  }
  progress.finish();
  // The others go on (to training, in `study`) only once the file is whole.
  ranks.wait_for_all("merging the dataset");
  at::Tensor totals = at::tensor({counts.generated_tokens, counts.prefill_tokens}, at::kLong);
  ranks.all_reduce_sum(totals, "adding up the synthesis counts");
  at::Tensor per_rank = at::tensor(stats.rank_conversations, at::kLong);
  ranks.all_reduce_sum(per_rank, "adding up the synthesis counts");
  stats.generated_tokens = totals[0].item<int64_t>();
  stats.prefill_tokens = totals[1].item<int64_t>();
  for (int64_t rank = 0; rank < ranks.world_size(); ++rank)
    stats.rank_conversations[rank] = per_rank[rank].item<int64_t>();
  at::Tensor written = at::full({1}, stats.written_conversations, at::kLong);
  ranks.broadcast(written, "adding up the synthesis counts");
  stats.written_conversations = written.item<int64_t>();
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

}  // namespace

SynthesisStats synthesize(const LoadedModel& model, const std::string& corpus_text,
                          const SynthesisOptions& options, const std::string& dataset_path) {
  if (options.samples < 0) throw InvalidArgumentError("--samples must be >= 0");
  if (options.conversations_per_chunk < 1) throw InvalidArgumentError("--batch must be >= 1");
  if (options.max_question_tokens < 1 || options.max_answer_tokens < 1) {
    throw InvalidArgumentError("--max-question-tokens and --max-answer-tokens must be >= 1");
  }
  if (options.question_temperature < 0) throw InvalidArgumentError("the question temperature must be >= 0");
  if (options.top_k < 1) throw InvalidArgumentError("top_k must be >= 1");
  if (!model.chat_template) {
    throw UnsupportedError(model.files.name +
                           ": the model has no chat template, which self-study needs to write "
                           "conversations (use an instruct/chat model)");
  }
  check_seed_prompt_types(options.seed_types);
  synthesis_system_message(options, "");  // validates the {chunk} placeholder

  std::vector<int32_t> corpus_ids = model.tokenizer->encode(corpus_text, /*add_special_tokens=*/false);
  const int64_t corpus_tokens = static_cast<int64_t>(corpus_ids.size());
  const Chunker chunker(*model.tokenizer, std::move(corpus_ids), options.chunks,
                        longest_chunk_allowed(model, options));

  const DatasetHeader header = synthesis_header(model, corpus_text, corpus_tokens, options);
  SynthesisContext context{&model, &options, &chunker, end_of_turn_ids(*model.tokenizer),
                           model.model->config().max_position_embeddings};
  // Across processes, or continuing a run across processes that was interrupted: in group files.
  const ProcessGroup single_process;
  const ProcessGroup& ranks = options.process_group ? *options.process_group : single_process;
  if (ranks.distributed() || std::filesystem::exists(dataset_path + ".groups")) {
    return synthesize_in_groups(context, ranks, header, dataset_path);
  }

  DatasetWriter writer(dataset_path, header);
  SynthesisStats stats;
  stats.existing_conversations = writer.conversation_count();
  stats.rank_conversations = {0};
  if (writer.conversation_count() >= options.samples) return stats;
  const auto start = std::chrono::steady_clock::now();
  ProgressBar progress("synthesize", options.samples - writer.conversation_count(), "conversations",
                       options.show_progress);
  BatchDecodeCounts counts;
  SharedPrefill last_prefill;
  const int64_t per_group = options.conversations_per_chunk;
  for (int64_t group = writer.conversation_count() / per_group; group * per_group < options.samples;
       ++group) {
    const int64_t first = group * per_group;
    const int64_t end = std::min(first + per_group, options.samples);
    const std::vector<Conversation> conversations =
        generate_group(context, group, first, end, last_prefill, counts);
    int64_t appended = 0;
    for (const Conversation& conversation : conversations) {
      if (conversation.index < writer.conversation_count()) continue;  // written before an interruption
      writer.append(conversation);
      ++stats.written_conversations;
      ++appended;
      if (options.on_conversation) options.on_conversation(conversation);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    progress.advance(appended, fmt::format("{}, chunk {} tokens", token_rates(counts, seconds),
                                           conversations.empty() ? 0 : conversations.front().chunk_tokens));
  }
  progress.finish();
  stats.generated_tokens = counts.generated_tokens;
  stats.prefill_tokens = counts.prefill_tokens;
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stats.rank_conversations = {stats.written_conversations};
  return stats;
}

}  // namespace cartridge
