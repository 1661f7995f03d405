// The OpenAI HTTP API as this server speaks it: parsing and validating request bodies of
// /v1/completions and /v1/chat/completions, and building responses, stream chunks and error bodies with
// OpenAI's shapes (https://platform.openai.com/docs/api-reference). Pure functions: no model, no sockets.
#pragma once

#include <cstdint>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "generate/generation_request.h"
#include "generate/sampler.h"
#include "tokenizer/chat_template.h"

namespace cartridge {

// An error for the client: HTTP status plus OpenAI's error object
// {"error": {"message", "type", "param", "code"}}.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string type, std::string code, std::string message, std::string param = "")
      : std::runtime_error(message),
        status(status),
        type(std::move(type)),
        code(std::move(code)),
        param(std::move(param)) {}
  int status;         // HTTP status, 4xx or 5xx
  std::string type;   // "invalid_request_error", "not_found_error", "rate_limit_error", "server_error"
  std::string code;   // machine-readable, e.g. "model_not_found"
  std::string param;  // the request field at fault, "" when none
};

// {"error": {...}} for `error`.
nlohmann::json error_json(const ApiError& error);
// Maps an exception from the library to the error the client gets: typed user errors (util/error.h) become
// 4xx (a missing cartridge 404, the rest 400), anything else 500.
ApiError to_api_error(const std::exception& error);

enum class Endpoint { kCompletions, kChatCompletions };

struct ProtocolLimits {
  std::string base_model_id;               // the `model` that means "no cartridge"
  int64_t max_tokens_limit = 2048;         // largest max_tokens a request may ask for
  int64_t default_completion_tokens = 16;  // max_tokens when /v1/completions omits it (OpenAI's default)
  int64_t max_stop_strings = 16;
};

struct ApiRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;                    // as sent, echoed in responses
  std::vector<std::string> cartridges;  // composed in this order; empty = the base model alone
  // /v1/completions: a text prompt, or token ids given directly.
  std::string prompt;
  std::optional<std::vector<int32_t>> prompt_ids;
  // /v1/chat/completions.
  std::vector<ChatMessage> messages;
  int64_t max_tokens = 16;
  bool max_tokens_given = false;  // false: the server may lower max_tokens to what the context has left
  SamplingOptions sampling;       // temperature (OpenAI's default 1), top_p, top_k, seed
  bool seed_given = false;        // false: the caller draws a random seed
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool ignore_eos = false;     // extra (as vLLM): keep going past end-of-sequence (benchmarks)
};

// Parses a request body. Throws ApiError (400) for malformed JSON, a missing or mistyped field, a value out
// of range, or an option this server does not implement (n > 1, logprobs, penalties, tools, ...).
// `model` names a cartridge, or the base model; the extra field `cartridges` (names, or objects with "id")
// lists cartridges to compose and needs `model` to be the base model. Also the extras `top_k` and
// `ignore_eos` (as vLLM).
ApiRequest parse_api_request(Endpoint endpoint, const std::string& body, const ProtocolLimits& limits);

// Whole responses (stream = false), with usage and llama.cpp's "timings" (generate/generation_timings.h).
// A stream's last chunk carries the timings too.
nlohmann::json completion_response(const ApiRequest& request, const std::string& id, int64_t created,
                                   const GenerationResult& result);
// One streamed chunk: `text` (may be empty) and, on the last one, the finish reason. For chat, `first`
// adds the assistant role to the delta.
nlohmann::json stream_chunk(const ApiRequest& request, const std::string& id, int64_t created,
                            const std::string& text, const std::optional<std::string>& finish_reason,
                            bool first);
// The extra last chunk with usage and no choices (stream_options.include_usage).
nlohmann::json usage_chunk(const ApiRequest& request, const std::string& id, int64_t created,
                           const GenerationResult& result);
nlohmann::json usage_json(const GenerationResult& result);

// "data: <json>\n\n", the server-sent-events framing OpenAI streams use.
std::string sse_event(const nlohmann::json& payload);
inline constexpr char kSseDone[] = "data: [DONE]\n\n";

}  // namespace cartridge
