#include "util/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "util/error.h"

namespace cartridge {

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw FileNotFoundError(
        describe_file_problem(path, std::string("cannot open: ") + std::strerror(errno), "check the path"));
  }
  struct stat info {};
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    ::close(fd);
    throw FormatError(describe_file_problem(path, "not a regular file", "pass a file, not a folder"));
  }
  size_ = static_cast<size_t>(info.st_size);
  if (size_ > 0) {
    void* mapping = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapping == MAP_FAILED) {
      ::close(fd);
      throw FileNotFoundError(
          describe_file_problem(path, std::string("cannot map: ") + std::strerror(errno)));
    }
    data_ = static_cast<const uint8_t*>(mapping);
  }
  ::close(fd);  // the mapping keeps the file alive
}

MappedFile::~MappedFile() { release(); }

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void MappedFile::release() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

std::string read_text_file(const std::string& path) {
  // A directory reads as empty and a device such as /dev/zero never ends: refuse anything but a file.
  struct stat status {};
  if (::stat(path.c_str(), &status) == 0 && !S_ISREG(status.st_mode)) {
    throw InvalidArgumentError(describe_file_problem(
        path, S_ISDIR(status.st_mode) ? "is a directory" : "is not a regular file (a device, pipe or socket)",
        "give the path of a file"));
  }
  std::ifstream stream(path, std::ios::binary);
  if (!stream) {
    throw FileNotFoundError(describe_file_problem(path, "cannot open", "check the path"));
  }
  std::ostringstream contents;
  contents << stream.rdbuf();
  return contents.str();
}

}  // namespace cartridge
