// Writing files so that a crash, Ctrl-C or an error never leaves a partial or damaged output: bytes go to
// a temporary name in the same folder, are flushed to disk, then renamed over the destination.
#pragma once

#include <functional>
#include <string>
#include <string_view>

namespace cartridge {

// Writes `bytes` to `path` atomically. Throws FileNotFoundError if the folder is not writable.
void write_file_atomic(const std::string& path, std::string_view bytes);

// Creates folder `path` atomically with whatever `fill` writes into the temporary folder it is given:
// on success the temporary folder is renamed to `path` (an existing `path` is replaced only if
// `overwrite`); on any exception the temporary folder is removed and the exception propagates.
void write_directory_atomic(const std::string& path, bool overwrite,
                            const std::function<void(const std::string& temporary_path)>& fill);

}  // namespace cartridge
