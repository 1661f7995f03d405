// The OpenAI-compatible HTTP server: one model, many cartridges, continuous batching.
//   GET  /health               {"status": "ok"}
//   GET  /v1/models            the base model and every cartridge folder under the cartridges directory
//   POST /v1/completions       raw prompt (tokenized as `cartridge generate` does)
//   POST /v1/chat/completions  messages through the model's chat template
//   GET  /v1/stats             scheduler and cartridge-cache counters (not part of OpenAI's API)
// A request picks its cartridge by `model` (a cartridge folder name; the base model's id means none) or by
// the extra field `cartridges: ["a", "b"]` (composed in that order). Errors are OpenAI error objects with a
// 4xx status for the client's mistakes; one log line per request.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "generate/loaded_model.h"
#include "serve/cartridge_registry.h"
#include "serve/openai_protocol.h"
#include "serve/scheduler.h"

namespace cartridge {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                    // 0 = any free port (see Server::port())
  std::string cartridges_directory;   // required
  std::string model_id;               // the id of the base model in the API; "" = derived from the path
  int64_t max_batch = 32;             // rows decoded together
  int64_t max_prefill_tokens = 4096;  // prompt tokens prefilled together in one step
  int64_t max_cartridge_memory = int64_t{1} << 30;  // bytes of loaded cartridge KV kept cached (0 = no limit)
  int64_t max_body_bytes = int64_t{4} << 20;        // largest request body, bytes
  int64_t max_tokens_limit = 2048;                  // largest max_tokens a request may ask for
  int64_t max_concurrent_requests = 64;             // generation requests in flight; more get 429
  // Connections served at once, each on a thread of its own while it is open (reading its request,
  // generating, or idle between keep-alive requests), so that clients that send slowly hold only their
  // own; as many more wait for a thread, and connections beyond those are closed at once. Must exceed
  // max_concurrent_requests, so that /health answers while every request streams.
  int64_t max_connections = 256;
  // Rows that use the same cartridge read one copy of its KV (false: each row copies it, the old path).
  bool share_cartridge_kv = true;
  bool log_requests = true;  // one line per request on stderr
  // When set, every /v1/ request must send "Authorization: Bearer <api_key>" (401 otherwise); /health
  // stays open for load balancers. "" = no key.
  std::string api_key;
};

class Server {
 public:
  // Builds the registry and starts the scheduler; does not listen yet. Throws FileNotFoundError when the
  // cartridges directory does not exist.
  Server(LoadedModel model, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port. Throws InvalidArgumentError when the address cannot be bound. Returns the port.
  int bind();
  // Serves until stop() (from another thread or a signal-handling thread). Call bind() first.
  void listen();
  void stop();
  int port() const;

  // The id the base model has in the API: options.model_id, or the model file's name without .gguf, or
  // the folder's name.
  const std::string& model_id() const;
  CartridgeRegistry& registry();
  Scheduler& scheduler();

 private:
  struct Impl;  // the HTTP side (cpp-httplib stays out of this header)
  std::unique_ptr<Impl> impl_;
};

// The default cartridge loader of a server: reads the PEFT adapter in a folder, refuses one whose layout
// does not fit the model or whose stored model fingerprint names another model (MismatchError, a 400 for
// the request; an adapter without a fingerprint, e.g. one PEFT saved, is only checked for fit), and
// returns its KV prefix in the model's dtype and device.
CartridgeLoader make_adapter_loader(const LoadedModel& model);
// Its sizer: the KV bytes an adapter folder's config says the loader would return on this model.
CartridgeSizer make_adapter_sizer(const LoadedModel& model);

// The API id of a model loaded from `files` (file name without .gguf, or the folder's name).
std::string default_model_id(const ModelFiles& files);

}  // namespace cartridge
