#include "serve/server.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <limits>
#include <random>
#include <string_view>

#include "cartridge/adapter_config.h"
#include "cartridge/adapter_io.h"
#include "cartridge/cartridge_shape.h"
#include "cartridge/fingerprint.h"
#include "io/checked_math.h"
#include "util/error.h"
#include "util/worker_threads.h"

namespace cartridge {
namespace {

// The cpp-httplib that scripts/build_ggml.sh installs, not Debian's 0.11 at /usr/include (whose thread
// pool cannot refuse a connection, so the bound on open connections would silently not hold).
static_assert(std::string_view(CPPHTTPLIB_VERSION) == "0.20.1", "build with scripts/build.sh's cpp-httplib");

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// cpp-httplib's task queue on WorkerThreads: a connection refused here is closed at once by cpp-httplib.
class ConnectionThreads final : public httplib::TaskQueue {
 public:
  ConnectionThreads(size_t max_threads, size_t max_waiting) : workers_(max_threads, max_waiting) {}
  bool enqueue(std::function<void()> serve_connection) override {
    return workers_.try_run(std::move(serve_connection));
  }
  void shutdown() override { workers_.shutdown(); }

 private:
  WorkerThreads workers_;
};

// What the log line of the request being served on this thread says. cpp-httplib runs a request's
// handler, its streamed body and its logger call on one worker thread, so a thread-local carries the
// details from the handler to the single log line.
struct RequestLog {
  Clock::time_point start = Clock::now();
  std::string model;
  std::string cartridges;
  int64_t prompt_tokens = -1;
  int64_t completion_tokens = -1;
  std::string finish_reason;
  std::string error;
  bool stream = false;
};
thread_local RequestLog current_log;

// Whether `given` equals `expected`, in a time that does not depend on where they first differ (an
// attacker timing the 401s learns nothing about the key's prefix).
bool same_secret(const std::string& given, const std::string& expected) {
  unsigned char difference = given.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < expected.size(); ++i) {
    difference |= static_cast<unsigned char>(expected[i] ^ (i < given.size() ? given[i] : 0));
  }
  return difference == 0;
}

// `text` as a JSON string: quoted, control characters and invalid UTF-8 escaped or replaced.
std::string escaped(const std::string& text) {
  return json(text).dump(-1, ' ', false, json::error_handler_t::replace);
}

void write_log_line(const std::string& line) {
  char stamp[32];
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &local);
  std::fprintf(stderr, "%s %s\n", stamp, line.c_str());  // one write per line: lines never interleave
}

void send_json(httplib::Response& response, int status, const json& body) {
  response.status = status;
  response.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& response, const ApiError& error) {
  current_log.error = error.what();
  send_json(response, error.status, error_json(error));
}

// Holds one of the server's concurrent-request slots until destroyed.
class RequestSlot {
 public:
  explicit RequestSlot(std::atomic<int64_t>& counter) : counter_(counter) {}
  ~RequestSlot() { --counter_; }
  RequestSlot(const RequestSlot&) = delete;
  RequestSlot& operator=(const RequestSlot&) = delete;

 private:
  std::atomic<int64_t>& counter_;
};

std::string join_names(const std::vector<std::string>& names) {
  std::string joined;
  for (const std::string& name : names) joined += (joined.empty() ? "" : "+") + name;
  return joined;
}

// The state of one streamed response, shared by the content provider and its releaser.
struct StreamState {
  ApiRequest request;
  std::shared_ptr<RequestStream> stream;
  std::shared_ptr<RequestSlot> slot;
  std::string id;
  int64_t created = 0;
  bool sent_first = false;
};

constexpr std::chrono::milliseconds kKeepAliveInterval{2000};  // SSE comment when nothing else was sent
// The whole request body must arrive within this (a slow client gets 408 and the connection is closed).
constexpr std::chrono::seconds kBodyDeadline{30};

}  // namespace

struct Server::Impl {
  LoadedModel model;
  ServerOptions options;
  ProtocolLimits limits;
  std::unique_ptr<CartridgeRegistry> registry;
  std::unique_ptr<Scheduler> scheduler;
  httplib::Server http;
  std::atomic<int64_t> in_flight{0};
  std::atomic<uint64_t> request_number{0};
  uint64_t id_salt = std::random_device{}();
  std::random_device seed_source;
  std::mutex seed_mutex;
  int64_t started_at = static_cast<int64_t>(std::time(nullptr));
  int port = 0;

