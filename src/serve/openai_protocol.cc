#include "serve/openai_protocol.h"

#include <cmath>
#include <limits>

#include "util/error.h"

namespace cartridge {
namespace {

using json = nlohmann::json;

ApiError bad_request(const std::string& param, const std::string& message,
                     const std::string& code = "invalid_value") {
  return ApiError(400, "invalid_request_error", code, message, param);
}

// The field `name` of `body`, or nullptr when absent or null (OpenAI treats null as "not given").
const json* field(const json& body, const char* name) {
  auto found = body.find(name);
  if (found == body.end() || found->is_null()) return nullptr;
  return &*found;
}

std::string json_type_name(const json& value) { return value.type_name(); }

double number_field(const json& body, const char* name, double fallback, double low, double high) {
  const json* value = field(body, name);
  if (!value) return fallback;
  if (!value->is_number()) {
    throw bad_request(name, std::string("'") + name + "' must be a number, got " + json_type_name(*value),
                      "invalid_type");
  }
  const double number = value->get<double>();
  if (!(number >= low && number <= high)) {
    throw bad_request(name, std::string("'") + name + "' must be in [" + json(low).dump() + ", " +
                                json(high).dump() + "], got " + value->dump());
  }
  return number;
}

int64_t integer_field(const json& body, const char* name, int64_t fallback, int64_t low, int64_t high) {
  const json* value = field(body, name);
  if (!value) return fallback;
  if (!value->is_number_integer()) {
    throw bad_request(name, std::string("'") + name + "' must be an integer, got " + value->dump(),
                      "invalid_type");
  }
  if (value->is_number_unsigned() && value->get<uint64_t>() > static_cast<uint64_t>(high)) {
    throw bad_request(name, std::string("'") + name + "' must be at most " + std::to_string(high) + ", got " +
                                value->dump());
  }
  const int64_t number = value->get<int64_t>();
  if (number < low || number > high) {
    throw bad_request(name, std::string("'") + name + "' must be in [" + std::to_string(low) + ", " +
                                std::to_string(high) + "], got " + value->dump());
  }
  return number;
}

bool bool_field(const json& body, const char* name, bool fallback) {
  const json* value = field(body, name);
  if (!value) return fallback;
  if (!value->is_boolean()) {
    throw bad_request(name, std::string("'") + name + "' must be true or false, got " + value->dump(),
                      "invalid_type");
  }
  return value->get<bool>();
}

ApiError unsupported(const std::string& param, const std::string& what) {
  return ApiError(400, "invalid_request_error", "unsupported_parameter",
                  what + " is not supported by this server (remove '" + param + "')", param);
}

// Options this server does not implement are refused unless they have their neutral value, so a client
// never gets silently different behaviour.
void refuse_unsupported(const json& body, Endpoint endpoint) {
  if (integer_field(body, "n", 1, 1, std::numeric_limits<int32_t>::max()) != 1) {
    throw unsupported("n", "more than one choice per request (n > 1)");
  }
  for (const char* penalty : {"presence_penalty", "frequency_penalty"}) {
    if (number_field(body, penalty, 0.0, -2.0, 2.0) != 0.0)
      throw unsupported(penalty, std::string("'") + penalty + "'");
  }
  if (const json* bias = field(body, "logit_bias"); bias && !(bias->is_object() && bias->empty())) {
    throw unsupported("logit_bias", "'logit_bias'");
  }
  if (const json* logprobs = field(body, "logprobs")) {
    const bool off = (logprobs->is_boolean() && !logprobs->get<bool>()) ||
                     (logprobs->is_number_integer() && logprobs->get<int64_t>() == 0);
    if (!off) throw unsupported("logprobs", "'logprobs'");
  }
  if (const json* top_logprobs = field(body, "top_logprobs"); top_logprobs && *top_logprobs != 0) {
    throw unsupported("top_logprobs", "'top_logprobs'");
  }
  if (endpoint == Endpoint::kCompletions) {
    if (bool_field(body, "echo", false)) throw unsupported("echo", "'echo'");
    if (integer_field(body, "best_of", 1, 1, std::numeric_limits<int32_t>::max()) != 1) {
      throw unsupported("best_of", "'best_of' > 1");
    }
    if (const json* suffix = field(body, "suffix");
        suffix && !(suffix->is_string() && suffix->get<std::string>().empty())) {
      throw unsupported("suffix", "'suffix' (insertion)");
    }
  } else {
    if (const json* tools = field(body, "tools"); tools && !(tools->is_array() && tools->empty())) {
      throw unsupported("tools", "tool calling");
    }
    if (const json* format = field(body, "response_format")) {
      if (!(format->is_object() && format->value("type", "") == "text")) {
        throw unsupported("response_format", "a response_format other than {\"type\": \"text\"}");
      }
    }
  }
}

std::vector<std::string> parse_cartridges(const json& value) {
  if (!value.is_array()) {
    throw bad_request("cartridges",
                      "'cartridges' must be a list of cartridge names, got " + json_type_name(value),
                      "invalid_type");
  }
  std::vector<std::string> names;
  for (const json& entry : value) {
    if (entry.is_string()) {
      names.push_back(entry.get<std::string>());
    } else if (entry.is_object() && entry.contains("id") && entry["id"].is_string()) {
      names.push_back(entry["id"].get<std::string>());  // Tokasaurus' {"id": ...} form
    } else {
      throw bad_request("cartridges",
                        "each entry of 'cartridges' must be a name or {\"id\": name}, got " + entry.dump(),
                        "invalid_type");
    }
  }
  if (names.empty())
    throw bad_request("cartridges", "'cartridges' is empty: name at least one cartridge, or omit it");
  return names;
}

std::string message_content(const json& content, size_t index) {
  const std::string param = "messages[" + std::to_string(index) + "].content";
  if (content.is_null()) return "";
  if (content.is_string()) return content.get<std::string>();
  if (content.is_array()) {  // content parts: only text parts can be rendered by a text chat template
    std::string text;
    for (const json& part : content) {
      if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
          !part["text"].is_string()) {
        throw bad_request(
            param, param + ": only text content parts ({\"type\": \"text\", \"text\": ...}) are supported",
            "invalid_type");
      }
      text += part["text"].get<std::string>();
    }
    return text;
  }
  throw bad_request(param,
                    param + " must be a string or a list of text parts, got " + json_type_name(content),
                    "invalid_type");
}

std::vector<ChatMessage> parse_messages(const json& body) {
  const json* messages = field(body, "messages");
  if (!messages) throw bad_request("messages", "'messages' is required", "missing_required_parameter");
  if (!messages->is_array() || messages->empty()) {
    throw bad_request("messages", "'messages' must be a non-empty list of {role, content}", "invalid_type");
  }
  std::vector<ChatMessage> parsed;
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& message = (*messages)[i];
    if (!message.is_object() || !message.contains("role") || !message["role"].is_string()) {
      throw bad_request("messages[" + std::to_string(i) + "]",
                        "messages[" + std::to_string(i) + "] must be an object with a string 'role'",
                        "invalid_type");
    }
    parsed.push_back(
        ChatMessage{message["role"].get<std::string>(),
                    message_content(message.contains("content") ? message["content"] : json(), i)});
  }
  return parsed;
}

