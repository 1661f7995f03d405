#include "tokenizer/pre_tokenizer.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "tokenizer/unicode.h"

namespace cartridge {

const char* const kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

namespace {

// A stretch of a piece, and whether the pattern matched it.
struct Span {
  size_t start;
  size_t end;
  bool is_match;
};

const Regex& gpt2_regex() {
  static const Regex regex(kGpt2Pattern);
  return regex;
}

// The whole piece as alternating matched / unmatched spans, as HF's Pattern::find_matches.
std::vector<Span> regex_spans(const Regex& regex, std::string_view text) {
  std::vector<Span> spans;
  if (text.empty()) {
    spans.push_back({0, 0, false});
    return spans;
  }
  size_t previous = 0;
  for (const auto& [start, end] : regex.find_all(text)) {
    if (previous != start) spans.push_back({previous, start, false});
    spans.push_back({start, end, true});
    previous = end;
  }
  if (previous != text.size()) spans.push_back({previous, text.size(), false});
  return spans;
}

// Each character for which `predicate` holds is one match; the runs between are unmatched spans.
template <typename Predicate>
std::vector<Span> character_spans(std::string_view text, Predicate predicate) {
  std::vector<Span> spans;
  if (text.empty()) {
    spans.push_back({0, 0, false});
    return spans;
  }
  size_t last_offset = 0;
  size_t position = 0;
  while (position < text.size()) {
    const size_t start = position;
    const char32_t c = unicode::next_code_point(text, position);
    if (predicate(c)) {
      if (last_offset < start) spans.push_back({last_offset, start, false});
      spans.push_back({start, position, true});
      last_offset = position;
    }
  }
  if (text.size() > last_offset) spans.push_back({last_offset, text.size(), false});
  return spans;
}

// Applies HF's SplitDelimiterBehavior to `spans` and appends the non-empty pieces of `text` it keeps.
void emit_split(std::string_view text, std::vector<Span> spans, SplitBehavior behavior, bool invert,
                std::vector<std::string>& out) {
  if (invert) {
    for (Span& span : spans) span.is_match = !span.is_match;
  }
  std::vector<std::pair<size_t, size_t>> kept;
  kept.reserve(spans.size());
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Span& span : spans) kept.emplace_back(span.start, span.end);
      break;
    case SplitBehavior::kRemoved:
      for (const Span& span : spans) {
        if (!span.is_match) kept.emplace_back(span.start, span.end);
      }
      break;
    case SplitBehavior::kContiguous:
      for (const Span& span : spans) {
        if (span.is_match == previous_match && !kept.empty()) {
          kept.back().second = span.end;
        } else {
          kept.emplace_back(span.start, span.end);
        }
        previous_match = span.is_match;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Span& span : spans) {
        if (span.is_match && !previous_match && !kept.empty()) {
          kept.back().second = span.end;
        } else {
          kept.emplace_back(span.start, span.end);
        }
        previous_match = span.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      // Walks backwards so a match joins the piece after it.
      for (auto span = spans.rbegin(); span != spans.rend(); ++span) {
        if (span->is_match && !previous_match && !kept.empty()) {
          kept.back().first = span->start;
        } else {
          kept.emplace_back(span->start, span->end);
        }
        previous_match = span->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
  }
  for (const auto& [start, end] : kept) {
    if (end > start) out.emplace_back(text.substr(start, end - start));
  }
}

}  // namespace

std::string escape_regex_literal(std::string_view literal) {
  std::string out;
  for (const char c : literal) {
    const auto byte = static_cast<uint8_t>(c);
    const bool alphanumeric = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    // In PCRE2 a backslash before any ASCII non-alphanumeric character stands for that character.
    if (byte < 0x80 && !alphanumeric) out += '\\';
    out += c;
  }
  return out;
}

void PreTokenizer::add_regex_split(std::shared_ptr<const Regex> regex, SplitBehavior behavior, bool invert) {
  Step step;
  step.kind = Kind::kRegexSplit;
  step.regex = std::move(regex);
  step.behavior = behavior;
  step.invert = invert;
  steps_.push_back(std::move(step));
}

void PreTokenizer::add_byte_level(bool add_prefix_space, bool use_regex) {
  Step step;
  step.kind = Kind::kByteLevel;
  step.add_prefix_space = add_prefix_space;
  step.use_regex = use_regex;
  steps_.push_back(std::move(step));
}

void PreTokenizer::add_digits(bool individual_digits) {
  Step step;
  step.kind = Kind::kDigits;
  step.individual_digits = individual_digits;
  steps_.push_back(std::move(step));
}

void PreTokenizer::add_punctuation(SplitBehavior behavior) {
  Step step;
  step.kind = Kind::kPunctuation;
  step.behavior = behavior;
  steps_.push_back(std::move(step));
}

bool PreTokenizer::has_byte_level() const {
  for (const Step& step : steps_) {
    if (step.kind == Kind::kByteLevel) return true;
  }
  return false;
}

void PreTokenizer::apply(const Step& step, const std::string& piece, std::vector<std::string>& out) const {
  switch (step.kind) {
    case Kind::kRegexSplit:
      emit_split(piece, regex_spans(*step.regex, piece), step.behavior, step.invert, out);
      return;
    case Kind::kDigits:
      emit_split(piece, character_spans(piece, unicode::is_numeric),
                 step.individual_digits ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, false, out);
      return;
    case Kind::kPunctuation:
      emit_split(piece, character_spans(piece, unicode::is_punctuation), step.behavior, false, out);
      return;
    case Kind::kByteLevel: {
      std::string text;
      if (step.add_prefix_space && piece.front() != ' ') text = " " + piece;
      const std::string& source = text.empty() ? piece : text;
      std::vector<std::string> parts;
      if (step.use_regex) {
        emit_split(source, regex_spans(gpt2_regex(), source), SplitBehavior::kIsolated, false, parts);
      } else {
        parts.push_back(source);
      }
      for (const std::string& part : parts) {
        std::string mapped;
        mapped.reserve(part.size() * 2);
        unicode::append_byte_level(mapped, part);
        out.push_back(std::move(mapped));
      }
      return;
    }
  }
}

void PreTokenizer::split(std::string_view text, std::vector<std::string>& words) const {
  if (text.empty()) return;
  std::vector<std::string> pieces{std::string(text)};
  std::vector<std::string> next;
  for (const Step& step : steps_) {
    next.clear();
    for (const std::string& piece : pieces) apply(step, piece, next);
    pieces.swap(next);
  }
  for (std::string& piece : pieces) words.push_back(std::move(piece));
}

}  // namespace cartridge