  void register_routes();
  // The request body, read through `reader` up to options.max_body_bytes however it is sent (Content-Length
  // or chunked). Throws ApiError 413 (and asks to close the connection) past the limit.
  std::string read_body(const httplib::Request& request, const httplib::ContentReader& reader,
                        httplib::Response& response) const;
  void handle_generation(Endpoint endpoint, const std::string& body, httplib::Response& response);
  void handle_models(httplib::Response& response);
  void handle_stats(httplib::Response& response);
  std::vector<int32_t> prompt_ids(const ApiRequest& request);
  // `message` with the cartridges directory's path (as given and absolute) replaced by "<cartridges>".
  std::string without_server_paths(std::string message) const;
  std::string next_id(Endpoint endpoint);
};

std::string Server::Impl::without_server_paths(std::string message) const {
  std::vector<std::string> paths;
  const std::filesystem::path given(options.cartridges_directory);
  for (std::filesystem::path path : {given, std::filesystem::absolute(given).lexically_normal()}) {
    std::string text = path.string();
    while (text.size() > 1 && text.back() == '/') text.pop_back();
    if (!text.empty() && text != ".") paths.push_back(text);
  }
  std::sort(paths.begin(), paths.end(), [](const std::string& a, const std::string& b) {
    return a.size() > b.size();  // the longest first, so a prefix never cuts a longer match short
  });
  for (const std::string& path : paths) {
    for (size_t at = message.find(path); at != std::string::npos; at = message.find(path, at)) {
      message.replace(at, path.size(), "<cartridges>");
      at += std::string("<cartridges>").size();
    }
  }
  return message;
}

std::string Server::Impl::next_id(Endpoint endpoint) {
  char hex[32];
  std::snprintf(hex, sizeof(hex), "%08llx%08llx", static_cast<unsigned long long>(id_salt & 0xffffffffu),
                static_cast<unsigned long long>(++request_number));
  return std::string(endpoint == Endpoint::kCompletions ? "cmpl-" : "chatcmpl-") + hex;
}

std::vector<int32_t> Server::Impl::prompt_ids(const ApiRequest& request) {
  if (request.endpoint == Endpoint::kChatCompletions) {
    if (request.cartridges.empty())
      return model.encode_chat(request.messages, /*add_generation_prompt=*/true);
    // The messages follow the cartridges as they were made for (docs/framing.md).
    Framing framing;
    try {
      framing = registry->framing(request.cartridges);
    } catch (const MismatchError& error) {
      throw ApiError(400, "invalid_request_error", "cartridge_framing_mismatch", error.what(), "cartridges");
    }
    return model.encode_chat_after_cartridge(request.messages, framing, /*add_generation_prompt=*/true);
  }
  if (request.prompt_ids) {
    const int64_t vocabulary = model.model->config().vocab_size;
    for (int32_t id : *request.prompt_ids) {
      if (id >= vocabulary) {
        throw ApiError(400, "invalid_request_error", "invalid_value",
                       "token id " + std::to_string(id) + " in 'prompt' is outside the vocabulary of " +
                           std::to_string(vocabulary) + " tokens",
                       "prompt");
      }
    }
    return *request.prompt_ids;
  }
  // Exactly as `cartridge generate --prompt`: the tokenizer's default special tokens.
  return model.tokenizer->encode(request.prompt, /*add_special_tokens=*/true);
}

