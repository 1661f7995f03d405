// Encode throughput of our tokenizer on one text file: one call on the whole text (single thread) and the
// text's lines encoded by N threads sharing one Tokenizer. Prints JSON lines for bench/tokenizer_bench.py,
// which times HF tokenizers on the same text in the same run and prints the table.
//
//   tokenizer_bench --tokenizer-json tokenizer.json [--tokenizer-config tokenizer_config.json] --text FILE
//   tokenizer_bench --gguf model.gguf --text FILE [--repeats 3] [--threads N]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "io/gguf.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// FNV-1a over the ids, so the driver can check that both implementations produced the same ids.
uint64_t checksum(const std::vector<int32_t>& ids, uint64_t hash = 1469598103934665603ULL) {
  for (const int32_t id : ids) {
    hash ^= static_cast<uint32_t>(id);
    hash *= 1099511628211ULL;
  }
  return hash;
}

// Lines of `text`, each keeping its "\n" (as Python's str.splitlines(keepends=True) for "\n" only).
std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    end = end == std::string::npos ? text.size() : end + 1;
    lines.push_back(text.substr(start, end - start));
    start = end;
  }
  return lines;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Tokenizer encode throughput (see bench/tokenizer_bench.py)"};
  std::string tokenizer_json, tokenizer_config, gguf_path, text_path;
  int repeats = 3;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  app.add_option("--tokenizer-json", tokenizer_json, "tokenizer.json to load");
  app.add_option("--tokenizer-config", tokenizer_config, "tokenizer_config.json beside it");
  app.add_option("--gguf", gguf_path, "GGUF file whose tokenizer to load instead");
  app.add_option("--text", text_path, "UTF-8 text to encode")->required();
  app.add_option("--repeats", repeats, "timed runs after one warm-up; the best is reported")
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "threads for the line-by-line run")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  try {
    if (tokenizer_json.empty() == gguf_path.empty()) {
      throw cartridge::InvalidArgumentError("give exactly one of --tokenizer-json and --gguf");
    }
    const std::string text = cartridge::read_text_file(text_path);
    const auto load_start = Clock::now();
    const cartridge::Tokenizer tokenizer =
        gguf_path.empty() ? cartridge::Tokenizer::from_tokenizer_json(tokenizer_json, tokenizer_config)
                          : cartridge::Tokenizer::from_gguf(cartridge::GgufFile(gguf_path));
    const double load_seconds = seconds_since(load_start);

    // One call on the whole text. The first run also fills the word cache, as HF's first run does.
    double best = 1e30;
    std::vector<int32_t> ids;
    for (int run = 0; run <= repeats; ++run) {
      const auto start = Clock::now();
      ids = tokenizer.encode(text, false);
      if (run > 0) best = std::min(best, seconds_since(start));
    }
    std::cout << nlohmann::json{{"impl", "ours"},
                                {"mode", "single"},
                                {"threads", 1},
                                {"bytes", text.size()},
                                {"tokens", ids.size()},
                                {"seconds", best},
                                {"checksum", std::to_string(checksum(ids))},
                                {"load_seconds", load_seconds}}
                     .dump()
              << std::endl;

    // The lines, spread over `threads` threads that share the tokenizer.
    const std::vector<std::string> lines = split_lines(text);
    std::vector<std::vector<int32_t>> line_ids(lines.size());
    best = 1e30;
    for (int run = 0; run <= repeats; ++run) {
      std::atomic<size_t> next{0};
      const auto start = Clock::now();
      std::vector<std::thread> workers;
      for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&] {
          for (size_t i = next++; i < lines.size(); i = next++)
            line_ids[i] = tokenizer.encode(lines[i], false);
        });
      }
      for (std::thread& worker : workers) worker.join();
      if (run > 0) best = std::min(best, seconds_since(start));
    }
    uint64_t hash = 1469598103934665603ULL;
    size_t tokens = 0;
    for (const auto& line : line_ids) {
      hash = checksum(line, hash);
      tokens += line.size();
    }
    std::cout << nlohmann::json{{"impl", "ours"},
                                {"mode", "lines"},
                                {"threads", threads},
                                {"bytes", text.size()},
                                {"tokens", tokens},
                                {"seconds", best},
                                {"checksum", std::to_string(hash)}}
                     .dump()
              << std::endl;
  } catch (const cartridge::Error& error) {
    std::cerr << "error: " << error.what() << std::endl;
    return 1;
  }
  return 0;
}
