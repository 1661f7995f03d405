#include "tokenizer/tokenizer.h"

#include <filesystem>

#include "io/gguf.h"
#include "io/model_files.h"
#include "tokenizer/tokenizer_state.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace cartridge {

namespace {

// The bytes a token string stands for, as HF's ByteLevel decoder: when every character is in the
// byte-level alphabet each becomes its byte; otherwise (added tokens such as "héllo wörld") the string's
// own UTF-8 bytes are used.
void append_token_bytes(std::string& out, const std::string& content) {
  std::string bytes;
  bytes.reserve(content.size());
  size_t position = 0;
  while (position < content.size()) {
    const int byte = unicode::byte_from_code_point(unicode::next_code_point(content, position));
    if (byte < 0) {
      out += content;
      return;
    }
    bytes.push_back(static_cast<char>(byte));
  }
  out += bytes;
}

}  // namespace

std::optional<int32_t> lookup_token(const TokenizerState& state, std::string_view content) {
  if (const AddedToken* added = state.added.find_by_content(content)) return added->id;
  return state.model->token_id(content);
}

Tokenizer::Tokenizer(std::shared_ptr<const TokenizerState> state) : state_(std::move(state)) {}

Tokenizer Tokenizer::from_tokenizer_json(const std::string& tokenizer_json_path,
                                         const std::string& tokenizer_config_path) {
  // transformers reads a chat_template.jinja saved next to the tokenizer files.
  const std::filesystem::path beside =
      std::filesystem::path(tokenizer_json_path).parent_path() / "chat_template.jinja";
  std::error_code error;
  const std::string chat_template_path =
      std::filesystem::is_regular_file(beside, error) ? beside.string() : "";
  return Tokenizer(load_tokenizer_json_state(tokenizer_json_path, tokenizer_config_path, chat_template_path));
}

Tokenizer Tokenizer::from_gguf(const GgufFile& gguf, GgufPreTokenizerSource source) {
  return Tokenizer(load_gguf_state(gguf, source));
}

