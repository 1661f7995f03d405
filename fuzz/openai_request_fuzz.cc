// Fuzz target: request bodies of /v1/completions and /v1/chat/completions (serve/openai_protocol.h).
// Every input is parsed for both endpoints. A rejected body must come back as an ApiError (or another
// exception the server maps with to_api_error), whose error body must serialise; an accepted one must
// have values inside the limits and must serialise as responses and stream chunks.
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>

#include "fuzz_util.h"
#include "serve/openai_protocol.h"

namespace {

void check(bool condition, const char* what) { fuzz::check(condition, "openai_request_fuzz", what); }

const cartridge::ProtocolLimits& limits() {
  static const cartridge::ProtocolLimits result = [] {
    cartridge::ProtocolLimits limits;
    limits.base_model_id = "base";
    limits.max_tokens_limit = 100;
    return limits;
  }();
  return result;
}

void exercise(cartridge::Endpoint endpoint, const std::string& body) {
  cartridge::ApiRequest request;
  try {
    request = cartridge::parse_api_request(endpoint, body, limits());
  } catch (const cartridge::ApiError& error) {
    check(error.status >= 400 && error.status < 600, "ApiError status is 4xx/5xx");
    (void)cartridge::sse_event(cartridge::error_json(error));
    return;
  } catch (const std::exception& error) {
    // Expected outcome too: the server turns it into an error body.
    (void)cartridge::sse_event(cartridge::error_json(cartridge::to_api_error(error)));
    return;
  }
  check(request.endpoint == endpoint, "endpoint echoed");
  check(request.max_tokens >= 0 && request.max_tokens <= limits().max_tokens_limit, "max_tokens in range");
  check(static_cast<int64_t>(request.stop.size()) <= limits().max_stop_strings, "stop strings bounded");
  check(request.include_usage ? request.stream : true, "include_usage needs stream");
  check(!(request.sampling.temperature < 0.0), "temperature not negative");
  check(request.sampling.top_p > 0.0 && request.sampling.top_p <= 1.0, "top_p in (0, 1]");
  check(request.sampling.top_k >= 0, "top_k not negative");
  if (endpoint == cartridge::Endpoint::kChatCompletions) {
    check(!request.messages.empty(), "chat request has messages");
  }

  cartridge::GenerationResult result;
  result.token_ids = {1, 2, 3};
  result.text = request.prompt.substr(0, 16) + "\xff";  // a model may emit any bytes
  result.finish_reason = "length";
  result.prompt_tokens = 7;
  (void)cartridge::sse_event(cartridge::completion_response(request, "id-1", 0, result));
  (void)cartridge::sse_event(cartridge::stream_chunk(request, "id-1", 0, result.text, std::nullopt, true));
  (void)cartridge::sse_event(cartridge::stream_chunk(request, "id-1", 0, "", std::string("stop"), false));
  (void)cartridge::sse_event(cartridge::usage_chunk(request, "id-1", 0, result));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  exercise(cartridge::Endpoint::kCompletions, body);
  exercise(cartridge::Endpoint::kChatCompletions, body);
  return 0;
}
