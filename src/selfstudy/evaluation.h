// Evaluating what a cartridge knows (`cartridge eval`): for questions about a corpus with reference answers,
// the mean per-token negative log-likelihood of each answer given its question, under several conditions:
//   - no context: the question alone (chat template, one user turn);
//   - in context (ICL): the whole corpus as a system message before the question;
//   - a cartridge: its KV prefix, then the question alone.
// Optionally also the held-out KL to the teacher on self-study conversations (the same split as training),
// over their answer tokens.
// Each condition reports the KV-cache bytes its context occupies.
//
// Answer tokens are the answer text tokenized without special tokens, appended to the rendered prompt
// (chat template with the generation prompt); the NLL of answer token i is -log softmax(logits at the
// position before it)[token]. A question's score is the mean over its answer tokens; the condition's score
// is the mean over questions (each question counts the same).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "generate/loaded_model.h"
#include "model/kv_prefix.h"
#include "selfstudy/dataset.h"

namespace cartridge {

struct QuestionAnswer {
  std::string question;
  std::string answer;
};

// Reads JSON Lines, one {"question": "...", "answer": "..."} object per non-empty line (other keys are
// ignored). Throws FileNotFoundError, or FormatError naming the file and line.
std::vector<QuestionAnswer> read_question_answers(const std::string& path);

// One row per question for scoring with a cartridge (TrainingOptions::validation_questions): the question
// as it follows a cartridge made for `framing` (one user turn, generation prompt;
// LoadedModel::encode_chat_after_cartridge) followed by the answer's tokens (without special tokens) as
// one-hot targets; Conversation::index is the question's place in the file. Throws InvalidArgumentError
// for an answer with no tokens, UnsupportedError without a chat template.
std::vector<Conversation> question_answer_rows(const LoadedModel& model,
                                               const std::vector<QuestionAnswer>& questions, Framing framing);

enum class ContextKind { kNone, kInContext, kCartridge };

struct EvaluationCondition {
  std::string name;  // shown in the table ("no context", "ICL", a folder, ...)
  ContextKind kind = ContextKind::kNone;
  std::shared_ptr<const KvPrefix> cartridge;  // kCartridge: keys/values in the model's dtype and device
  std::string corpus;                         // kInContext: the system message's content
  Framing framing = Framing::kNewChat;        // kCartridge: how the question follows the cartridge
};

struct ConditionScore {
  std::string name;
  ContextKind kind = ContextKind::kNone;
  // Tokens the condition keeps in the KV cache before the question: 0, the rendered corpus system turn,
  // or the cartridge's p. Bytes are those tokens' keys and values in the model's dtype.
  int64_t context_tokens = 0;
  int64_t context_kv_bytes = 0;
  double answer_nll = 0;              // mean over questions of the mean per-token NLL of the answer (nats)
  int64_t answer_tokens = 0;          // answer tokens scored, over all questions
  std::vector<double> question_nlls;  // per question, in file order: the mean NLL of its answer tokens
  double heldout_kl = 0;              // mean truncated KL per held-out answer token (NaN when not computed)
  int64_t heldout_positions = 0;
  std::string skipped;  // non-empty when the condition could not run (e.g. corpus beyond the context)
};

struct EvaluationOptions {
  int64_t max_batch_tokens = 4096;  // padded tokens per forward pass
  // The framing of the held-out conversations' student prompts (dataset_framing of their dataset): a
  // condition in that framing scores them as stored; another framing re-encodes each question.
  Framing heldout_framing = Framing::kNewChat;
  bool show_progress = true;
};

// Scores every condition on `questions` (may be empty) and, when `heldout` is not empty, on those
// conversations (held-out KL; `top_k` is the dataset's). The ICL condition prefills the corpus turn once
// and reuses it for every question. Throws UnsupportedError when the model has no chat template.
std::vector<ConditionScore> evaluate_conditions(const LoadedModel& model,
                                                const std::vector<QuestionAnswer>& questions,
                                                const std::vector<const Conversation*>& heldout,
                                                int64_t top_k,
                                                const std::vector<EvaluationCondition>& conditions,
                                                const EvaluationOptions& options = {});

// The results as a fixed-width text table (one row per condition) and as JSON.
std::string format_evaluation_table(const std::vector<ConditionScore>& scores);
std::string format_evaluation_markdown(const std::vector<ConditionScore>& scores);
nlohmann::json evaluation_to_json(const std::vector<ConditionScore>& scores);

}  // namespace cartridge
