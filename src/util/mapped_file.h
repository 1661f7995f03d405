// A read-only memory-mapped file. Weights are read straight from the mapping, so opening a multi-GB
// model costs no copy; the readers in io/ check every offset against size() before touching bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace cartridge {

class MappedFile {
 public:
  // Maps `path` read-only. Throws FileNotFoundError if it cannot be opened, FormatError if it is a folder.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }  // bytes
  const std::string& path() const { return path_; }

 private:
  void release();

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;  // bytes
};

// Reads a whole (small) file into a string. Throws FileNotFoundError naming the path, InvalidArgumentError
// for a directory, device, pipe or socket.
std::string read_text_file(const std::string& path);

}  // namespace cartridge
