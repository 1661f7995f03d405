#include "util/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

#include "util/error.h"

namespace cartridge {
namespace fs = std::filesystem;

namespace {

// A name beside `path` that no other writer (thread or process) picks at the same time.
std::string temporary_sibling(const std::string& path) {
  static std::atomic<unsigned> counter{0};
  std::random_device device;
  return path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
         std::to_string(device() % 100000);
}

}  // namespace

void write_file_atomic(const std::string& path, std::string_view bytes) {
  const std::string temporary = temporary_sibling(path);
  int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    throw FileNotFoundError(describe_file_problem(path, std::string("cannot write: ") + std::strerror(errno),
                                                  "check that the folder exists and is writable"));
  }
  size_t written = 0;
  while (written < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      const std::string reason = std::strerror(errno);
      ::close(fd);
      ::unlink(temporary.c_str());
      throw FileNotFoundError(describe_file_problem(path, "write failed: " + reason, "is the disk full?"));
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(temporary.c_str());
    throw FileNotFoundError(describe_file_problem(path, "could not flush to disk", "is the disk full?"));
  }
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    ::unlink(temporary.c_str());
    throw FileNotFoundError(describe_file_problem(path, "cannot rename into place: " + reason));
  }
}

void write_directory_atomic(const std::string& path, bool overwrite,
                            const std::function<void(const std::string& temporary_path)>& fill) {
  if (fs::exists(path) && !overwrite) {
    throw InvalidArgumentError(
        describe_file_problem(path, "already exists", "choose another --out or remove it"));
  }
  const std::string temporary = temporary_sibling(path);
  std::error_code ignored;
  try {
    fs::create_directories(temporary);
    fill(temporary);
    if (fs::exists(path)) {
      // Move the old folder aside first, so that at every instant either the old or the new one exists.
      const std::string old = temporary_sibling(path) + ".old";
      fs::rename(path, old);
      fs::rename(temporary, path);
      fs::remove_all(old, ignored);
    } else {
      fs::rename(temporary, path);
    }
  } catch (const fs::filesystem_error& error) {
    fs::remove_all(temporary, ignored);
    throw FileNotFoundError(describe_file_problem(path, error.code().message(),
                                                  "check that the parent folder exists and is writable"));
  } catch (...) {
    fs::remove_all(temporary, ignored);
    throw;
  }
}

}  // namespace cartridge