void parse_prompt(const json& body, ApiRequest& request) {
  const json* prompt = field(body, "prompt");
  if (!prompt) throw bad_request("prompt", "'prompt' is required", "missing_required_parameter");
  if (prompt->is_string()) {
    request.prompt = prompt->get<std::string>();
    return;
  }
  if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) {
    request.prompt = (*prompt)[0].get<std::string>();
    return;
  }
  if (prompt->is_array() && !prompt->empty() && (*prompt)[0].is_number_integer()) {
    std::vector<int32_t> ids;
    for (const json& id : *prompt) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
          id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
        throw bad_request("prompt", "a token-id prompt must be a list of non-negative integers",
                          "invalid_type");
      }
      ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
    request.prompt_ids = std::move(ids);
    return;
  }
  if (prompt->is_array() && prompt->size() > 1) {
    throw unsupported("prompt", "more than one prompt per request (send one request per prompt)");
  }
  throw bad_request("prompt",
                    "'prompt' must be a string (or a list of token ids), got " + prompt->dump().substr(0, 80),
                    "invalid_type");
}

}  // namespace

json error_json(const ApiError& error) {
  return {{"error",
           {{"message", error.what()},
            {"type", error.type},
            {"param", error.param.empty() ? json(nullptr) : json(error.param)},
            {"code", error.code.empty() ? json(nullptr) : json(error.code)}}}};
}

