// `cartridge compose`: several cartridges concatenated into one (PEFT's compose_cartridge_adapters).
#include <fmt/format.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "cartridge/adapter_io.h"
#include "tools/commands.h"

namespace cartridge::tools {

namespace {

struct ComposeOptions {
  std::vector<std::string> adapters;
  std::string out;
  bool force = false;
  bool json = false;
};

void run_compose(const ComposeOptions& options) {
  const std::vector<std::string> warnings =
      compose_adapter_folders(options.adapters, options.out, options.force);
  for (const std::string& warning : warnings) std::cerr << "warning: " << warning << "\n";
  const LoadedAdapter composed = load_adapter(options.out);
  if (options.json) {
    nlohmann::json output = {{"out", options.out},
                             {"inputs", options.adapters},
                             {"num_virtual_tokens", composed.config.num_virtual_tokens},
                             {"num_frozen_tokens", composed.config.num_frozen_tokens},
                             {"weights_file_bytes", composed.weights_file_bytes},
                             {"warnings", warnings}};
    std::cout << output.dump(2) << std::endl;
    return;
  }
  std::cout << fmt::format("wrote {}: {} cartridges, {} virtual tokens ({} frozen), {} bytes\n", options.out,
                           options.adapters.size(), composed.config.num_virtual_tokens,
                           composed.config.num_frozen_tokens, composed.weights_file_bytes);
}

}  // namespace

void add_compose_command(CLI::App& app) {
  auto options = std::make_shared<ComposeOptions>();
  CLI::App* command = app.add_subcommand(
      "compose", "Concatenate cartridges into one adapter (PEFT's compose_cartridge_adapters)");
  command->footer(
      "Rows are concatenated in the order given, with no re-rotation: each part keeps the positions it was\n"
      "made at, and real tokens follow the whole composition. The first adapter's frozen count and config "
      "are\n"
      "kept; the files are byte-identical to peft.compose_cartridge_adapters.\n"
      "Example:\n  cartridge compose report_2023 report_2024 --out both_reports");
  command
      ->add_option("adapters", options->adapters, "Two or more adapter folders (or Hub ids in the HF cache)")
      ->required()
      ->expected(2, -1);
  command->add_option("-o,--out", options->out, "The adapter folder to write")->required();
  command->add_flag("--force", options->force, "Replace --out if it exists");
  command->add_flag("--json", options->json, "Print the result as JSON");
  command->callback([options] { run_compose(*options); });
}

}  // namespace cartridge::tools
