// The HTTP server end to end on 127.0.0.1 (a free port), with cpp-httplib's client: endpoints, the text
// each request gets (equal to generate() alone with the same cartridge), streaming, and bad requests that
// get 4xx OpenAI errors while the server stays up.
#include "serve/server.h"

#include <httplib.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include <gtest/gtest.h>

#include "cartridge/adapter_io.h"
#include "generate/generator.h"
#include "serve_test_util.h"

namespace cartridge {
namespace {

using json = nlohmann::json;
using testing::cartridge_from_text;
using testing::cartridge_texts;
using testing::ScopedFolder;
using testing::serve_model;

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const LoadedModel& model = serve_model();
    folder_ = new ScopedFolder("serve_server_test");
    const ModelConfig& config = model.model->config();
    const ModelFingerprint fingerprint = fingerprint_model(model.files, config);
    const std::vector<std::pair<std::string, int64_t>> cartridges = {
        {"treaty", 12}, {"bakery", 20}, {"hexfall", 9}};
    for (size_t i = 0; i < cartridges.size(); ++i) {
      const auto& [name, tokens] = cartridges[i];
      save_adapter(folder_->path() + "/" + name, cartridge_from_text(cartridge_texts()[i], tokens),
                   AdapterConfig::for_model(config, tokens, 1, model.files.name), &fingerprint, false);
    }
    // An adapter made for a model with another layer count.
    ModelConfig other = config;
    other.num_layers = 2;
    save_adapter(folder_->path() + "/other-model",
                 Cartridge::random(CartridgeShape::of_model(other), 4, 1, 3),
                 AdapterConfig::for_model(other, 4, 1, std::string("another-model")), nullptr, false);

    ServerOptions options;
    options.port = 0;
    options.cartridges_directory = folder_->path();
    options.max_body_bytes = 64 * 1024;
    options.max_tokens_limit = 64;
    options.max_batch = 4;
    options.log_requests = false;
    server_ = new Server(model, options);
    port_ = server_->bind();
    thread_ = new std::thread([] { server_->listen(); });
  }
  static void TearDownTestSuite() {
    server_->stop();
    thread_->join();
    delete thread_;
    delete server_;
    delete folder_;
  }

  static httplib::Client client() {
    httplib::Client client("127.0.0.1", port_);
    client.set_read_timeout(std::chrono::minutes(3));
    return client;
  }
  static httplib::Result post(const std::string& path, const std::string& body) {
    return client().Post(path.c_str(), body, "application/json");
  }
  static void expect_healthy() {
    auto result = client().Get("/health");
    ASSERT_TRUE(result);
    EXPECT_EQ(result->status, 200);
  }
  static void expect_error(const httplib::Result& result, int status, const std::string& code) {
    ASSERT_TRUE(result) << "no response";
    EXPECT_EQ(result->status, status) << result->body;
    const json body = json::parse(result->body);
    ASSERT_TRUE(body.contains("error")) << result->body;
    EXPECT_TRUE(body["error"]["message"].is_string());
    EXPECT_EQ(body["error"]["code"], code) << result->body;
    expect_healthy();
  }

  // What `cartridge generate` computes: generate() alone with the adapter's prefix.
  static GenerationResult expected(const std::vector<std::string>& cartridges,
                                   const std::vector<int32_t>& prompt, int64_t max_tokens) {
    const LoadedModel& model = serve_model();
    GenerationRequest request;
    request.prompt_ids = prompt;
    request.max_new_tokens = max_tokens;
    if (!cartridges.empty()) {
      std::vector<Cartridge> parts;
      for (const auto& name : cartridges)
        parts.push_back(load_adapter(folder_->path() + "/" + name).cartridge);
      request.prefixes = {
          (parts.size() == 1 ? parts.front() : Cartridge::compose(parts)).kv_prefix_for(*model.model)};
    }
    return generate(*model.model, *model.tokenizer, {request}).front();
  }

