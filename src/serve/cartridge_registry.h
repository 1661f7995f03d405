// The server's cartridges: folders under one directory, looked up by folder name, loaded on first use
// into the model's dtype and device, shared by every request that names them, and evicted least recently
// used when the loaded ones exceed a memory budget. The directory is scanned on every lookup, so a
// cartridge copied into it later is found without a restart, and a cartridge whose files change is
// reloaded.
//
// Names are resolved only inside the directory: a name is one path component of [A-Za-z0-9._-] that does
// not start with '.', and the folder and its files must resolve (after symlinks) to a place inside the
// directory.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cartridge/framing.h"
#include "model/kv_prefix.h"

namespace cartridge {

// Loads the cartridge (PEFT adapter) in `folder` for the served model and returns its KV prefix in the
// model's dtype and device. Throws the typed errors of util/error.h (FormatError for a damaged adapter,
// MismatchError for an adapter made for another model).
using CartridgeLoader = std::function<KvPrefix(const std::string& folder)>;

class CartridgeRegistry {
 public:
  // `memory_budget_bytes`: most bytes of loaded prefixes kept in the cache (0 = no limit).
  CartridgeRegistry(std::string directory, int64_t memory_budget_bytes, CartridgeLoader loader);

  // True when `name` is acceptable as a cartridge name (one safe path component).
  static bool is_valid_name(const std::string& name);

  // The cartridge names (folder names holding an adapter_config.json) in the directory now, sorted.
  std::vector<std::string> list() const;

  // The prefix of the cartridges `names` (at least one) composed in this order: their slots concatenated,
  // no re-rotation (docs/cartridge_format.md, "Composing cartridges"). Loads what is not cached. Throws
  // InvalidArgumentError for a bad name or a prefix larger than the whole memory budget, FileNotFoundError
  // for a name with no cartridge folder, and whatever the loader throws.
  std::shared_ptr<const KvPrefix> acquire(const std::vector<std::string>& names);

  // The framing chat prompts follow the cartridges `names` with (their cartridge_framing.json files; a
  // cartridge without one: new_chat). Throws as acquire() for bad names, MismatchError when they disagree.
  Framing framing(const std::vector<std::string>& names) const;

  struct Stats {
    int64_t resident_bytes = 0;  // bytes of the prefixes held by the cache
    int64_t entries = 0;         // cached prefixes (single cartridges and compositions)
    int64_t loads = 0;           // prefixes built (loaded from disk or composed)
    int64_t hits = 0;            // lookups answered from the cache
    int64_t evictions = 0;       // prefixes dropped for the budget
  };
  Stats stats() const;

  const std::string& directory() const { return directory_; }

  // Bytes of the key and value tensors of `prefix`.
  static int64_t prefix_bytes(const KvPrefix& prefix);

 private:
  struct Entry {
    std::shared_ptr<const KvPrefix> prefix;
    std::string signature;  // sizes and modification times of the files it was built from
    int64_t bytes = 0;
    std::list<std::string>::iterator recency;  // position in recency_ (front = most recent)
  };

  // The folder of cartridge `name` after checking the name and that it stays inside the directory.
  std::string resolve_folder(const std::string& name) const;
  // Describes the files of the cartridge in `folder` (changes when they are replaced).
  std::string file_signature(const std::string& folder) const;
  // Looks up `key`; returns null when absent or stale. Caller holds mutex_.
  std::shared_ptr<const KvPrefix> find_fresh(const std::string& key, const std::string& signature);
  // Caches `prefix` under `key` and evicts least recently used entries beyond the budget. Caller holds
  // mutex_.
  void insert(const std::string& key, const std::string& signature, std::shared_ptr<const KvPrefix> prefix,
              int64_t bytes);
  void check_fits_budget(const std::string& what, int64_t bytes) const;

  std::string directory_;            // as given
  std::string canonical_directory_;  // after symlinks, for containment checks
  int64_t memory_budget_bytes_;
  CartridgeLoader loader_;

  mutable std::mutex mutex_;  // guards everything below; loads run under it (one at a time)
  std::map<std::string, Entry> entries_;
  std::list<std::string> recency_;  // keys, most recently used first
  Stats stats_;
};

}  // namespace cartridge