std::string Server::Impl::read_body(const httplib::Request& request, const httplib::ContentReader& reader,
                                    httplib::Response& response) const {
  const size_t limit = static_cast<size_t>(options.max_body_bytes);
  const auto too_large = [&] {
    response.set_header("Connection", "close");  // the rest of the body is never read
    return ApiError(
        413, "invalid_request_error", "request_too_large",
        "the request body is larger than this server's limit of " + std::to_string(limit) + " bytes");
  };
  if (request.has_header("Content-Length") &&
      request.get_header_value_u64("Content-Length") > static_cast<uint64_t>(limit)) {
    throw too_large();
  }
  std::string body;
  bool over = false;
  bool late = false;
  const Clock::time_point deadline = Clock::now() + kBodyDeadline;
  const bool complete = reader([&](const char* data, size_t length) {
    if (body.size() + length > limit) {
      over = true;
      return false;  // stop reading
    }
    // Each read waits at most the read timeout, but a body trickled a byte at a time would hold this
    // connection's thread for as long as the client likes without a deadline for the whole body.
    if (Clock::now() > deadline) {
      late = true;
      return false;
    }
    body.append(data, length);
    return true;
  });
  if (over) throw too_large();
  if (late) {
    response.set_header("Connection", "close");
    throw ApiError(
        408, "invalid_request_error", "request_timeout",
        "the request body did not arrive within " + std::to_string(kBodyDeadline.count()) + " seconds");
  }
  if (!complete) {
    response.set_header("Connection", "close");
    throw ApiError(400, "invalid_request_error", "invalid_request", "the request body could not be read");
  }
  return body;
}

void Server::Impl::handle_generation(Endpoint endpoint, const std::string& body,
                                     httplib::Response& response) {
  if (++in_flight > options.max_concurrent_requests) {
    --in_flight;
    throw ApiError(429, "rate_limit_error", "server_busy",
                   "the server is serving its maximum of " + std::to_string(options.max_concurrent_requests) +
                       " concurrent requests; retry shortly");
  }
  auto slot = std::make_shared<RequestSlot>(in_flight);

  ApiRequest request = parse_api_request(endpoint, body, limits);
  current_log.model = request.model;
  current_log.cartridges = join_names(request.cartridges);
  current_log.stream = request.stream;

  GenerationRequest generation;
  if (!request.cartridges.empty()) {
    try {
      generation.prefixes = registry->acquire(request.cartridges);
    } catch (const CartridgeMemoryFullError& error) {
      throw ApiError(503, "server_error", "cartridge_memory_full", error.what(), "model");
    }
  }
  generation.prompt_ids = prompt_ids(request);
  generation.sampling = request.sampling;
  if (!request.seed_given) {
    std::lock_guard<std::mutex> lock(seed_mutex);
    generation.sampling.seed = (static_cast<uint64_t>(seed_source()) << 32) ^ seed_source();
  }
  generation.max_new_tokens = request.max_tokens;
  if (!request.max_tokens_given) {
    // OpenAI's default is "until the context is full": never let the default alone overflow the context.
    const int64_t used = static_cast<int64_t>(generation.prompt_ids.size()) + generation.prefix_length();
    const int64_t context_left = model.model->config().max_position_embeddings - used;
    generation.max_new_tokens = std::max<int64_t>(0, std::min(generation.max_new_tokens, context_left));
  }
  generation.stop_strings = request.stop;
  generation.stop_at_eos = !request.ignore_eos;
  current_log.prompt_tokens = static_cast<int64_t>(generation.prompt_ids.size());
  std::shared_ptr<RequestStream> stream = scheduler->submit(std::move(generation));

  const std::string id = next_id(endpoint);
  const int64_t created = static_cast<int64_t>(std::time(nullptr));
  if (!request.stream) {
    RequestStream::Event end = stream->wait_for_end();
    if (end.kind == RequestStream::Event::Kind::kFailed) {
      throw ApiError(500, "server_error", "generation_failed", "generation failed: " + end.text);
    }
    current_log.completion_tokens = static_cast<int64_t>(end.result.token_ids.size());
    current_log.finish_reason = end.result.finish_reason;
    send_json(response, 200, completion_response(request, id, created, end.result));
    return;
  }

  auto state = std::make_shared<StreamState>();
  state->request = std::move(request);
  state->stream = stream;
  state->slot = slot;
  state->id = id;
  state->created = created;
  response.set_header("Cache-Control", "no-cache");
  response.set_chunked_content_provider(
      "text/event-stream",
      [state](size_t, httplib::DataSink& sink) {
        auto write = [&sink](const std::string& bytes) { return sink.write(bytes.data(), bytes.size()); };
        const ApiRequest& request = state->request;
        if (!state->sent_first && request.endpoint == Endpoint::kChatCompletions) {
          // OpenAI's first chat chunk carries the role.
          if (!write(sse_event(stream_chunk(request, state->id, state->created, "", std::nullopt, true))))
            return false;
          state->sent_first = true;
        }
        std::optional<RequestStream::Event> event = state->stream->next(kKeepAliveInterval);
        if (!event) return write(": keep-alive\n\n");  // a failed write tells us the client left
        switch (event->kind) {
          case RequestStream::Event::Kind::kText:
            state->sent_first = true;
            return write(sse_event(
                stream_chunk(request, state->id, state->created, event->text, std::nullopt, false)));
          case RequestStream::Event::Kind::kFinished: {
            const GenerationResult& result = event->result;
            current_log.completion_tokens = static_cast<int64_t>(result.token_ids.size());
            current_log.finish_reason = result.finish_reason;
            json last = stream_chunk(request, state->id, state->created, "", result.finish_reason, false);
            last["timings"] = timings_json(result.timings);  // where llama.cpp's server puts them
            bool written = write(sse_event(last));
            if (written && request.include_usage) {
              written = write(sse_event(usage_chunk(request, state->id, state->created, result)));
            }
            if (written) written = write(kSseDone);
            if (written) sink.done();
            return written;
          }
          case RequestStream::Event::Kind::kFailed: {
            const ApiError error(500, "server_error", "generation_failed",
                                 "generation failed: " + event->text);
            current_log.error = error.what();
            const bool written = write(sse_event(error_json(error)));
            if (written) sink.done();
            return written;
          }
        }
        return false;
      },
      [state](bool success) {
        if (!success) state->stream->cancel();  // the client went away: free its batch row
      });
}

