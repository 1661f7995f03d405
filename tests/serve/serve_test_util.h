// Helpers for the serve tests: the default model loaded once, cartridges made from text by a base-model
// prefill (so their KV is what a real cartridge holds), temporary folders.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cartridge/cartridge.h"
#include "generate/loaded_model.h"
#include "test_support.h"

namespace cartridge::testing {

// SmolLM2 (the default GGUF), fp32 on the CPU, loaded once per test binary.
inline const LoadedModel& serve_model() {
  static const LoadedModel* loaded = [] {
    LoadOptions options;
    options.show_progress = false;
    return new LoadedModel(load_model(default_model_path(), options));
  }();
  return *loaded;
}

// A cartridge of the first `tokens` positions of `text` (plain tokenization), frozen count 1.
inline Cartridge cartridge_from_text(const std::string& text, int64_t tokens) {
  const LoadedModel& model = serve_model();
  return Cartridge::from_token_ids(*model.model, model.tokenizer->encode(text, true), tokens, 1);
}

// Texts to make distinct cartridges from.
inline const std::vector<std::string>& cartridge_texts() {
  static const std::vector<std::string> texts = {
      "The Zorblax treaty of 1832 was signed in the city of Quentaro by three river guilds who agreed to "
      "share "
      "the water of the Vell for ninety years.",
      "Marta's bakery sells sourdough on Mondays, rye bread on Wednesdays and cinnamon rolls only on the "
      "first "
      "Saturday of each month.",
      "In the board game Hexfall, each player starts with seven tiles, and a tile can only be placed next to "
      "another tile of the same colour.",
      "Project Lumen is a satellite launched in 2031 to measure the brightness of distant quasars with a "
      "two-metre mirror cooled to four kelvin.",
      "The recipe calls for two cups of flour, one egg, half a cup of milk and a pinch of salt, whisked "
      "until "
      "smooth and rested for an hour.",
      "Captain Ilsa Varn commanded the research vessel Meridian during its survey of the southern trench, "
      "mapping eleven hydrothermal vents.",
  };
  return texts;
}

class ScopedFolder {
 public:
  explicit ScopedFolder(const std::string& stem) {
    std::random_device random;
    path_ = (std::filesystem::temp_directory_path() /
             (stem + "_" + std::to_string(::getpid()) + "_" + std::to_string(random())))
                .string();
    std::filesystem::create_directories(path_);
  }
  ~ScopedFolder() {
    std::error_code error;
    std::filesystem::remove_all(path_, error);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace cartridge::testing
