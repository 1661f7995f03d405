// The byte-level BPE tokenizer of the models we run (SmolLM2, Llama 3, Qwen 2/2.5/3, GPT-2 style), loaded
// from a Hugging Face tokenizer.json (+ tokenizer_config.json) or from a GGUF file's tokenizer metadata.
// Encoding gives exactly the ids of transformers' `tokenizer(text)["input_ids"]`: added/special tokens
// are cut out first (HF's matching rules), the rest is normalized, pre-tokenized (regex splits, digits,
// punctuation, byte-level alphabet) and merged by rank, then the post-processor adds BOS/EOS.
//
// A Tokenizer is immutable and cheap to copy (copies share one state); one instance may be used by many
// threads at once. Loading errors are typed (util/error.h) with one line naming the file.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cartridge {

class GgufFile;
struct ModelFiles;
struct TokenizerState;

// Which pre-tokenizer a GGUF vocabulary gets from its `tokenizer.ggml.pre` name.
enum class GgufPreTokenizerSource {
  // As transformers builds the tokenizer of a GGUF (AutoTokenizer.from_pretrained(..., gguf_file=...)):
  // the Split regexes of its table for llama-bpe / qwen2 / gpt-4o / ..., GPT-2's ByteLevel regex for every
  // other name (smollm and starcoder included: their digit splitting is not applied), merges never
  // ignored. This matches transformers running the same GGUF, which the parity tests compare against.
  kTransformers,
  // As llama.cpp's llama-vocab.cpp: the original model's pre-tokenizer for each name (digits split one by
  // one for smollm/starcoder, deepseek's and falcon's splits, ignore_merges for the Llama-3 family) and
  // llama.cpp's add_bos defaults. This is what the llama.cpp vocab test vectors were made with.
  kLlamaCpp,
};

class Tokenizer {
 public:
  // Loads a tokenizer.json (model type BPE with a ByteLevel pre-tokenizer) and, when given,
  // tokenizer_config.json (named special tokens, chat_template, split_special_tokens). A
  // chat_template.jinja beside tokenizer.json takes precedence over tokenizer_config's template, as in
  // transformers. Throws FileNotFoundError, FormatError (malformed JSON or vocabulary) or
  // UnsupportedError (another model type, normalizer or pre-tokenizer).
  static Tokenizer from_tokenizer_json(const std::string& tokenizer_json_path,
                                       const std::string& tokenizer_config_path = "");

  // Builds the tokenizer from a GGUF's `tokenizer.ggml.*` metadata (model "gpt2" = byte-level BPE):
  // tokens, merges, token types (control tokens become special added tokens, user-defined ones plain
  // added tokens), bos/eos/unk/padding ids, add_bos_token/add_eos_token and tokenizer.chat_template.
  // Throws FormatError for a malformed vocabulary, UnsupportedError for another tokenizer model.
  static Tokenizer from_gguf(const GgufFile& gguf,
                             GgufPreTokenizerSource source = GgufPreTokenizerSource::kTransformers);

  // The GGUF file, or the folder's tokenizer.json (+ tokenizer_config.json, chat_template.jinja).
  // Throws FileNotFoundError when a folder has no tokenizer.json.
  static Tokenizer load(const ModelFiles& files);

  // Ids exactly as transformers' `tokenizer(text)["input_ids"]`; add_special_tokens=false leaves out what
  // the post-processor adds (BOS/EOS). Special-token strings inside `text` become their ids. Ill-formed
  // UTF-8 in `text` is read as U+FFFD, as Python's bytes.decode(errors="replace") would.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;

  // Text of `ids` as transformers' `tokenizer.decode(ids, skip_special_tokens=...)`: byte-level pieces
  // turned back into bytes, ill-formed UTF-8 replaced by U+FFFD, unknown ids dropped.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  // The raw bytes one token stands for (byte-level reversed, possibly part of a UTF-8 character); empty
  // for an unknown id. StreamingDecoder is built on this.
  std::string token_bytes(int32_t id) const;

  // The vocabulary string of `id` (e.g. "Ġhello"), or the added token's content. Throws
  // InvalidArgumentError for an id that has no token.
  std::string token_piece(int32_t id) const;
  // The id of a vocabulary string or added token's content.
  std::optional<int32_t> token_id(std::string_view piece) const;

  // One past the largest id of the vocabulary and added tokens (transformers' len(tokenizer)).
  int64_t vocab_size() const;

  std::optional<int32_t> bos_token_id() const;
  std::optional<int32_t> eos_token_id() const;
  std::optional<int32_t> pad_token_id() const;
  std::optional<int32_t> unk_token_id() const;
  // The token strings, "" when the model has none (chat templates read bos_token / eos_token).
  std::string bos_token() const;
  std::string eos_token() const;
  std::string pad_token() const;

  // Whether `id` is a special added token (control tokens such as <|im_end|>).
  bool is_special(int32_t id) const;

  // Ids the post-processor puts before and after every sequence when add_special_tokens is true.
  std::vector<int32_t> special_prefix_ids() const;
  std::vector<int32_t> special_suffix_ids() const;

  // The Jinja chat template ("" when the model has none): tokenizer_config.json's "chat_template"
  // (a string, or the "default" of a list of {name, template}), chat_template.jinja, or the GGUF's
  // tokenizer.chat_template.
  const std::string& chat_template() const;

  // Where the tokenizer was loaded from, for messages.
  const std::string& source() const;

 private:
  explicit Tokenizer(std::shared_ptr<const TokenizerState> state);
  std::shared_ptr<const TokenizerState> state_;
};

// Incremental decoding for streaming generation: feed ids one at a time and get the text they complete.
// Bytes of a UTF-8 character split across tokens are held back until the character is complete, so the
// pieces are always valid UTF-8, and their concatenation (with flush()) equals decode(all ids).
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = true);

  // The text completed by `id` (possibly empty).
  std::string push(int32_t id);
  // What is still held back (an unfinished character becomes U+FFFD); the decoder is then empty.
  std::string flush();

 private:
  Tokenizer tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;  // bytes of a character not yet complete (at most 3)
};

}  // namespace cartridge
