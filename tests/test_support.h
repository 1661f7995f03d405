// Shared helpers for the GoogleTest suites. Oracle fixtures (expected outputs computed by transformers,
// PEFT, the gguf package, HF tokenizers or jinja2) are written by tests/fixtures/make_*.py in the same
// test run (scripts/test.sh runs them before ctest) into $CARTRIDGE_FIXTURES (default build/fixtures).
// A missing fixture fails the test: a test that silently skips cannot fail.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "io/model_files.h"

namespace cartridge::testing {

inline std::string fixtures_root() {
  const char* from_environment = std::getenv("CARTRIDGE_FIXTURES");
  return from_environment != nullptr ? from_environment : CARTRIDGE_DEFAULT_FIXTURES_DIR;
}

// Path of a fixture file or folder, e.g. fixture_path("gguf/smollm2_dequant.safetensors"). Records a
// test failure (and returns the path anyway) if it does not exist.
inline std::string fixture_path(const std::string& relative) {
  const std::string path = fixtures_root() + "/" + relative;
  if (!std::filesystem::exists(path)) {
    ADD_FAILURE() << "missing oracle fixture " << path
                  << " (run: .venv/bin/python tests/fixtures/make_all.py --out " << fixtures_root() << ")";
  }
  return path;
}

// The repository root (for models/ and .testdata/).
inline std::string repo_root() { return CARTRIDGE_SOURCE_DIR; }

// The default model, fetched by scripts/setup.sh.
inline std::string default_model_path() { return repo_root() + "/" + kDefaultModelPath; }

}  // namespace cartridge::testing
