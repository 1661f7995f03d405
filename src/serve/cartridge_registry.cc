#include "serve/cartridge_registry.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>

#include <ATen/ATen.h>

#include "util/error.h"

namespace cartridge {
namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxNameLength = 128;  // characters
constexpr char kAdapterConfigName[] = "adapter_config.json";

// True when canonical path `path` is `directory` itself or lies below it.
bool is_inside(const std::string& path, const std::string& directory) {
  if (path.size() <= directory.size()) return false;
  return path.compare(0, directory.size(), directory) == 0 && path[directory.size()] == '/';
}

std::string canonical_or_empty(const fs::path& path) {
  std::error_code error;
  const fs::path canonical = fs::canonical(path, error);
  return error ? std::string() : canonical.string();
}

}  // namespace

CartridgeRegistry::CartridgeRegistry(std::string directory, int64_t memory_budget_bytes,
                                     CartridgeLoader loader, CartridgeSizer sizer)
    : directory_(std::move(directory)),
      memory_budget_bytes_(memory_budget_bytes),
      loader_(std::move(loader)),
      sizer_(std::move(sizer)) {
  std::error_code error;
  if (!fs::is_directory(directory_, error)) {
    throw FileNotFoundError(
        describe_file_problem(directory_, "the cartridges directory does not exist",
                              "create it, or pass the folder that holds your cartridge folders"));
  }
  canonical_directory_ = canonical_or_empty(directory_);
  if (canonical_directory_.empty()) {
    throw FileNotFoundError(describe_file_problem(directory_, "the cartridges directory cannot be resolved"));
  }
  if (memory_budget_bytes_ < 0) throw InvalidArgumentError("the cartridge memory budget must be >= 0 bytes");
}

bool CartridgeRegistry::is_valid_name(const std::string& name) {
  if (name.empty() || name.size() > kMaxNameLength || name[0] == '.') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

Framing CartridgeRegistry::framing(const std::vector<std::string>& names) const {
  std::vector<Framing> framings;
  for (const std::string& name : names) framings.push_back(read_framing(resolve_folder(name)));
  return common_framing(framings, names);
}

std::string CartridgeRegistry::resolve_folder(const std::string& name) const {
  if (!is_valid_name(name)) {
    throw InvalidArgumentError("'" + name.substr(0, kMaxNameLength) +
                               "' is not a valid cartridge name (expected a folder name under the cartridges "
                               "directory: letters, digits, '.', '_', '-', not starting with '.')");
  }
  const fs::path folder = fs::path(directory_) / name;
  const std::string canonical = canonical_or_empty(folder);
  std::error_code error;
  if (canonical.empty() || !fs::is_directory(canonical, error) ||
      !fs::is_regular_file(fs::path(canonical) / kAdapterConfigName, error)) {
    throw FileNotFoundError("no cartridge named '" + name + "' in " + directory_ +
                            " (GET /v1/models lists the cartridges; a cartridge is a folder with " +
                            kAdapterConfigName + ")");
  }
  if (!is_inside(canonical, canonical_directory_)) {
    throw InvalidArgumentError("cartridge '" + name + "' resolves outside the cartridges directory " +
                               directory_ + " (symlinks out of it are refused)");
  }
  // The files too: a symlinked adapter file must not point out of the directory either.
  for (const fs::directory_entry& entry : fs::directory_iterator(canonical, error)) {
    const std::string target = canonical_or_empty(entry.path());
    if (target.empty() || !is_inside(target, canonical_directory_)) {
      throw InvalidArgumentError("cartridge '" + name +
                                 "' has a file that resolves outside the cartridges directory (" +
                                 entry.path().filename().string() + "); symlinks out of it are refused");
    }
  }
  if (error) {
    throw FileNotFoundError(
        describe_file_problem(canonical, "cannot list the cartridge folder: " + error.message()));
  }
  return canonical;
}

std::string CartridgeRegistry::file_signature(const std::string& folder) const {
  std::vector<std::string> parts;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(folder, error)) {
    struct stat info {};
    if (::stat(entry.path().c_str(), &info) != 0 || !S_ISREG(info.st_mode)) continue;
    parts.push_back(entry.path().filename().string() + ":" + std::to_string(info.st_size) + ":" +
                    std::to_string(info.st_mtim.tv_sec) + "." + std::to_string(info.st_mtim.tv_nsec));
  }
  std::sort(parts.begin(), parts.end());
  std::string signature;
  for (const std::string& part : parts) signature += part + ";";
  return signature;
}

