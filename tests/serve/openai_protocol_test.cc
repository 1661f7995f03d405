// Request parsing and validation of the OpenAI endpoints, and the shapes of responses and errors. (The
// shapes are also checked end to end by the real `openai` client in tests/oracle/test_serve.py.)
#include "serve/openai_protocol.h"

#include <gtest/gtest.h>

#include "util/error.h"

namespace cartridge {
namespace {

using json = nlohmann::json;

ProtocolLimits limits() {
  ProtocolLimits result;
  result.base_model_id = "base";
  result.max_tokens_limit = 100;
  return result;
}

ApiRequest parse_completion(const json& body) {
  return parse_api_request(Endpoint::kCompletions, body.dump(), limits());
}
ApiRequest parse_chat(const json& body) {
  return parse_api_request(Endpoint::kChatCompletions, body.dump(), limits());
}

// The ApiError a body raises (fails the test when none).
ApiError error_of(Endpoint endpoint, const std::string& body) {
  try {
    parse_api_request(endpoint, body, limits());
  } catch (const ApiError& error) {
    return error;
  }
  ADD_FAILURE() << "no error for " << body;
  return ApiError(0, "", "", "");
}

TEST(OpenAiProtocolTest, ModelPicksTheCartridge) {
  EXPECT_TRUE(parse_completion({{"model", "base"}, {"prompt", "hi"}}).cartridges.empty());
  EXPECT_EQ(parse_completion({{"model", "doc"}, {"prompt", "hi"}}).cartridges,
            std::vector<std::string>{"doc"});
  EXPECT_EQ(parse_completion({{"model", "base"}, {"prompt", "hi"}, {"cartridges", {"a", "b"}}}).cartridges,
            (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(parse_completion({{"model", "base"}, {"prompt", "hi"}, {"cartridges", {{{"id", "a"}}, "b"}}})
                .cartridges,
            (std::vector<std::string>{"a", "b"}));
  // Names are passed through as given: the registry checks them (so "../x" reaches it and is refused there).
  EXPECT_EQ(parse_completion({{"model", "../x"}, {"prompt", "hi"}}).cartridges,
            std::vector<std::string>{"../x"});

  const ApiError both = error_of(Endpoint::kCompletions,
                                 json({{"model", "doc"}, {"prompt", "hi"}, {"cartridges", {"a"}}}).dump());
  EXPECT_EQ(both.status, 400);
  EXPECT_EQ(both.param, "cartridges");
  EXPECT_EQ(error_of(Endpoint::kCompletions,
                     json({{"model", "base"}, {"prompt", "hi"}, {"cartridges", json::array()}}).dump())
                .status,
            400);
  EXPECT_EQ(error_of(Endpoint::kCompletions,
                     json({{"model", "base"}, {"prompt", "hi"}, {"cartridges", "a"}}).dump())
                .status,
            400);
}

TEST(OpenAiProtocolTest, MalformedBodiesAre400) {
  for (const std::string body :
       {"{", "not json", "[1, 2]", "\"text\"", "{\"model\": \"base\", \"prompt\": \"x\"", ""}) {
    const ApiError error = error_of(Endpoint::kCompletions, body);
    EXPECT_EQ(error.status, 400) << body;
    EXPECT_EQ(error.type, "invalid_request_error") << body;
    EXPECT_EQ(error.code, "invalid_json") << body;
  }
  EXPECT_EQ(error_of(Endpoint::kCompletions, R"({"prompt": "x"})").param, "model");
  EXPECT_EQ(error_of(Endpoint::kCompletions, R"({"model": 3, "prompt": "x"})").param, "model");
  EXPECT_EQ(error_of(Endpoint::kCompletions, R"({"model": "base"})").param, "prompt");
  EXPECT_EQ(error_of(Endpoint::kChatCompletions, R"({"model": "base"})").param, "messages");
  EXPECT_EQ(error_of(Endpoint::kChatCompletions, R"({"model": "base", "messages": []})").param, "messages");
  EXPECT_EQ(
      error_of(Endpoint::kChatCompletions, R"({"model": "base", "messages": [{"content": "x"}]})").param,
      "messages[0]");
  EXPECT_EQ(
      error_of(Endpoint::kChatCompletions,
               R"({"model": "base", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]})")
          .param,
      "messages[0].content");
}

TEST(OpenAiProtocolTest, BoundsAndTypesOfSamplingFields) {
  const std::string prefix = R"({"model": "base", "prompt": "x", )";
  EXPECT_EQ(error_of(Endpoint::kCompletions, prefix + R"("max_tokens": 101})").param, "max_tokens");
  EXPECT_EQ(error_of(Endpoint::kCompletions, prefix + R"("max_tokens": -1})").param, "max_tokens");
  EXPECT_EQ(error_of(Endpoint::kCompletions, prefix + R"("max_tokens": 1e30})").param, "max_tokens");
  EXPECT_EQ(error_of(Endpoint::kCompletions, prefix + R"("max_tokens": "5"})").param, "max_tokens");
  EXPECT_EQ(error_of(Endpoint::kCompletions, prefix + R"("temperature": 2.5})").param, "temperature");
  EXPECT_EQ(error_of(Endpoint::kCompletions, prefix + R"("temperature": -0.1})").param, "temperature");
  EXPECT_EQ(error_of(Endpoint::kCompletions, prefix + R"("top_p": 0})").param, "top_p");
  EXPECT_EQ(error_of(Endpoint::kCompletions, prefix + R"("top_p": 1.5})").param, "top_p");
  EXPECT_EQ(error_of(Endpoint::kCompletions, prefix + R"("seed": 1.5})").param, "seed");
  EXPECT_EQ(error_of(Endpoint::kCompletions, prefix + R"("stop": 3})").param, "stop");
  EXPECT_EQ(error_of(Endpoint::kCompletions, prefix + R"("stream": "yes"})").param, "stream");
  EXPECT_EQ(error_of(Endpoint::kCompletions, prefix + R"("stream_options": {"include_usage": true}})").param,
            "stream_options");
  // Options this server does not implement are refused, not ignored.
  for (const std::string field :
       {R"("n": 2)", R"("logprobs": 3)", R"("echo": true)", R"("best_of": 2)", R"("presence_penalty": 0.5)",
        R"("frequency_penalty": 1)", R"("logit_bias": {"1": 5})", R"("prompt": ["a", "b"])",
        R"("suffix": "x")"}) {
    const ApiError error = error_of(Endpoint::kCompletions, prefix + field + "}");
    EXPECT_EQ(error.status, 400) << field;
  }
  EXPECT_EQ(
      error_of(
          Endpoint::kChatCompletions,
          R"({"model": "base", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]})")
          .code,
      "unsupported_parameter");
}

TEST(OpenAiProtocolTest, DefaultsFollowOpenAi) {
  const ApiRequest completion = parse_completion({{"model", "base"}, {"prompt", "hi"}});
  EXPECT_EQ(completion.max_tokens, 16);  // /v1/completions' default
  EXPECT_EQ(completion.sampling.temperature, 1.0);
  EXPECT_EQ(completion.sampling.top_p, 1.0);
  EXPECT_FALSE(completion.seed_given);
  EXPECT_FALSE(completion.stream);
  const ApiRequest chat =
      parse_chat({{"model", "base"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}});
  EXPECT_EQ(chat.max_tokens, 100);  // up to the server's limit (and what the context has left)
  EXPECT_FALSE(chat.max_tokens_given);
  // null means "not given".
  const ApiRequest nulls = parse_completion({{"model", "base"},
                                             {"prompt", "hi"},
                                             {"temperature", nullptr},
                                             {"max_tokens", nullptr},
                                             {"stop", nullptr},
                                             {"n", nullptr}});
  EXPECT_EQ(nulls.sampling.temperature, 1.0);
  EXPECT_EQ(nulls.max_tokens, 16);
  EXPECT_FALSE(nulls.max_tokens_given);
  // Neutral values of unimplemented options are fine.
  parse_completion({{"model", "base"},
                    {"prompt", "hi"},
                    {"n", 1},
                    {"logprobs", nullptr},
                    {"echo", false},
                    {"presence_penalty", 0},
                    {"frequency_penalty", 0.0},
                    {"logit_bias", json::object()}});
}

TEST(OpenAiProtocolTest, ParsesFields) {
  const ApiRequest request = parse_completion({{"model", "doc"},
                                               {"prompt", {"only one"}},
                                               {"max_tokens", 7},
                                               {"temperature", 0},
                                               {"top_p", 0.5},
                                               {"top_k", 40},
                                               {"seed", 1234},
                                               {"stop", {"\n", "END"}},
                                               {"stream", true},
                                               {"ignore_eos", true},
                                               {"stream_options", {{"include_usage", true}}}});
  EXPECT_EQ(request.prompt, "only one");
  EXPECT_EQ(request.max_tokens, 7);
  EXPECT_TRUE(request.max_tokens_given);
  EXPECT_EQ(request.sampling.temperature, 0.0);
  EXPECT_EQ(request.sampling.top_p, 0.5);
  EXPECT_EQ(request.sampling.top_k, 40);
  EXPECT_EQ(request.sampling.seed, 1234u);
  EXPECT_TRUE(request.seed_given);
  EXPECT_EQ(request.stop, (std::vector<std::string>{"\n", "END"}));
  EXPECT_TRUE(request.stream);
  EXPECT_TRUE(request.include_usage);
  EXPECT_TRUE(request.ignore_eos);
  EXPECT_FALSE(parse_completion({{"model", "base"}, {"prompt", "x"}}).ignore_eos);
  EXPECT_EQ(parse_completion({{"model", "base"}, {"prompt", "x"}, {"stop", "S"}}).stop,
            std::vector<std::string>{"S"});
  const ApiRequest ids = parse_completion({{"model", "base"}, {"prompt", {1, 2, 3}}});
  ASSERT_TRUE(ids.prompt_ids.has_value());
  EXPECT_EQ(*ids.prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(parse_completion({{"model", "base"}, {"prompt", "x"}, {"max_completion_tokens", 9}}).max_tokens,
            9);

  const ApiRequest chat =
      parse_chat({{"model", "base"},
                  {"messages",
                   {{{"role", "system"}, {"content", "be brief"}},
                    {{"role", "user"},
                     {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}}}}});
  ASSERT_EQ(chat.messages.size(), 2u);
  EXPECT_EQ(chat.messages[0].role, "system");
  EXPECT_EQ(chat.messages[0].content, "be brief");
  EXPECT_EQ(chat.messages[1].content, "ab");
}

TEST(OpenAiProtocolTest, ResponseShapes) {
  GenerationResult result;
  result.text = "Paris.";
  result.token_ids = {5, 6};
  result.prompt_tokens = 4;
  result.finish_reason = "stop";
  const ApiRequest completion = parse_completion({{"model", "doc"}, {"prompt", "hi"}});
  const json body = completion_response(completion, "cmpl-1", 99, result);
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["model"], "doc");
  EXPECT_EQ(body["choices"][0]["text"], "Paris.");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(body["usage"], json({{"prompt_tokens", 4}, {"completion_tokens", 2}, {"total_tokens", 6}}));

  const ApiRequest chat =
      parse_chat({{"model", "base"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}});
  const json chat_body = completion_response(chat, "chatcmpl-1", 99, result);
  EXPECT_EQ(chat_body["object"], "chat.completion");
  EXPECT_EQ(chat_body["choices"][0]["message"], json({{"role", "assistant"}, {"content", "Paris."}}));
  const json first = stream_chunk(chat, "chatcmpl-1", 99, "", std::nullopt, true);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"], json({{"role", "assistant"}, {"content", ""}}));
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  const json last = stream_chunk(chat, "chatcmpl-1", 99, "", std::string("length"), false);
  EXPECT_EQ(last["choices"][0]["delta"], json::object());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(usage_chunk(chat, "chatcmpl-1", 99, result)["choices"], json::array());
  EXPECT_EQ(sse_event(json({{"a", "x\ny"}})), "data: {\"a\":\"x\\ny\"}\n\n");
}

TEST(OpenAiProtocolTest, ErrorsMapToStatuses) {
  EXPECT_EQ(to_api_error(FileNotFoundError("no cartridge named 'x'")).status, 404);
  EXPECT_EQ(to_api_error(InvalidArgumentError("bad name")).status, 400);
  const ApiError mismatch = to_api_error(MismatchError("made for another model"));
  EXPECT_EQ(mismatch.status, 400);
  EXPECT_EQ(mismatch.code, "cartridge_model_mismatch");
  EXPECT_EQ(to_api_error(FormatError("truncated")).status, 400);
  EXPECT_EQ(to_api_error(std::runtime_error("boom")).status, 500);
  const json body = error_json(ApiError(404, "not_found_error", "model_not_found", "no such model", "model"));
  EXPECT_EQ(body, json({{"error",
                         {{"message", "no such model"},
                          {"type", "not_found_error"},
                          {"param", "model"},
                          {"code", "model_not_found"}}}}));
}

}  // namespace
}  // namespace cartridge
