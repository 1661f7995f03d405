// Self-study synthesis (docs/self_study.md: the paper's Algorithm 1 with one round): the model writes
// questions about random chunks of a corpus and answers them with the chunk in context; the answers' tokens
// and the teacher's top-k log-probabilities, recorded while generating (and for the question's tokens, from
// the prefill before the answer), become the dataset a cartridge is trained on (docs/dataset_format.md).
//
// Conversations come in groups of `conversations_per_chunk` that share one chunk: the chunk's system
// prompt is prefilled once (batch 1), its KV rows are replicated for the group, and the group's questions
// (sampled, temperature 0.6) and then its answers (greedy) are decoded as one batch.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cartridge/framing.h"
#include "generate/loaded_model.h"
#include "selfstudy/chunker.h"
#include "selfstudy/dataset.h"
#include "selfstudy/process_group.h"
#include "selfstudy/seed_prompts.h"

namespace cartridge {

// The teacher's system message; "{chunk}" is replaced by the chunk text. Shared by the question writer
// and the answerer, so both reuse one prefill of it.
extern const char* const kDefaultSynthesisSystemPrompt;

struct SynthesisOptions {
  int64_t samples = 256;  // conversations the file should hold when done
  uint64_t seed = 0;
  ChunkerOptions chunks;                 // chunk lengths (tokens) and the optional corpus description
  int64_t conversations_per_chunk = 16;  // conversations sharing one chunk, generated as one batch
  int64_t max_question_tokens = 512;
  int64_t max_answer_tokens = 1024;
  double question_temperature = 0.6;  // answers are always greedy
  int64_t top_k = 20;                 // teacher entries recorded per answer token
  std::vector<std::string> seed_types = seed_prompt_types();
  std::string system_prompt = kDefaultSynthesisSystemPrompt;  // must contain "{chunk}"
  // How the student sequence frames the question after the cartridge (docs/framing.md); recorded in the
  // header's settings as "student_framing", and so in the cartridges trained on the dataset.
  Framing student_framing = Framing::kSystemTurn;
  // Prefill each chunk's shared prompt once and replicate it for the group (true), or let every row prefill
  // its whole prompt (false; the same data up to rounding, for benchmarks).
  bool share_prefill = true;
  std::string model_name;     // recorded in the header's "model" (what the user passed)
  bool show_progress = true;  // progress bar on stderr
  // Called after each conversation is safely on disk (tests use it to interrupt a run).
  std::function<void(const Conversation&)> on_conversation;
  // The ranks of a run across processes (docs/distributed.md); null = this process alone. Each rank
  // generates its share of the chunk groups, rank 0 writes the file: the same bytes as one process writes.
  std::shared_ptr<const ProcessGroup> process_group;
};

struct SynthesisStats {
  int64_t existing_conversations = 0;       // already in the file when the run started
  int64_t written_conversations = 0;        // appended by this run
  int64_t generated_tokens = 0;             // question and answer tokens decoded by this run
  int64_t prefill_tokens = 0;               // prompt tokens run through the model by this run
  double seconds = 0;                       // wall time of the generation (model already loaded)
  std::vector<int64_t> rank_conversations;  // conversations each rank generated (one entry per rank)
};

// Generates conversations until `dataset_path` holds options.samples of them, continuing a file written by
// an earlier (interrupted) run with the same settings. Across processes (or continuing such a run), chunk
// groups go to <dataset_path>.groups/ first and rank 0 appends them in order when all are done. Throws
// InvalidArgumentError for bad options (or a corpus too short/long for them), MismatchError when the existing
// file was made with other settings, UnsupportedError when the model has no chat template.
SynthesisStats synthesize(const LoadedModel& model, const std::string& corpus_text,
                          const SynthesisOptions& options, const std::string& dataset_path);

// The header synthesize() writes for these inputs (corpus hash, model fingerprint, settings).
DatasetHeader synthesis_header(const LoadedModel& model, const std::string& corpus_text,
                               int64_t corpus_tokens, const SynthesisOptions& options);

// The most tokens a chunk may have so that the teacher's prompts and generations fit the model's context.
int64_t longest_chunk_allowed(const LoadedModel& model, const SynthesisOptions& options);

// The teacher's system message for `chunk_text` (options.system_prompt with {chunk} replaced).
std::string synthesis_system_message(const SynthesisOptions& options, const std::string& chunk_text);

// ---- decoding with the teacher's top-k recorded (used by synthesize; exposed for tests) ----

struct BatchDecodeRow {
  std::vector<int32_t> prompt_ids;  // the whole prompt, non-empty
  double temperature = 0;           // 0 = greedy
  uint64_t sampling_seed = 0;
  int64_t max_new_tokens = 1;
  // > 0: also record the top-k for the prompt's own tokens [record_prompt_from, prompt size), each from the
  // logits one position before it (the teacher's distribution over the question it was given). Must exceed
  // the shared prefix length (those logits are computed in this call). 0 = generated tokens only.
  int64_t record_prompt_from = 0;
};

struct BatchDecodeOutput {
  std::vector<int32_t> token_ids;   // generated tokens, the stop token included when the row stopped
  bool stopped = false;             // ended on a stop token (else on max_new_tokens)
  std::vector<int32_t> top_ids;     // [n, K] row-major when top-k was recorded (n = token_ids.size())
  std::vector<float> top_logprobs;  // [n, K] full-vocabulary log-softmax of the logits each token came from
  std::vector<int32_t> prompt_top_ids;     // [m, K] for the prompt tokens from record_prompt_from (m of them)
  std::vector<float> prompt_top_logprobs;  // [m, K] the same for their log-probabilities
};

struct BatchDecodeCounts {
  int64_t prefill_tokens = 0;
  int64_t generated_tokens = 0;
};

// Decodes all rows as one batch (a DecodeBatch) until each stops (a token in `stop_ids`) or reaches its
// max_new_tokens. `shared_prefix` (may be null) holds the keys and values of the first
// shared_prefix->length() prompt tokens, common to every row (a batch-1 prefill, e.g. the chunk's system
// message): rows attend to it instead of prefilling those tokens each; it must be shorter than every prompt.
// `record_top_k` > 0 records that many top log-probabilities per generated token (and per prompt token from
// each row's record_prompt_from).
std::vector<BatchDecodeOutput> decode_with_teacher_top_k(const Model& model, const Tokenizer& tokenizer,
                                                         const std::vector<BatchDecodeRow>& rows,
                                                         const std::vector<int32_t>& stop_ids,
                                                         int64_t record_top_k,
                                                         const std::shared_ptr<const KvPrefix>& shared_prefix,
                                                         BatchDecodeCounts* counts = nullptr);

// The tokens that end a turn for this tokenizer: its EOS and whichever of the usual end-of-turn special
// tokens (<|im_end|>, <|eot_id|>, <|end|>, <|endoftext|>, <|end_of_text|>) it has.
std::vector<int32_t> end_of_turn_ids(const Tokenizer& tokenizer);

}  // namespace cartridge