std::vector<std::string> CartridgeRegistry::list() const {
  std::vector<std::string> names;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(directory_, error)) {
    const std::string name = entry.path().filename().string();
    if (!is_valid_name(name)) continue;
    const std::string canonical = canonical_or_empty(entry.path());
    if (canonical.empty() || !is_inside(canonical, canonical_directory_)) continue;
    std::error_code file_error;
    if (fs::is_regular_file(fs::path(canonical) / kAdapterConfigName, file_error)) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

int64_t CartridgeRegistry::prefix_bytes(const KvPrefix& prefix) {
  int64_t bytes = 0;
  for (const at::Tensor& tensor : prefix.keys) bytes += static_cast<int64_t>(tensor.nbytes());
  for (const at::Tensor& tensor : prefix.values) bytes += static_cast<int64_t>(tensor.nbytes());
  return bytes;
}

void CartridgeRegistry::check_fits_budget(const std::string& what, int64_t bytes) const {
  if (memory_budget_bytes_ > 0 && bytes > memory_budget_bytes_) {
    throw InvalidArgumentError(what + " needs " + std::to_string(bytes) +
                               " bytes of KV, more than the server's whole cartridge memory budget of " +
                               std::to_string(memory_budget_bytes_) +
                               " bytes (use a smaller cartridge, or restart the server with a larger "
                               "--max-cartridge-memory)");
  }
}

std::shared_ptr<const KvPrefix> CartridgeRegistry::find_fresh(const std::string& key,
                                                              const std::string& signature) {
  auto found = entries_.find(key);
  if (found == entries_.end()) return nullptr;
  if (found->second.signature != signature) {  // the files changed on disk: forget the old one
    drop(found);
    return nullptr;
  }
  recency_.splice(recency_.begin(), recency_, found->second.recency);
  ++stats_.hits;
  return found->second.prefix;
}

void CartridgeRegistry::drop(std::map<std::string, Entry>::iterator found) {
  // use_count() > 1: a request (or an acquire in progress) holds it besides this cache.
  if (found->second.prefix.use_count() > 1) retired_.push_back({found->second.prefix, found->second.bytes});
  stats_.resident_bytes -= found->second.bytes;
  recency_.erase(found->second.recency);
  entries_.erase(found);
  stats_.entries = static_cast<int64_t>(entries_.size());
  update_held_bytes();
}

void CartridgeRegistry::update_held_bytes() {
  retired_.erase(std::remove_if(retired_.begin(), retired_.end(),
                                [](const Retired& retired) { return retired.prefix.expired(); }),
                 retired_.end());
  stats_.held_bytes = stats_.resident_bytes;
  for (const Retired& retired : retired_) stats_.held_bytes += retired.bytes;
}

void CartridgeRegistry::make_room(const std::string& what, int64_t bytes) {
  update_held_bytes();
  if (memory_budget_bytes_ == 0) return;
  // Least recently used first, skipping what requests hold (evicting it would free nothing while they
  // run, and their KV would be held twice if it were loaded again).
  auto candidate = recency_.end();
  while (stats_.held_bytes + bytes > memory_budget_bytes_ && candidate != recency_.begin()) {
    --candidate;
    auto found = entries_.find(*candidate);
    if (found->second.prefix.use_count() > 1) continue;
    auto next = std::next(candidate);
    drop(found);
    ++stats_.evictions;
    candidate = next;
  }
  if (stats_.held_bytes + bytes > memory_budget_bytes_) {
    ++stats_.refusals;
    throw CartridgeMemoryFullError(
        what + " needs " + std::to_string(bytes) + " bytes of KV and the cartridges in use hold " +
        std::to_string(stats_.held_bytes) + " of the " + std::to_string(memory_budget_bytes_) +
        "-byte budget (retry when requests have ended, or restart the server with a larger "
        "--max-cartridge-memory)");
  }
}

void CartridgeRegistry::insert(const std::string& key, const std::string& signature,
                               std::shared_ptr<const KvPrefix> prefix, int64_t bytes) {
  recency_.push_front(key);
  entries_[key] = Entry{std::move(prefix), signature, bytes, recency_.begin()};
  stats_.resident_bytes += bytes;
  stats_.entries = static_cast<int64_t>(entries_.size());
  update_held_bytes();
}

std::vector<std::shared_ptr<const KvPrefix>> CartridgeRegistry::acquire(
    const std::vector<std::string>& names) {
  if (names.empty()) throw InvalidArgumentError("no cartridge named: give at least one cartridge name");
  std::vector<std::string> folders, signatures;
  for (const std::string& name : names) {
    folders.push_back(resolve_folder(name));
    signatures.push_back(file_signature(folders.back()));
  }
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::shared_ptr<const KvPrefix>> parts;
  for (size_t i = 0; i < names.size(); ++i) {
    std::shared_ptr<const KvPrefix> part = find_fresh(names[i], signatures[i]);
    if (!part) {
      const std::string what = "cartridge '" + names[i] + "'";
      // The parts taken so far are held by `parts` (in use), so room is never made by evicting them.
      if (sizer_) {
        // Before the weights are read: a load that cannot fit never holds its bytes, even for a moment.
        const int64_t expected = sizer_(folders[i]);
        check_fits_budget(what, expected);
        make_room(what, expected);
      }
      auto loaded = std::make_shared<const KvPrefix>(loader_(folders[i]));
      const int64_t bytes = prefix_bytes(*loaded);
      check_fits_budget(what, bytes);  // the bytes themselves, whatever the config said
      make_room(what, bytes);
      ++stats_.loads;
      insert(names[i], signatures[i], loaded, bytes);
      part = std::move(loaded);
    }
    if (!parts.empty() && part->num_layers() != parts.front()->num_layers()) {
      throw MismatchError("cartridges '" + names.front() + "' and '" + names[i] +
                          "' have different layer counts; they cannot be composed");
    }
    parts.push_back(std::move(part));
  }
  return parts;
}

CartridgeRegistry::Stats CartridgeRegistry::stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  update_held_bytes();  // requests may have ended since
  return stats_;
}

}  // namespace cartridge