void Server::Impl::handle_models(httplib::Response& response) {
  json data = json::array();
  data.push_back({{"id", limits.base_model_id},
                  {"object", "model"},
                  {"created", started_at},
                  {"owned_by", "cartridge.cpp"}});
  for (const std::string& name : registry->list()) {
    if (name == limits.base_model_id) continue;  // the base model's id always means "no cartridge"
    data.push_back({{"id", name},
                    {"object", "model"},
                    {"created", started_at},
                    {"owned_by", "cartridge.cpp"},
                    {"root", limits.base_model_id},
                    {"parent", limits.base_model_id}});
  }
  send_json(response, 200, {{"object", "list"}, {"data", data}});
}

void Server::Impl::handle_stats(httplib::Response& response) {
  const Scheduler::Stats scheduler_stats = scheduler->stats();
  const CartridgeRegistry::Stats registry_stats = registry->stats();
  send_json(response, 200,
            {{"scheduler",
              {{"waiting", scheduler_stats.waiting},
               {"running", scheduler_stats.running},
               {"completed", scheduler_stats.completed},
               {"prefill_steps", scheduler_stats.prefill_steps},
               {"decode_steps", scheduler_stats.decode_steps},
               {"generated_tokens", scheduler_stats.generated_tokens},
               {"peak_batch", scheduler_stats.peak_batch},
               {"kv_bytes", scheduler_stats.kv_bytes},
               {"peak_kv_bytes", scheduler_stats.peak_kv_bytes},
               {"kv_capacity_bytes", scheduler_stats.kv_capacity_bytes},
               {"peak_kv_capacity_bytes", scheduler_stats.peak_kv_capacity_bytes},
               {"cartridge_kv_bytes", scheduler_stats.cartridge_kv_bytes},
               {"peak_cartridge_kv_bytes", scheduler_stats.peak_cartridge_kv_bytes}}},
             {"cartridges",
              {{"resident_bytes", registry_stats.resident_bytes},
               {"entries", registry_stats.entries},
               {"loads", registry_stats.loads},
               {"hits", registry_stats.hits},
               {"evictions", registry_stats.evictions},
               {"held_bytes", registry_stats.held_bytes},
               {"refusals", registry_stats.refusals},
               {"budget_bytes", options.max_cartridge_memory}}},
             {"in_flight_requests", in_flight.load()}});
}

