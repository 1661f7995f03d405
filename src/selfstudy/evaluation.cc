#include "selfstudy/evaluation.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "generate/generator.h"
#include "io/json_number.h"
#include "selfstudy/trainer.h"
#include "util/error.h"
#include "util/mapped_file.h"
#include "util/progress.h"

namespace cartridge {

namespace {

using Json = nlohmann::json;

constexpr double kNotComputed = std::numeric_limits<double>::quiet_NaN();

// What one condition runs: every row is `context` (a prefix of P slots, may be null) followed by the row's
// own tokens, which start at position P.
struct PreparedRows {
  std::shared_ptr<const KvPrefix> context;
  int64_t shared_prompt_tokens = 0;     // tokens common to every prompt, prefilled once into `context`
  std::vector<Conversation> questions;  // one per question: prompt suffix + answer, answer as one-hot targets
  std::vector<Conversation> heldout;    // held-out conversations with their prompt suffix
};

int64_t common_prefix_length(const std::vector<const std::vector<int32_t>*>& sequences) {
  if (sequences.empty()) return 0;
  int64_t length = static_cast<int64_t>(sequences.front()->size());
  for (const auto* sequence : sequences) {
    int64_t same = 0;
    const int64_t limit = std::min<int64_t>(length, static_cast<int64_t>(sequence->size()));
    while (same < limit && (*sequence)[same] == (*sequences.front())[same]) ++same;
    length = same;
  }
  return length;
}

// The base prefix (may be null) followed by `tokens` prefilled at positions P..P+n-1, as one prefix.
std::shared_ptr<const KvPrefix> extend_prefix(const Model& model, const std::shared_ptr<const KvPrefix>& base,
                                              const std::vector<int32_t>& tokens) {
  if (tokens.empty()) return base;
  at::NoGradGuard no_grad;
  KvCache cache = model.new_cache(1, base.get());
  const at::Tensor ids =
      at::tensor(std::vector<int64_t>(tokens.begin(), tokens.end()), at::TensorOptions().dtype(at::kLong))
          .view({1, -1})
          .to(model.device());
  const at::Tensor mask = at::ones_like(ids, at::TensorOptions().dtype(at::kBool));
  ForwardOptions last_only;
  last_only.last_token_only = true;
  model.forward(ids, mask, cache, last_only);
  TORCH_CHECK(cache.slot_mask().all().item<bool>(), "a batch-1 prefill left padding slots");
  const KvPrefix extended = cache.row_prefix(0, cache.length());
  auto prefix = std::make_shared<KvPrefix>();
  for (int64_t layer = 0; layer < extended.num_layers(); ++layer) {
    prefix->keys.push_back(extended.keys[layer].contiguous());      // [H_kv, P + n, D]
    prefix->values.push_back(extended.values[layer].contiguous());  // [H_kv, P + n, D]
  }
  return prefix;
}

// The answers tokenized without special tokens; an answer with no tokens is an error naming the question.
std::vector<std::vector<int32_t>> answer_token_ids(const LoadedModel& loaded,
                                                   const std::vector<QuestionAnswer>& questions) {
  std::vector<std::vector<int32_t>> answer_ids;
  for (size_t index = 0; index < questions.size(); ++index) {
    answer_ids.push_back(loaded.tokenizer->encode(questions[index].answer, /*add_special_tokens=*/false));
    if (answer_ids.back().empty()) {
      throw InvalidArgumentError(fmt::format("question {} has an answer with no tokens", index + 1));
    }
  }
  return answer_ids;
}

// `prompt` then `answer`, the answer's tokens as one-hot targets (log-probability 0: probability 1), so
// the distillation cross-entropy of a target is the answer token's NLL.
Conversation one_hot_row(int64_t index, std::vector<int32_t> prompt, const std::vector<int32_t>& answer) {
  Conversation row;
  row.index = index;
  row.input_ids = std::move(prompt);
  row.target_start = row.answer_start = static_cast<int64_t>(row.input_ids.size());
  row.input_ids.insert(row.input_ids.end(), answer.begin(), answer.end());
  row.target_ids = answer;
  row.target_logprobs.assign(answer.size(), 0.0f);
  return row;
}

std::string kind_name(ContextKind kind) {
  switch (kind) {
    case ContextKind::kNone: return "none";
    case ContextKind::kInContext: return "in_context";
    case ContextKind::kCartridge: return "cartridge";
  }
  return "?";
}

std::string format_number(double value, int decimals) {
  return std::isfinite(value) ? fmt::format("{:.{}f}", value, decimals) : "-";
}

std::string format_bytes(int64_t bytes) {
  if (bytes >= (int64_t{1} << 30)) return fmt::format("{:.2f} GiB", bytes / double(int64_t{1} << 30));
  if (bytes >= (int64_t{1} << 20)) return fmt::format("{:.2f} MiB", bytes / double(int64_t{1} << 20));
  if (bytes >= 1024) return fmt::format("{:.1f} KiB", bytes / 1024.0);
  return fmt::format("{} B", bytes);
}

}  // namespace

std::vector<QuestionAnswer> read_question_answers(const std::string& path) {
  const std::string text = read_text_file(path);
  std::vector<QuestionAnswer> pairs;
  size_t line_start = 0;
  int64_t line_number = 0;
  while (line_start < text.size()) {
    size_t line_end = text.find('\n', line_start);
    if (line_end == std::string::npos) line_end = text.size();
    ++line_number;
    const std::string line = text.substr(line_start, line_end - line_start);
    line_start = line_end + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = fmt::format("{} line {}", path, line_number);
    Json object;
    try {
      object = Json::parse(line);
    } catch (const Json::exception&) {
      throw FormatError(describe_file_problem(
          where, "is not a JSON object", "write one {\"question\": ..., \"answer\": ...} object per line"));
    }
    if (!object.is_object() || !object.contains("question") || !object["question"].is_string() ||
        !object.contains("answer") || !object["answer"].is_string() ||
        object["answer"].get<std::string>().empty()) {
      throw FormatError(
          describe_file_problem(where, "needs string fields \"question\" and a non-empty \"answer\"",
                                "write one {\"question\": ..., \"answer\": ...} object per line"));
    }
    pairs.push_back({object["question"].get<std::string>(), object["answer"].get<std::string>()});
  }
  return pairs;
}

std::vector<Conversation> question_answer_rows(const LoadedModel& loaded,
                                               const std::vector<QuestionAnswer>& questions,
                                               Framing framing) {
  std::vector<std::vector<int32_t>> answer_ids = answer_token_ids(loaded, questions);
  std::vector<Conversation> rows;
  for (size_t index = 0; index < questions.size(); ++index) {
    rows.push_back(
        one_hot_row(static_cast<int64_t>(index),
                    loaded.encode_chat_after_cartridge({{"user", questions[index].question}}, framing,
                                                       /*add_generation_prompt=*/true),
                    answer_ids[index]));
  }
  return rows;
}

std::vector<ConditionScore> evaluate_conditions(const LoadedModel& loaded,
                                                const std::vector<QuestionAnswer>& questions,
                                                const std::vector<const Conversation*>& heldout,
                                                int64_t top_k,
                                                const std::vector<EvaluationCondition>& conditions,
                                                const EvaluationOptions& options) {
  const Model& model = *loaded.model;
  const int64_t context_limit = model.config().max_position_embeddings;
  const std::vector<std::vector<int32_t>> answer_ids = answer_token_ids(loaded, questions);
  ProgressBar progress("evaluating",
                       static_cast<int64_t>(conditions.size() * (questions.size() + heldout.size())), "rows",
                       options.show_progress);
  std::vector<ConditionScore> scores;
  for (const EvaluationCondition& condition : conditions) {
    ConditionScore score;
    score.name = condition.name;
    score.kind = condition.kind;
    score.heldout_kl = kNotComputed;
    score.answer_nll = kNotComputed;
    std::shared_ptr<const KvPrefix> base =
        condition.kind == ContextKind::kCartridge ? condition.cartridge : nullptr;
    const int64_t base_length = base ? base->length() : 0;

    // Every prompt of this condition, full length (before the shared part is cut off). No context and ICL
    // keep the plain chat template (ICL: the corpus as the system message); a cartridge's questions follow
    // it in its framing.
    const auto prompt_for = [&](const std::string& question) {
      switch (condition.kind) {
        case ContextKind::kNone:
          return loaded.encode_chat({{"user", question}}, /*add_generation_prompt=*/true);
        case ContextKind::kInContext:
          return loaded.encode_chat({{"system", condition.corpus}, {"user", question}},
                                    /*add_generation_prompt=*/true);
        case ContextKind::kCartridge: break;
      }
      return loaded.encode_chat_after_cartridge({{"user", question}}, condition.framing,
                                                /*add_generation_prompt=*/true);
    };
    std::vector<std::vector<int32_t>> question_prompts;
    for (const QuestionAnswer& pair : questions) question_prompts.push_back(prompt_for(pair.question));
    // Held-out conversations keep their student prompts where the framing is theirs (the tokens trained on).
    const bool stored_framing =
        (condition.kind == ContextKind::kNone && options.heldout_framing == Framing::kNewChat) ||
        (condition.kind == ContextKind::kCartridge && options.heldout_framing == condition.framing);
    std::vector<std::vector<int32_t>> heldout_prompts;
    for (const Conversation* conversation : heldout) {
      heldout_prompts.push_back(
          stored_framing ? std::vector<int32_t>(conversation->input_ids.begin(),
                                                conversation->input_ids.begin() + conversation->answer_start)
                         : prompt_for(conversation->question));
    }
    // The longest run of tokens every prompt starts with (at least one token of each prompt stays its own,
    // so the first target always has a logit position).
    std::vector<const std::vector<int32_t>*> all_prompts;
    int64_t shortest = std::numeric_limits<int64_t>::max();
    for (const auto& prompt : question_prompts) all_prompts.push_back(&prompt);
    for (const auto& prompt : heldout_prompts) all_prompts.push_back(&prompt);
    for (const auto* prompt : all_prompts)
      shortest = std::min<int64_t>(shortest, static_cast<int64_t>(prompt->size()));
    const int64_t shared =
        all_prompts.empty() ? 0 : std::min(common_prefix_length(all_prompts), shortest - 1);

    if (condition.kind == ContextKind::kCartridge) {
      score.context_tokens = base_length;
    } else if (condition.kind == ContextKind::kInContext) {
      score.context_tokens = shared;
    }
    score.context_kv_bytes = score.context_tokens * model.config().kv_bytes_per_token(model.dtype());

    // Rows: the prompt after the shared part, then the answer (or the teacher's tokens).
    int64_t longest_row = 0;
    std::vector<Conversation> question_rows, heldout_rows;
    for (size_t index = 0; index < questions.size(); ++index) {
      Conversation row = one_hot_row(
          static_cast<int64_t>(index),
          std::vector<int32_t>(question_prompts[index].begin() + shared, question_prompts[index].end()),
          answer_ids[index]);
      longest_row = std::max<int64_t>(longest_row, static_cast<int64_t>(row.input_ids.size()));
      question_rows.push_back(std::move(row));
    }
    for (size_t index = 0; index < heldout.size(); ++index) {
      // Scored on the answer's tokens only: the question's targets were recorded after the teacher's own
      // system turn, which the in-context condition's prompt does not have.
      const Conversation& original = *heldout[index];
      Conversation row = with_answer_targets_only(original);
      row.input_ids.assign(heldout_prompts[index].begin() + shared, heldout_prompts[index].end());
      row.target_start = row.answer_start = static_cast<int64_t>(row.input_ids.size());
      row.input_ids.insert(row.input_ids.end(), original.input_ids.begin() + original.answer_start,
                           original.input_ids.end());
      longest_row = std::max<int64_t>(longest_row, static_cast<int64_t>(row.input_ids.size()));
      heldout_rows.push_back(std::move(row));
    }
    const int64_t needed = base_length + shared + longest_row;
    if (context_limit > 0 && needed > context_limit) {
      score.skipped =
          fmt::format("needs {} positions, beyond the model's context of {}", needed, context_limit);
      progress.advance(static_cast<int64_t>(questions.size() + heldout.size()));
      scores.push_back(score);
      continue;
    }
    const std::vector<int32_t> shared_tokens =
        all_prompts.empty()
            ? std::vector<int32_t>()
            : std::vector<int32_t>(all_prompts.front()->begin(), all_prompts.front()->begin() + shared);
    const std::shared_ptr<const KvPrefix> context = extend_prefix(model, base, shared_tokens);

    if (!question_rows.empty()) {
      std::vector<const Conversation*> pointers;
      for (const Conversation& row : question_rows) pointers.push_back(&row);
      std::vector<double> means = mean_target_nlls(model, context.get(), pointers, options.max_batch_tokens,
                                                   [&](int64_t rows) { progress.advance(rows); });
      double sum = 0;
      for (const double mean : means) sum += mean;
      score.answer_nll = sum / static_cast<double>(means.size());
      for (const Conversation& row : question_rows) score.answer_tokens += row.num_targets();
      score.question_nlls = std::move(means);
    }
    if (!heldout_rows.empty()) {
      std::vector<const Conversation*> pointers;
      for (const Conversation& row : heldout_rows) pointers.push_back(&row);
      const auto [kl, positions] =
          mean_heldout_kl(model, context.get(), pointers, top_k, options.max_batch_tokens);
      score.heldout_kl = kl;
      score.heldout_positions = positions;
      progress.advance(static_cast<int64_t>(heldout_rows.size()));
    }
    scores.push_back(score);
  }
  progress.finish();
  return scores;
}

std::string format_evaluation_table(const std::vector<ConditionScore>& scores) {
  size_t name_width = 9;
  for (const ConditionScore& score : scores) name_width = std::max(name_width, score.name.size());
  std::string table = fmt::format("{:<{}}  {:>10}  {:>12}  {:>10}  {:>12}\n", "condition", name_width,
                                  "ctx tokens", "KV bytes", "answer NLL", "held-out KL");
  for (const ConditionScore& score : scores) {
    if (!score.skipped.empty()) {
      table += fmt::format("{:<{}}  skipped: {}\n", score.name, name_width, score.skipped);
      continue;
    }
    table += fmt::format("{:<{}}  {:>10}  {:>12}  {:>10}  {:>12}\n", score.name, name_width,
                         score.context_tokens, format_bytes(score.context_kv_bytes),
                         format_number(score.answer_nll, 4), format_number(score.heldout_kl, 4));
  }
  return table;
}

std::string format_evaluation_markdown(const std::vector<ConditionScore>& scores) {
  std::string table =
      "| condition | context tokens | context KV bytes | answer NLL (nats/token) | held-out KL (nats/token) "
      "|\n"
      "|---|---:|---:|---:|---:|\n";
  for (const ConditionScore& score : scores) {
    if (!score.skipped.empty()) {
      table += fmt::format("| {} | skipped: {} | | | |\n", score.name, score.skipped);
      continue;
    }
    table += fmt::format("| {} | {} | {} | {} | {} |\n", score.name, score.context_tokens,
                         format_bytes(score.context_kv_bytes), format_number(score.answer_nll, 4),
                         format_number(score.heldout_kl, 4));
  }
  return table;
}

nlohmann::json evaluation_to_json(const std::vector<ConditionScore>& scores) {
  Json rows = Json::array();
  for (const ConditionScore& score : scores) {
    Json row = {{"name", score.name},
                {"kind", kind_name(score.kind)},
                {"context_tokens", score.context_tokens},
                {"context_kv_bytes", score.context_kv_bytes},
                {"answer_nll", json_number(score.answer_nll)},
                {"answer_tokens", score.answer_tokens},
                {"answer_nll_per_question", score.question_nlls},
                {"heldout_kl", json_number(score.heldout_kl)},
                {"heldout_positions", score.heldout_positions}};
    if (!score.skipped.empty()) row["skipped"] = score.skipped;
    rows.push_back(row);
  }
  return {{"conditions", rows}};
}

}  // namespace cartridge