ApiError to_api_error(const std::exception& error) {
  if (auto* api = dynamic_cast<const ApiError*>(&error)) return *api;
  if (dynamic_cast<const FileNotFoundError*>(&error)) {
    return ApiError(404, "not_found_error", "model_not_found", error.what(), "model");
  }
  if (dynamic_cast<const MismatchError*>(&error)) {
    return ApiError(400, "invalid_request_error", "cartridge_model_mismatch", error.what(), "model");
  }
  if (dynamic_cast<const FormatError*>(&error)) {
    return ApiError(400, "invalid_request_error", "invalid_cartridge", error.what(), "model");
  }
  if (dynamic_cast<const UnsupportedError*>(&error)) {
    return ApiError(400, "invalid_request_error", "unsupported", error.what());
  }
  if (dynamic_cast<const Error*>(&error))
    return ApiError(400, "invalid_request_error", "invalid_value", error.what());
  return ApiError(500, "server_error", "internal_error", std::string("internal error: ") + error.what());
}

ApiRequest parse_api_request(Endpoint endpoint, const std::string& body, const ProtocolLimits& limits) {
  json parsed;
  try {
    parsed = json::parse(body);
  } catch (const json::exception& error) {
    // parse_error, and out_of_range for a number no double holds (1e400).
    throw ApiError(400, "invalid_request_error", "invalid_json",
                   std::string("the request body is not valid JSON: ") + error.what());
  }
  if (!parsed.is_object()) {
    throw ApiError(400, "invalid_request_error", "invalid_json",
                   "the request body must be a JSON object, got " + json_type_name(parsed));
  }
  ApiRequest request;
  request.endpoint = endpoint;
  const json* model = field(parsed, "model");
  if (!model)
    throw bad_request("model", "'model' is required (GET /v1/models lists them)",
                      "missing_required_parameter");
  if (!model->is_string()) throw bad_request("model", "'model' must be a string", "invalid_type");
  request.model = model->get<std::string>();
  if (const json* cartridges = field(parsed, "cartridges")) {
    if (request.model != limits.base_model_id) {
      throw bad_request("cartridges", "'cartridges' composes cartridges on the base model: set 'model' to '" +
                                          limits.base_model_id +
                                          "' (or name one cartridge in 'model' and drop 'cartridges')");
    }
    request.cartridges = parse_cartridges(*cartridges);
  } else if (request.model != limits.base_model_id) {
    request.cartridges = {request.model};
  }

  refuse_unsupported(parsed, endpoint);
  if (endpoint == Endpoint::kCompletions) {
    parse_prompt(parsed, request);
  } else {
    request.messages = parse_messages(parsed);
  }

  // max_completion_tokens is the newer chat name of max_tokens.
  const char* max_tokens_name =
      field(parsed, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  const int64_t fallback = endpoint == Endpoint::kCompletions
                               ? std::min(limits.default_completion_tokens, limits.max_tokens_limit)
                               : limits.max_tokens_limit;
  if (const json* value = field(parsed, max_tokens_name);
      value && value->is_number_integer() && value->get<int64_t>() > limits.max_tokens_limit) {
    throw bad_request(max_tokens_name, std::string("'") + max_tokens_name + "' is " + value->dump() +
                                           " but this server allows at most " +
                                           std::to_string(limits.max_tokens_limit) + " tokens per request");
  }
  request.max_tokens = integer_field(parsed, max_tokens_name, fallback, 0, limits.max_tokens_limit);
  request.max_tokens_given = field(parsed, max_tokens_name) != nullptr;

  request.sampling.temperature = number_field(parsed, "temperature", 1.0, 0.0, 2.0);
  request.sampling.top_p = number_field(parsed, "top_p", 1.0, 0.0, 1.0);
  if (request.sampling.top_p == 0.0)
    throw bad_request("top_p", "'top_p' must be > 0 (use temperature 0 for greedy)");
  request.sampling.top_k = integer_field(parsed, "top_k", 0, 0, std::numeric_limits<int32_t>::max());
  if (const json* seed = field(parsed, "seed")) {
    if (!seed->is_number_integer()) throw bad_request("seed", "'seed' must be an integer", "invalid_type");
    request.sampling.seed =
        seed->is_number_unsigned() ? seed->get<uint64_t>() : static_cast<uint64_t>(seed->get<int64_t>());
    request.seed_given = true;
  }

  if (const json* stop = field(parsed, "stop")) {
    if (stop->is_string()) {
      request.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const json& entry : *stop) {
        if (!entry.is_string())
          throw bad_request("stop", "'stop' must be a string or a list of strings", "invalid_type");
        request.stop.push_back(entry.get<std::string>());
      }
    } else {
      throw bad_request("stop", "'stop' must be a string or a list of strings", "invalid_type");
    }
    if (static_cast<int64_t>(request.stop.size()) > limits.max_stop_strings) {
      throw bad_request("stop",
                        "at most " + std::to_string(limits.max_stop_strings) + " stop strings per request");
    }
  }
  request.ignore_eos = bool_field(parsed, "ignore_eos", false);
  request.stream = bool_field(parsed, "stream", false);
  if (const json* options = field(parsed, "stream_options")) {
    if (!options->is_object())
      throw bad_request("stream_options", "'stream_options' must be an object", "invalid_type");
    if (!request.stream) throw bad_request("stream_options", "'stream_options' needs 'stream': true");
    request.include_usage = bool_field(*options, "include_usage", false);
  }
  return request;
}