void Server::Impl::register_routes() {
  // Every handler answers a thrown exception with an OpenAI error object instead of letting it escape.
  // The client gets the message without the server's own paths; the log keeps them for the operator.
  auto guarded = [this](auto handler) {
    return [this, handler](const httplib::Request& request, httplib::Response& response) {
      try {
        handler(request, response);
      } catch (const std::exception& error) {
        const ApiError full = to_api_error(error);
        send_error(response, ApiError(full.status, full.type, full.code, without_server_paths(full.what()),
                                      full.param));
        current_log.error = full.what();
      }
    };
  };
  http.Get("/health", guarded([](const httplib::Request&, httplib::Response& response) {
             send_json(response, 200, {{"status", "ok"}});
           }));
  http.Get("/v1/models", guarded([this](const httplib::Request&, httplib::Response& response) {
             handle_models(response);
           }));
  http.Get("/v1/stats",
           guarded([this](const httplib::Request&, httplib::Response& response) { handle_stats(response); }));
  // The generation endpoints read their own body, to hold the size limit and a deadline however it is
  // sent (Content-Length or chunked).
  for (const auto& [path, endpoint] : {std::pair{"/v1/completions", Endpoint::kCompletions},
                                       std::pair{"/v1/chat/completions", Endpoint::kChatCompletions}}) {
    const Endpoint chosen = endpoint;
    http.Post(path, [this, guarded, chosen](const httplib::Request& request, httplib::Response& response,
                                            const httplib::ContentReader& reader) {
      guarded([&](const httplib::Request&, httplib::Response& inner) {
        handle_generation(chosen, read_body(request, reader, inner), inner);
      })(request, response);
    });
  }

  // A known path with the wrong method gets 405 and the method it takes (cpp-httplib alone says 404).
  const auto method_not_allowed = [](const std::string& allowed) {
    return [allowed](const httplib::Request& request, httplib::Response& response) {
      response.set_header("Allow", allowed);
      send_error(response,
                 ApiError(405, "invalid_request_error", "method_not_allowed",
                          request.method + " is not allowed on " + request.path + ": use " + allowed));
    };
  };
  for (const char* path : {"/health", "/v1/models", "/v1/stats"}) {
    http.Post(path, method_not_allowed("GET"));
    http.Put(path, method_not_allowed("GET"));
    http.Delete(path, method_not_allowed("GET"));
  }
  for (const char* path : {"/v1/completions", "/v1/chat/completions"}) {
    http.Get(path, method_not_allowed("POST"));
    http.Put(path, method_not_allowed("POST"));
    http.Delete(path, method_not_allowed("POST"));
  }

  // Runs before the body is read: the API key is checked before a byte of it is.
  http.set_pre_routing_handler([this](const httplib::Request& request, httplib::Response& response) {
    current_log = RequestLog();
    if (!options.api_key.empty() && request.path.rfind("/v1/", 0) == 0 &&
        !same_secret(request.get_header_value("Authorization"), "Bearer " + options.api_key)) {
      response.set_header("WWW-Authenticate", "Bearer");
      send_error(response,
                 ApiError(401, "invalid_request_error", "invalid_api_key",
                          "missing or wrong API key (send the header Authorization: Bearer <key>)"));
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // Errors raised by cpp-httplib itself (unknown path, body too large, bad HTTP) get an OpenAI error body
  // too.
  const int64_t max_body_bytes = options.max_body_bytes;
  http.set_error_handler(httplib::Server::HandlerWithResponse(
      [max_body_bytes](const httplib::Request& request, httplib::Response& response) {
        if (!response.body.empty() || response.content_provider_)
          return httplib::Server::HandlerResponse::Unhandled;
        ApiError error(response.status, "invalid_request_error", "invalid_request", "bad request");
        switch (response.status) {
          case 404:
            error = ApiError(404, "not_found_error", "unknown_url",
                             "unknown URL " + request.method + " " + request.path.substr(0, 200) +
                                 " (this server has GET /health, GET /v1/models, GET /v1/stats, POST "
                                 "/v1/completions, POST /v1/chat/completions)");
            break;
          case 413:
            error = ApiError(413, "invalid_request_error", "request_too_large",
                             "the request body is larger than this server's limit of " +
                                 std::to_string(max_body_bytes) + " bytes");
            break;
          case 405:
            error = ApiError(405, "invalid_request_error", "method_not_allowed", "method not allowed");
            break;
          default:
            if (response.status >= 500)
              error = ApiError(response.status, "server_error", "internal_error", "internal error");
            break;
        }
        send_error(response, error);
        return httplib::Server::HandlerResponse::Handled;
      }));
  http.set_logger([this](const httplib::Request& request, const httplib::Response& response) {
    if (options.log_requests) {
      const double milliseconds =
          std::chrono::duration<double, std::milli>(Clock::now() - current_log.start).count();
      char timing[32];
      std::snprintf(timing, sizeof(timing), "%.1fms", milliseconds);
      // Every field a client chose is written JSON-escaped: a newline in it cannot forge a log line.
      std::string line = request.remote_addr + " " +
                         escaped(request.method + " " + request.path.substr(0, 200)) + " " +
                         std::to_string(response.status) + " " + timing;
      if (!current_log.model.empty()) line += " model=" + escaped(current_log.model);
      if (!current_log.cartridges.empty()) line += " cartridges=" + escaped(current_log.cartridges);
      if (current_log.stream) line += " stream";
      if (current_log.prompt_tokens >= 0)
        line += " prompt_tokens=" + std::to_string(current_log.prompt_tokens);
      if (current_log.completion_tokens >= 0) {
        line += " completion_tokens=" + std::to_string(current_log.completion_tokens);
      }
      if (!current_log.finish_reason.empty()) line += " finish=" + current_log.finish_reason;
      if (!current_log.error.empty()) {
        line += " error=" + escaped(current_log.error.substr(0, 300));
      }
      write_log_line(line);
    }
    current_log = RequestLog();
  });
}

Server::Server(LoadedModel model, ServerOptions options) : impl_(std::make_unique<Impl>()) {
  Impl& impl = *impl_;
  impl.model = std::move(model);
  impl.options = std::move(options);
  if (impl.options.cartridges_directory.empty()) {
    throw InvalidArgumentError("the server needs a cartridges directory (--cartridges DIR)");
  }
  if (impl.options.max_batch < 1) throw InvalidArgumentError("--max-batch must be >= 1");
  if (impl.options.max_concurrent_requests < 1)
    throw InvalidArgumentError("--max-concurrent-requests must be >= 1");
  if (impl.options.max_connections <= impl.options.max_concurrent_requests) {
    throw InvalidArgumentError("--max-connections (" + std::to_string(impl.options.max_connections) +
                               ") must be more than --max-concurrent-requests (" +
                               std::to_string(impl.options.max_concurrent_requests) +
                               "), so that /health and errors can be answered while every request streams");
  }
  if (impl.options.max_body_bytes < 1) throw InvalidArgumentError("--max-body-bytes must be >= 1");
  if (impl.options.max_tokens_limit < 1) throw InvalidArgumentError("--max-tokens-limit must be >= 1");
  impl.limits.base_model_id =
      impl.options.model_id.empty() ? default_model_id(impl.model.files) : impl.options.model_id;
  impl.limits.max_tokens_limit = impl.options.max_tokens_limit;
  impl.registry = std::make_unique<CartridgeRegistry>(
      impl.options.cartridges_directory, impl.options.max_cartridge_memory, make_adapter_loader(impl.model),
      make_adapter_sizer(impl.model));
  SchedulerOptions scheduler_options;
  scheduler_options.max_batch = impl.options.max_batch;
  scheduler_options.max_prefill_tokens = impl.options.max_prefill_tokens;
  scheduler_options.prefix_storage =
      impl.options.share_cartridge_kv ? PrefixStorage::kShared : PrefixStorage::kCopiedPerRow;
  impl.scheduler = std::make_unique<Scheduler>(impl.model.model, impl.model.tokenizer, scheduler_options);

  // A thread per connection being served (cpp-httplib reads a request on the thread that serves it):
  // streamed requests hold theirs until they end, idle keep-alive connections until they time out, and a
  // client that sends its request slowly only its own. As many connections wait for a thread; cpp-httplib
  // closes any beyond that at once, so slow or idle clients cannot make the process hold connections
  // without bound. Threads start on demand and the most recently idle serves next (util/worker_threads.h),
  // so the process holds the memory of as many threads as connections were ever served at once, not of
  // all --max-connections.
  const size_t connections = static_cast<size_t>(impl.options.max_connections);
  impl.http.new_task_queue = [connections] { return new ConnectionThreads(connections, connections); };
  impl.http.set_payload_max_length(static_cast<size_t>(impl.options.max_body_bytes));
  impl.http.set_keep_alive_timeout(5);  // seconds idle between requests on one connection
  impl.http.set_read_timeout(5);        // seconds for any one read of a request (then the connection closes)
  impl.http.set_write_timeout(5);       // seconds for any one write of a response
  impl.register_routes();
}

Server::~Server() {
  if (impl_) impl_->http.stop();
}

int Server::bind() {
  Impl& impl = *impl_;
  if (impl.options.port == 0) {
    impl.port = impl.http.bind_to_any_port(impl.options.host);
    if (impl.port < 0) impl.port = 0;
  } else if (impl.http.bind_to_port(impl.options.host, impl.options.port)) {
    impl.port = impl.options.port;
  }
  if (impl.port == 0) {
    throw InvalidArgumentError(
        "cannot listen on " + impl.options.host + ":" + std::to_string(impl.options.port) +
        " (the port is in use or the address is not local; pick another --port/--host)");
  }
  return impl.port;
}

void Server::listen() { impl_->http.listen_after_bind(); }

void Server::stop() { impl_->http.stop(); }

int Server::port() const { return impl_->port; }

const std::string& Server::model_id() const { return impl_->limits.base_model_id; }

CartridgeRegistry& Server::registry() { return *impl_->registry; }

Scheduler& Server::scheduler() { return *impl_->scheduler; }

std::string default_model_id(const ModelFiles& files) {
  namespace fs = std::filesystem;
  if (files.format == ModelFormat::kGguf) return fs::path(files.gguf_path).stem().string();
  std::error_code error;
  if (fs::is_directory(files.name, error)) {
    const fs::path folder = fs::path(files.name).lexically_normal();
    const std::string name = (folder.has_filename() ? folder : folder.parent_path()).filename().string();
    if (!name.empty() && name != "." && name != "..") return name;
  }
  return files.name;  // a Hub id: org/name
}

CartridgeSizer make_adapter_sizer(const LoadedModel& model) {
  const CartridgeShape shape = CartridgeShape::of_model(model.model->config());
  const auto element_bytes = static_cast<uint64_t>(c10::elementSize(model.model->dtype()));
  return [shape, element_bytes](const std::string& folder) {
    const AdapterConfig config = AdapterConfig::read(folder + "/" + kAdapterConfigFileName);
    // p slots of keys and values for every layer, in the served dtype: what the loader's prefix holds
    // (an adapter of another shape is refused by the loader).
    uint64_t bytes = 0;
    if (config.num_virtual_tokens < 0 ||
        !checked_multiply(static_cast<uint64_t>(config.num_virtual_tokens),
                          static_cast<uint64_t>(shape.width()), &bytes) ||
        !checked_multiply(bytes, element_bytes, &bytes) ||
        bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      throw FormatError(describe_file_problem(folder + "/" + kAdapterConfigFileName,
                                              "num_virtual_tokens " +
                                                  std::to_string(config.num_virtual_tokens) +
                                                  " is too large for any memory"));
    }
    return static_cast<int64_t>(bytes);
  };
}

CartridgeLoader make_adapter_loader(const LoadedModel& model) {
  // The model's fingerprint is computed once; a model whose files do not allow it only loses the warning.
  std::shared_ptr<const ModelFingerprint> fingerprint;
  try {
    fingerprint =
        std::make_shared<const ModelFingerprint>(fingerprint_model(model.files, model.model->config()));
  } catch (const Error& error) {
    write_log_line(std::string("warning: no model fingerprint, cartridges will not be checked against it: ") +
                   error.what());
  }
  std::shared_ptr<const Model> shared_model = model.model;
  const std::string model_name = model.files.name;
  return [shared_model, fingerprint, model_name](const std::string& folder) {
    const LoadedAdapter adapter = load_adapter(folder);
    // `cartridge generate` only warns about a fingerprint from another model (the user chose the pair);
    // a server answering many users refuses it, since every answer with it would be meaningless.
    const std::vector<std::string> mismatches =
        check_adapter_for_model(adapter, shared_model->config(), fingerprint.get(), model_name);
    if (!mismatches.empty()) {
      throw MismatchError(mismatches.front() +
                          "; the server refuses it: serve it with the model it was made "
                          "for, or make it again with this one");
    }
    for (const std::string& warning : adapter.warnings) write_log_line("warning: " + folder + ": " + warning);
    return adapter.cartridge.kv_prefix(shared_model->config(), shared_model->dtype(), shared_model->device());
  };
}

}  // namespace cartridge