  // The data payloads of a server-sent-events body (without the final [DONE]); checks [DONE] ends it.
  static std::vector<json> sse_payloads(const std::string& body) {
    std::vector<json> payloads;
    size_t start = 0;
    bool done = false;
    while (start < body.size()) {
      const size_t end = body.find("\n\n", start);
      EXPECT_NE(end, std::string::npos) << "unterminated event";
      if (end == std::string::npos) break;
      const std::string event = body.substr(start, end - start);
      start = end + 2;
      if (event.rfind(":", 0) == 0) continue;  // comment (keep-alive)
      EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
      EXPECT_FALSE(done) << "event after [DONE]";
      const std::string data = event.substr(6);
      if (data == "[DONE]") {
        done = true;
        continue;
      }
      payloads.push_back(json::parse(data));
    }
    EXPECT_TRUE(done);
    return payloads;
  }

  static ScopedFolder* folder_;
  static Server* server_;
  static std::thread* thread_;
  static int port_;
};

ScopedFolder* ServerTest::folder_ = nullptr;
Server* ServerTest::server_ = nullptr;
std::thread* ServerTest::thread_ = nullptr;
int ServerTest::port_ = 0;

TEST_F(ServerTest, TheSizerGivesTheBytesTheLoaderHolds) {
  const CartridgeLoader loader = make_adapter_loader(serve_model());
  const CartridgeSizer sizer = make_adapter_sizer(serve_model());
  for (const char* name : {"treaty", "bakery", "hexfall"}) {
    const std::string folder = folder_->path() + "/" + name;
    EXPECT_EQ(sizer(folder), CartridgeRegistry::prefix_bytes(loader(folder))) << name;
  }
}

TEST_F(ServerTest, HealthAndModels) {
  expect_healthy();
  auto result = client().Get("/v1/models");
  ASSERT_TRUE(result);
  ASSERT_EQ(result->status, 200);
  const json body = json::parse(result->body);
  std::vector<std::string> ids;
  for (const json& model : body["data"]) ids.push_back(model["id"]);
  EXPECT_EQ(ids,
            (std::vector<std::string>{server_->model_id(), "bakery", "hexfall", "other-model", "treaty"}));
  EXPECT_EQ(server_->model_id(), "SmolLM2-135M-Instruct.Q4_1");

  // A cartridge copied in later is served without a restart.
  std::filesystem::copy(folder_->path() + "/hexfall", folder_->path() + "/late-arrival");
  result = client().Get("/v1/models");
  ASSERT_TRUE(result);
  EXPECT_NE(result->body.find("\"late-arrival\""), std::string::npos);
  const std::string prompt = "Tiles are placed";
  result = post(
      "/v1/completions",
      json({{"model", "late-arrival"}, {"prompt", prompt}, {"max_tokens", 6}, {"temperature", 0}}).dump());
  ASSERT_TRUE(result);
  ASSERT_EQ(result->status, 200) << result->body;
  EXPECT_EQ(json::parse(result->body)["choices"][0]["text"],
            expected({"hexfall"}, serve_model().tokenizer->encode(prompt, true), 6).text);
  std::filesystem::remove_all(folder_->path() + "/late-arrival");
}

