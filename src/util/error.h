// Errors that reach a user. Every user mistake (bad path, corrupt file, wrong model for an adapter, text
// shorter than the cartridge, ...) is thrown as one of these with a one-line message that says what was
// expected, what was found, and what to do. The CLI prints `error: <what()>` and exits non-zero.
// Internal invariants use TORCH_CHECK / assert instead.
#pragma once

#include <stdexcept>
#include <string>

namespace cartridge {

// Base of all user-facing errors. `what()` is a single line.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// A file or folder that is missing, unreadable, or not where it was looked for.
class FileNotFoundError : public Error {
 public:
  using Error::Error;
};

// A file whose bytes are not what its format requires (truncated, bad magic, offsets out of range, ...).
class FormatError : public Error {
 public:
  using Error::Error;
};

// Something valid in itself that this program does not support (an architecture, a tensor type, ...).
class UnsupportedError : public Error {
 public:
  using Error::Error;
};

// Two valid things that do not fit together (an adapter for another model, incompatible cartridges, ...).
class MismatchError : public Error {
 public:
  using Error::Error;
};

// A bad argument or request from the user (a value out of range, text shorter than the cartridge, ...).
class InvalidArgumentError : public Error {
 public:
  using Error::Error;
};

// Builds "<path>: <problem> (<hint>)" so every file error names the file first.
std::string describe_file_problem(const std::string& path, const std::string& problem,
                                  const std::string& hint = "");

}  // namespace cartridge