json usage_json(const GenerationResult& result) {
  const int64_t completion = static_cast<int64_t>(result.token_ids.size());
  return {{"prompt_tokens", result.prompt_tokens},
          {"completion_tokens", completion},
          {"total_tokens", result.prompt_tokens + completion}};
}

json completion_response(const ApiRequest& request, const std::string& id, int64_t created,
                         const GenerationResult& result) {
  json choice;
  if (request.endpoint == Endpoint::kCompletions) {
    choice = {
        {"index", 0}, {"text", result.text}, {"logprobs", nullptr}, {"finish_reason", result.finish_reason}};
  } else {
    choice = {{"index", 0},
              {"message", {{"role", "assistant"}, {"content", result.text}}},
              {"logprobs", nullptr},
              {"finish_reason", result.finish_reason}};
  }
  return {{"id", id},
          {"object", request.endpoint == Endpoint::kCompletions ? "text_completion" : "chat.completion"},
          {"created", created},
          {"model", request.model},
          {"choices", json::array({choice})},
          {"usage", usage_json(result)},
          {"timings", timings_json(result.timings)}};  // llama.cpp's server adds these too
}

json stream_chunk(const ApiRequest& request, const std::string& id, int64_t created, const std::string& text,
                  const std::optional<std::string>& finish_reason, bool first) {
  const json finish = finish_reason ? json(*finish_reason) : json(nullptr);
  json choice;
  if (request.endpoint == Endpoint::kCompletions) {
    choice = {{"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", finish}};
  } else {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || first) delta["content"] = text;
    choice = {{"index", 0}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", finish}};
  }
  return {
      {"id", id},
      {"object", request.endpoint == Endpoint::kCompletions ? "text_completion" : "chat.completion.chunk"},
      {"created", created},
      {"model", request.model},
      {"choices", json::array({choice})}};
}

json usage_chunk(const ApiRequest& request, const std::string& id, int64_t created,
                 const GenerationResult& result) {
  return {
      {"id", id},
      {"object", request.endpoint == Endpoint::kCompletions ? "text_completion" : "chat.completion.chunk"},
      {"created", created},
      {"model", request.model},
      {"choices", json::array()},
      {"usage", usage_json(result)}};
}

std::string sse_event(const json& payload) {
  // dump() escapes newlines inside strings, so the payload is one line as SSE requires. Invalid UTF-8 (a
  // model can emit any bytes) is replaced rather than throwing.
  return "data: " + payload.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace cartridge
