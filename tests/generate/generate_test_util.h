// Helpers for the generate tests: the default model (SmolLM2 GGUF, fp32 on the CPU), loaded once per test
// binary.
#pragma once

#include "generate/loaded_model.h"
#include "test_support.h"

namespace cartridge::testing {

inline const LoadedModel& default_model() {
  static const LoadedModel* loaded = [] {
    LoadOptions options;
    options.show_progress = false;
    return new LoadedModel(load_model(default_model_path(), options));
  }();
  return *loaded;
}

}  // namespace cartridge::testing