TEST_F(ServerTest, CompletionsGiveWhatGenerateGives) {
  const LoadedModel& model = serve_model();
  struct Case {
    std::string model;
    json cartridges;  // null = none
    std::vector<std::string> names;
    std::string prompt;
  };
  const std::vector<Case> cases = {
      {"treaty", nullptr, {"treaty"}, "The treaty was signed in"},
      {"bakery", nullptr, {"bakery"}, "On Mondays the bakery sells"},
      {server_->model_id(), nullptr, {}, "The capital of France is"},
      {server_->model_id(), json{"bakery", "treaty"}, {"bakery", "treaty"}, "Bread and rivers:"},
  };
  std::vector<std::thread> threads;
  std::vector<std::string> bodies(cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {  // concurrently: they share the batch
    threads.emplace_back([&, i] {
      json request = {
          {"model", cases[i].model}, {"prompt", cases[i].prompt}, {"max_tokens", 16}, {"temperature", 0}};
      if (!cases[i].cartridges.is_null()) request["cartridges"] = cases[i].cartridges;
      auto result = post("/v1/completions", request.dump());
      bodies[i] = result ? std::to_string(result->status) + " " + result->body : "no response";
    });
  }
  for (auto& thread : threads) thread.join();
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].prompt);
    ASSERT_EQ(bodies[i].rfind("200 ", 0), 0u) << bodies[i];
    const json body = json::parse(bodies[i].substr(4));
    const std::vector<int32_t> prompt = model.tokenizer->encode(cases[i].prompt, true);
    const GenerationResult want = expected(cases[i].names, prompt, 16);
    EXPECT_EQ(body["object"], "text_completion");
    EXPECT_EQ(body["model"], cases[i].model);
    EXPECT_EQ(body["choices"][0]["text"], want.text);
    EXPECT_EQ(body["choices"][0]["finish_reason"], want.finish_reason);
    EXPECT_EQ(body["usage"]["prompt_tokens"], static_cast<int64_t>(prompt.size()));
    EXPECT_EQ(body["usage"]["completion_tokens"], static_cast<int64_t>(want.token_ids.size()));
  }
}

