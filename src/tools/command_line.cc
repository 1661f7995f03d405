// What every command's command line shares: number checks with readable messages, and parse errors on one
// line (tools/commands.h).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "tools/commands.h"

namespace cartridge::tools {

CLI::Validator number_at_least(bool strictly_positive) {
  return CLI::Validator(
      [strictly_positive](std::string& input) -> std::string {
        const char* bound = strictly_positive ? "> 0" : ">= 0";
        char* end = nullptr;
        const long double value = std::strtold(input.c_str(), &end);
        if (input.empty() || end != input.c_str() + input.size() || !std::isfinite(value)) {
          return std::string("must be a number ") + bound + ", got '" + input.substr(0, 40) + "'";
        }
        if (strictly_positive ? !(value > 0) : !(value >= 0)) {
          return std::string("must be ") + bound + ", got " + input.substr(0, 40);
        }
        return "";
      },
      strictly_positive ? "POSITIVE" : "NONNEGATIVE");
}

int report_parse_error(const CLI::App& app, const CLI::ParseError& error, int argc, char** argv) {
  if (error.get_exit_code() == 0) return app.exit(error);  // --help, --help-all: the help, exit 0
  // The command being parsed, for the pointer to its help ("" before one was recognised).
  std::string command;
  for (int i = 1; i < argc && command.empty(); ++i) {
    for (const CLI::App* subcommand : app.get_subcommands({})) {
      if (subcommand->get_name() == argv[i]) command = argv[i];
    }
  }
  std::string message = error.what();
  message = message.substr(0, message.find('\n'));
  if (command.empty() && (argc == 1 || argv[1][0] != '-')) {
    std::string names;
    for (const CLI::App* subcommand : app.get_subcommands({})) {
      names += (names.empty() ? "" : ", ") + subcommand->get_name();
    }
    message = (argc == 1 ? std::string("give a command")
                         : "unknown command '" + std::string(argv[1]).substr(0, 40) + "'") +
              ": one of " + names;
  }
  std::fprintf(stderr, "error: %s (see `cartridge%s --help`)\n", message.c_str(),
               command.empty() ? "" : (" " + command).c_str());
  return error.get_exit_code();
}

}  // namespace cartridge::tools