Tokenizer Tokenizer::load(const ModelFiles& files) {
  if (files.format == ModelFormat::kGguf) return from_gguf(GgufFile(files.gguf_path));
  if (files.tokenizer_json_path.empty()) {
    throw FileNotFoundError(describe_file_problem(
        files.folder, "no tokenizer.json in the model folder",
        "only byte-level BPE tokenizers saved as tokenizer.json are supported; re-save the tokenizer with "
        "transformers' save_pretrained, or use a GGUF file"));
  }
  return Tokenizer(load_tokenizer_json_state(files.tokenizer_json_path, files.tokenizer_config_path,
                                             files.chat_template_path));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const TokenizerState& state = *state_;
  std::string repaired;
  if (!unicode::is_valid_utf8(text)) {
    repaired = unicode::to_valid_utf8(text);
    text = repaired;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<AddedVocabulary::Piece> raw_pieces;
  std::vector<AddedVocabulary::Piece> normalized_pieces;
  std::vector<std::string> words;
  // 1. Added tokens matched on the raw text; 2. the rest normalized, then split on the added tokens
  // that match normalized text; 3. pre-tokenized into words; 4. each word merged (HF's order).
  state.added.split(text, false, state.split_special_tokens, raw_pieces);
  for (const AddedVocabulary::Piece& raw : raw_pieces) {
    if (raw.token_id >= 0) {
      ids.push_back(raw.token_id);
      continue;
    }
    std::string normalized;
    std::string_view piece = raw.text;
    if (!state.normalizer.empty()) {
      normalized = state.normalizer.apply(piece);
      piece = normalized;
    }
    normalized_pieces.clear();
    state.added.split(piece, true, state.split_special_tokens, normalized_pieces);
    for (const AddedVocabulary::Piece& part : normalized_pieces) {
      if (part.token_id >= 0) {
        ids.push_back(part.token_id);
        continue;
      }
      words.clear();
      state.pre_tokenizer.split(part.text, words);
      for (const std::string& word : words) state.model->encode_word(word, ids);
    }
  }
  if (add_special_tokens) ids = state.post_processor.apply(std::move(ids));
  return ids;
}

std::string Tokenizer::token_bytes(int32_t id) const {
  std::string bytes;
  if (const AddedToken* added = state_->added.find_by_id(id)) {
    append_token_bytes(bytes, added->content);
  } else if (const std::string* piece = state_->model->piece(id)) {
    append_token_bytes(bytes, *piece);
  }
  return bytes;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::string bytes;
  bytes.reserve(ids.size() * 4);
  for (const int32_t id : ids) {
    if (const AddedToken* added = state_->added.find_by_id(id)) {
      if (skip_special_tokens && added->special) continue;
      append_token_bytes(bytes, added->content);
    } else if (const std::string* piece = state_->model->piece(id)) {
      append_token_bytes(bytes, *piece);
    }
  }
  return unicode::to_valid_utf8(bytes);
}

std::string Tokenizer::token_piece(int32_t id) const {
  if (const AddedToken* added = state_->added.find_by_id(id)) return added->content;
  if (const std::string* piece = state_->model->piece(id)) return *piece;
  throw InvalidArgumentError("token id " + std::to_string(id) + " is not in the vocabulary of " +
                             state_->source + " (ids run from 0 to " + std::to_string(vocab_size() - 1) +
                             ")");
}

std::optional<int32_t> Tokenizer::token_id(std::string_view piece) const {
  return lookup_token(*state_, piece);
}

int64_t Tokenizer::vocab_size() const {
  int64_t limit = state_->model->id_limit();
  for (const AddedToken& token : state_->added.tokens()) limit = std::max<int64_t>(limit, token.id + 1);
  return limit;
}

std::optional<int32_t> Tokenizer::bos_token_id() const { return state_->bos.id; }
std::optional<int32_t> Tokenizer::eos_token_id() const { return state_->eos.id; }
std::optional<int32_t> Tokenizer::pad_token_id() const { return state_->pad.id; }
std::optional<int32_t> Tokenizer::unk_token_id() const { return state_->unk.id; }
std::string Tokenizer::bos_token() const { return state_->bos.content; }
std::string Tokenizer::eos_token() const { return state_->eos.content; }
std::string Tokenizer::pad_token() const { return state_->pad.content; }

bool Tokenizer::is_special(int32_t id) const {
  const AddedToken* added = state_->added.find_by_id(id);
  return added != nullptr && added->special;
}

std::vector<int32_t> Tokenizer::special_prefix_ids() const { return state_->post_processor.prefix(); }
std::vector<int32_t> Tokenizer::special_suffix_ids() const { return state_->post_processor.suffix(); }

const std::string& Tokenizer::chat_template() const { return state_->chat_template; }
const std::string& Tokenizer::source() const { return state_->source; }

StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

std::string StreamingDecoder::push(int32_t id) {
  if (skip_special_tokens_ && tokenizer_.is_special(id)) return std::string();
  pending_ += tokenizer_.token_bytes(id);
  std::string out;
  const auto* data = reinterpret_cast<const uint8_t*>(pending_.data());
  size_t position = 0;
  while (position < pending_.size()) {
    size_t length = 0;
    char32_t code_point = 0;
    const unicode::Utf8Status status =
        unicode::read_utf8(data + position, pending_.size() - position, length, code_point);
    if (status == unicode::Utf8Status::kIncomplete) break;  // wait for the next token's bytes
    if (status == unicode::Utf8Status::kComplete) {
      out.append(pending_, position, length);
    } else {
      unicode::append_utf8(out, unicode::kReplacementCharacter);
    }
    position += length;
  }
  pending_.erase(0, position);
  return out;
}

std::string StreamingDecoder::flush() {
  std::string out = unicode::to_valid_utf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace cartridge
