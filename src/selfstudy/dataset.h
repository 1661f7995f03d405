// The self-study dataset file: synthetic conversations about a corpus with the teacher's top-k
// log-probabilities for every question and answer token (docs/dataset_format.md is the full description).
//
// `dataset.jsonl` is JSON Lines, UTF-8. Line 1 is a header (format name, version, model, corpus hash,
// seed, top_k, synthesis settings); every following line is one conversation. The writer appends one
// line per finished conversation and fsyncs it, so a crash loses at most the conversations in flight,
// and a rerun with the same settings continues where the file ends. A last line without its newline
// (a write cut short) is ignored by the reader and cut away by the writer before it appends.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cartridge/framing.h"

namespace cartridge {

inline constexpr const char* kDatasetFormat = "cartridge-selfstudy-dataset";
// Version 2 records targets for the question's tokens too (answer_start marks where the answer begins);
// version 1 files (answer targets only) are still read.
inline constexpr int64_t kDatasetVersion = 2;
inline constexpr int64_t kOldestReadableDatasetVersion = 1;

// Line 1 of the file.
struct DatasetHeader {
  int64_t version = kDatasetVersion;  // the file's format version (new files: kDatasetVersion)
  std::string model;                  // what --model was, as given (informational)
  nlohmann::json model_fingerprint;   // a string or an object identifying the base model
  std::string corpus_sha256;          // lowercase hex SHA-256 of the corpus file's bytes
  int64_t corpus_tokens = 0;          // tokens in the corpus (tokenized without special tokens)
  uint64_t seed = 0;                  // the synthesis seed (--seed)
  int64_t top_k = 20;                 // teacher entries stored per target position
  nlohmann::json settings = nlohmann::json::object();  // every synthesis setting that shapes the data

  // The header as one JSON object with the keys of docs/dataset_format.md.
  nlohmann::json to_json() const;
  // Parses and validates a header object; `where` names the file for errors. Throws UnsupportedError for
  // another format or version, FormatError for missing or mistyped fields.
  static DatasetHeader from_json(const nlohmann::json& object, const std::string& where);

  // True when a file with header `other` can be continued by a run with this header: everything equal
  // except `model` (the same model may be named by another path).
  bool same_data_as(const DatasetHeader& other) const;
};

// The framing a dataset's student sequences were written with (docs/framing.md): its header's
// settings.student_framing; new_chat for datasets from before framings were recorded. FormatError for a
// value that is not a framing name.
Framing dataset_framing(const DatasetHeader& header);

// One synthesized conversation (lines 2, 3, ...).
struct Conversation {
  int64_t index = 0;         // 0, 1, 2, ... in file order
  std::string seed_type;     // "structuring", "summarization", "question", "use_cases" or "creative"
  int64_t chunk_start = 0;   // first corpus token of the chunk the teacher saw
  int64_t chunk_tokens = 0;  // chunk length, tokens
  std::string question;      // the question (user turn) written by the model
  std::string answer;        // the teacher's answer, decoded (special tokens skipped)
  // The student sequence [T]: the chat template with one user turn (the question) and the generation
  // prompt, tokenized without special tokens, followed by the teacher's answer tokens (with its final
  // end-of-turn token when it produced one).
  std::vector<int32_t> input_ids;
  // Target j belongs to input_ids[target_start + j]: the student's logits at position target_start + j - 1
  // are trained towards the teacher's distribution for that token (recorded while the teacher read the
  // question or generated the answer).
  int64_t target_start = 0;
  // Index of the first answer token (target_start <= answer_start <= T): targets before it are the user
  // turn's tokens. Version 1 files have answer targets only (answer_start == target_start).
  int64_t answer_start = 0;
  // [N, K] row-major, N = T - target_start, K = top_k of the header: the teacher's top-k token ids per
  // target, by decreasing probability, and their full-vocabulary log-probabilities (not renormalised).
  std::vector<int32_t> target_ids;
  std::vector<float> target_logprobs;

  int64_t num_targets() const { return static_cast<int64_t>(input_ids.size()) - target_start; }  // N
  int64_t num_question_targets() const { return answer_start - target_start; }  // the first rows of N
};

// The same conversation with only its answer tokens' targets (the question rows dropped).
Conversation with_answer_targets_only(const Conversation& conversation);

// Appends conversations to a dataset file, continuing an existing one. Not copyable; one writer per file
// (an exclusive advisory lock refuses a second process on the same file).
class DatasetWriter {
 public:
  // Opens `path`. A missing or empty file (or one cut short inside its header line) is created with
  // `header`; an existing file must have been made with the same data settings (DatasetHeader::same_data_as),
  // otherwise MismatchError tells the user to choose another output folder or delete the file. A last line
  // without a trailing newline is truncated away. Throws FormatError for a damaged file.
  DatasetWriter(const std::string& path, const DatasetHeader& header);
  ~DatasetWriter();
  DatasetWriter(const DatasetWriter&) = delete;
  DatasetWriter& operator=(const DatasetWriter&) = delete;

  // Conversations in the file (their indices are 0 .. count-1).
  int64_t conversation_count() const { return count_; }
  const DatasetHeader& header() const { return header_; }

  // Appends one line and flushes it to disk. `conversation.index` must equal conversation_count() and
  // its targets must have header().top_k entries each (internal invariants, checked).
  void append(const Conversation& conversation);

 private:
  std::string path_;
  DatasetHeader header_;
  int descriptor_ = -1;
  int64_t count_ = 0;
};

struct Dataset {
  DatasetHeader header;
  std::vector<Conversation> conversations;
};

// Reads and validates a whole dataset file. A last line without a trailing newline is ignored (a write
// cut short by a crash). Throws FileNotFoundError, UnsupportedError (unknown format or version) or
// FormatError naming the file and line.
Dataset read_dataset(const std::string& path);

// Throws FormatError naming the first conversation (its line in the file: index + 2) with a token id, in
// input_ids or the teacher's top-k, outside 0..vocab_size-1: a dataset made with another model or damaged.
void check_token_ids(const Dataset& dataset, int64_t vocab_size);

// Reads only the header (line 1).
DatasetHeader read_dataset_header(const std::string& path);

// The header line (without the newline) the writer stores: the keys in the documented order.
std::string dataset_header_line(const DatasetHeader& header);

// The JSON line (without the newline) the writer stores for `conversation`. Floats are written in their
// shortest form that reads back to the same float32.
std::string conversation_to_json_line(const Conversation& conversation);

// Parses and validates one conversation line of a file of format `version`; `top_k` is the header's, `where`
// names file and line.
Conversation conversation_from_json_line(const std::string& line, int64_t top_k, int64_t version,
                                         const std::string& where);

}  // namespace cartridge