TEST_F(ServerTest, ChatStreamsTheSameTextAsWithoutStreaming) {
  const LoadedModel& model = serve_model();
  const json messages = {{{"role", "user"}, {"content", "Which bread is sold on Mondays?"}}};
  const std::vector<int32_t> prompt = model.encode_chat({{"user", "Which bread is sold on Mondays?"}}, true);
  const GenerationResult want = expected({"bakery"}, prompt, 24);

  auto plain = post(
      "/v1/chat/completions",
      json({{"model", "bakery"}, {"messages", messages}, {"max_tokens", 24}, {"temperature", 0}}).dump());
  ASSERT_TRUE(plain);
  ASSERT_EQ(plain->status, 200) << plain->body;
  const json body = json::parse(plain->body);
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(body["choices"][0]["message"]["content"], want.text);

  auto streamed = post("/v1/chat/completions", json({{"model", "bakery"},
                                                     {"messages", messages},
                                                     {"max_tokens", 24},
                                                     {"temperature", 0},
                                                     {"stream", true},
                                                     {"stream_options", {{"include_usage", true}}}})
                                                   .dump());
  ASSERT_TRUE(streamed);
  ASSERT_EQ(streamed->status, 200) << streamed->body;
  EXPECT_EQ(streamed->get_header_value("Content-Type"), "text/event-stream");
  const std::vector<json> chunks = sse_payloads(streamed->body);
  ASSERT_GE(chunks.size(), 3u);
  EXPECT_EQ(chunks.front()["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  std::optional<std::string> finish;
  for (size_t i = 0; i + 1 < chunks.size(); ++i) {
    EXPECT_EQ(chunks[i]["object"], "chat.completion.chunk");
    const json& choice = chunks[i]["choices"][0];
    if (choice["delta"].contains("content")) text += choice["delta"]["content"].get<std::string>();
    if (!choice["finish_reason"].is_null()) finish = choice["finish_reason"].get<std::string>();
  }
  EXPECT_EQ(text, want.text);
  EXPECT_EQ(finish, want.finish_reason);
  EXPECT_EQ(chunks.back()["choices"], json::array());
  EXPECT_EQ(chunks.back()["usage"]["completion_tokens"], static_cast<int64_t>(want.token_ids.size()));
}

TEST_F(ServerTest, BadRequestsGet4xxAndTheServerStaysUp) {
  expect_error(post("/v1/completions", "{\"model\": \"treaty\", \"prompt\": "), 400, "invalid_json");
  expect_error(post("/v1/chat/completions", "[]"), 400, "invalid_json");
  expect_error(post("/v1/completions", json({{"model", "no-such-cartridge"}, {"prompt", "x"}}).dump()), 404,
               "model_not_found");
  expect_error(post("/v1/completions", json({{"model", "../treaty"}, {"prompt", "x"}}).dump()), 400,
               "invalid_value");
  expect_error(
      post("/v1/completions",
           json({{"model", server_->model_id()}, {"prompt", "x"}, {"cartridges", {"treaty", "../../etc"}}})
               .dump()),
      400, "invalid_value");
  expect_error(post("/v1/completions", json({{"model", "other-model"}, {"prompt", "x"}}).dump()), 400,
               "cartridge_model_mismatch");
  expect_error(
      post("/v1/completions", json({{"model", "treaty"}, {"prompt", "x"}, {"max_tokens", 65}}).dump()), 400,
      "invalid_value");
  expect_error(
      post("/v1/completions", json({{"model", "treaty"}, {"prompt", std::string(100 * 1024, 'a')}}).dump()),
      413, "request_too_large");
  expect_error(post("/v1/embeddings", "{}"), 404, "unknown_url");
  const httplib::Result unknown = client().Get("/v1/nothing");
  expect_error(unknown, 404, "unknown_url");
  // The 404 names every endpoint the server has.
  for (const char* endpoint : {"GET /health", "GET /v1/models", "GET /v1/stats", "POST /v1/completions",
                               "POST /v1/chat/completions"}) {
    EXPECT_NE(unknown->body.find(endpoint), std::string::npos)
        << endpoint << " missing from " << unknown->body;
  }
}

TEST_F(ServerTest, RequestsBeyondTheConcurrencyLimitGet429) {
  ServerOptions options;
  options.port = 0;
  options.cartridges_directory = folder_->path();
  options.max_concurrent_requests = 1;
  options.log_requests = false;
  Server small(serve_model(), options);
  const int port = small.bind();
  std::thread listener([&small] { small.listen(); });
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(std::chrono::minutes(3));
  std::string first_status;
  std::thread first([&] {  // long enough to still run while the second request arrives
    auto result = client.Post("/v1/completions",
                              json({{"model", "treaty"},
                                    {"prompt", "1, 2, 3,"},
                                    {"max_tokens", 48},
                                    {"temperature", 0},
                                    {"ignore_eos", true}})
                                  .dump(),
                              "application/json");
    first_status = result ? std::to_string(result->status) : "no response";
  });
  httplib::Client probe("127.0.0.1", port);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
  while (std::chrono::steady_clock::now() < deadline) {
    auto stats = probe.Get("/v1/stats");
    if (stats && json::parse(stats->body)["in_flight_requests"] == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  auto second =
      probe.Post("/v1/completions", json({{"model", "treaty"}, {"prompt", "x"}, {"max_tokens", 1}}).dump(),
                 "application/json");
  ASSERT_TRUE(second);
  EXPECT_EQ(second->status, 429) << second->body;
  EXPECT_EQ(json::parse(second->body)["error"]["code"], "server_busy");
  first.join();
  EXPECT_EQ(first_status, "200");
  // The slot is free again.
  auto third =
      probe.Post("/v1/completions", json({{"model", "treaty"}, {"prompt", "x"}, {"max_tokens", 1}}).dump(),
                 "application/json");
  ASSERT_TRUE(third);
  EXPECT_EQ(third->status, 200) << third->body;
  small.stop();
  listener.join();
}

TEST_F(ServerTest, StatsCountWhatWasServed) {
  auto result = client().Get("/v1/stats");
  ASSERT_TRUE(result);
  ASSERT_EQ(result->status, 200);
  const json stats = json::parse(result->body);
  EXPECT_TRUE(stats["scheduler"]["completed"].is_number_integer());
  EXPECT_TRUE(stats["cartridges"]["resident_bytes"].is_number_integer());
  EXPECT_EQ(stats["in_flight_requests"], 0);
}

}  // namespace
}  // namespace cartridge
