// `cartridge serve`: the OpenAI-compatible server (src/serve/server.h), until SIGINT or SIGTERM.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "io/model_files.h"
#include "serve/server.h"
#include "tools/commands.h"

namespace cartridge::tools {

namespace {

struct ServeCommandOptions {
  ModelOptions model;
  ServerOptions server;
  bool copy_cartridge_kv = false;  // --copy-cartridge-kv: server.share_cartridge_kv = false
};

void run_serve(ServeCommandOptions options) {
  // No malloc tuning here any more: the program runs on tcmalloc (CMakeLists.txt). Under glibc's malloc,
  // whose mmap threshold rises each time a large block is freed, the server grew to 3.6-4.0 GB in 3 minutes
  // of mixed traffic until this function fixed the threshold at 1 MiB; on tcmalloc the same soak stays flat
  // (409 MiB, -0.3 MiB over the second half; docs/reliability.md).

  // Signals go to one thread that stops the server cleanly; block them before any other thread starts so
  // every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  options.server.share_cartridge_kv = !options.copy_cartridge_kv;
  if (options.server.api_key.empty()) {
    if (const char* key = std::getenv("CARTRIDGE_API_KEY"); key != nullptr) options.server.api_key = key;
  }
  const std::string& host = options.server.host;
  if (options.server.api_key.empty() && host != "127.0.0.1" && host != "localhost" && host != "::1") {
    std::fprintf(stderr,
                 "warning: listening on %s without an API key: anyone who can reach this port can use the "
                 "model (set --api-key or CARTRIDGE_API_KEY)\n",
                 host.c_str());
  }
  LoadedModel loaded = load_model_from_options(options.model);
  Server server(std::move(loaded), options.server);
  const int port = server.bind();
  std::fprintf(stderr,
               "serving %s with the cartridges in %s on http://%s:%d (max batch %lld; Ctrl-C stops)\n",
               server.model_id().c_str(), options.server.cartridges_directory.c_str(),
               options.server.host.c_str(), port, static_cast<long long>(options.server.max_batch));
  std::atomic<bool> listening{true};
  std::thread signal_waiter([&server, &listening, signals] {
    int received = 0;
    sigwait(&signals, &received);
    if (listening) std::fprintf(stderr, "received %s, stopping\n", received == SIGINT ? "SIGINT" : "SIGTERM");
    server.stop();
  });
  server.listen();
  // listen() also returns when accepting fails: wake the signal thread so it can be joined.
  listening = false;
  pthread_kill(signal_waiter.native_handle(), SIGTERM);
  signal_waiter.join();
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto options = std::make_shared<ServeCommandOptions>();
  CLI::App* command = app.add_subcommand(
      "serve", "Serve the model and a folder of cartridges over an OpenAI-compatible HTTP API");
  command->footer(
      "Endpoints: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions (streaming\n"
      "with \"stream\": true), GET /v1/stats. A request picks a cartridge with \"model\": \"<folder name "
      "under\n"
      "--cartridges>\" (the base model's id means none), or composes several with \"cartridges\": [\"a\", "
      "\"b\"].\n"
      "Requests with different cartridges are decoded together in one batch. Cartridges copied into the\n"
      "folder later are found without a restart.\n"
      "Example:\n  cartridge serve --model " +
      std::string(kDefaultModelPath) +
      " --cartridges cartridges/ "
      "--port 8080\n"
      "  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\\n"
      "    -d '{\"model\": \"my-doc\", \"messages\": [{\"role\": \"user\", \"content\": \"Summarise "
      "it.\"}]}'");
  add_model_options(*command, options->model);
  // --weights auto keeps a GGUF's blocks as stored, as the other commands do: since the fused decode step
  // and the kernels that read each weight vector once for 8 tokens, blocks serve 1, 8 and 32 clients
  // faster than fp32 weights (2.8x, 1.7x and 1.14x the requests per second; docs/quantized.md).
  add_weights_option(*command, options->model);
  command
      ->add_option("--cartridges", options->server.cartridges_directory,
                   "Folder whose subfolders are cartridges (PEFT adapters), served by folder name")
      ->required()
      ->check(CLI::ExistingDirectory);
  command->add_option("--host", options->server.host, "Address to listen on (127.0.0.1 = this machine only)")
      ->capture_default_str();
  command->add_option("--api-key", options->server.api_key,
                      "Require \"Authorization: Bearer KEY\" on every /v1/ request (default: the environment "
                      "variable CARTRIDGE_API_KEY; none when unset)");
  command->add_option("--port", options->server.port, "TCP port (0 = any free port)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  command->add_option("--model-id", options->server.model_id,
                      "Id of the base model in the API (default: the model file's name without .gguf)");
  command->add_option("--max-batch", options->server.max_batch, "Most requests decoded together")
      ->capture_default_str()
      ->check(kPositive);
  command
      ->add_option("--max-prefill-tokens", options->server.max_prefill_tokens,
                   "Most prompt tokens prefilled together in one step")
      ->capture_default_str()
      ->check(kPositive);
  command
      ->add_option("--max-cartridge-memory", options->server.max_cartridge_memory,
                   "Bytes of cartridge KV kept loaded; least recently used cartridges are evicted beyond it "
                   "(0 = no limit)")
      ->capture_default_str()
      ->check(kNonNegative);
  command->add_flag("--copy-cartridge-kv", options->copy_cartridge_kv,
                    "Give every request its own copy of its cartridge's KV (the old path, for comparison; "
                    "default: one copy per cartridge, read once per step by every request that uses it)");
  command
      ->add_option("--max-body-bytes", options->server.max_body_bytes,
                   "Largest request body accepted (bytes)")
      ->capture_default_str()
      ->check(kPositive);
  command
      ->add_option("--max-tokens-limit", options->server.max_tokens_limit,
                   "Largest max_tokens a request may ask for")
      ->capture_default_str()
      ->check(kPositive);
  command
      ->add_option("--max-concurrent-requests", options->server.max_concurrent_requests,
                   "Generation requests served at once; more are answered 429")
      ->capture_default_str()
      ->check(kPositive);
  command
      ->add_option("--max-connections", options->server.max_connections,
                   "Connections served at once, a thread each (a client sending slowly holds only its own); "
                   "as many more wait, and any beyond are closed at once. Must exceed "
                   "--max-concurrent-requests")
      ->capture_default_str()
      ->check(kPositive);
  command->add_flag(
      "--no-request-log", [options](int64_t) { options->server.log_requests = false; },
      "Do not log one line per request on stderr");
  command->callback([options] { run_serve(*options); });
}

}  // namespace cartridge::tools
