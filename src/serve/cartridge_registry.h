// The server's cartridges: folders under one directory, looked up by folder name, loaded on first use
// into the model's dtype and device, shared by every request that names them, and evicted least recently
// used when the loaded ones exceed a memory budget. The budget bounds all cartridge KV the process holds:
// a cartridge in use (a request holds it) is never evicted, one replaced on disk while in use still counts
// until its last request ends, and a load that cannot fit beside the cartridges in use is refused
// (CartridgeMemoryFullError) rather than allowed to grow the process. The directory is scanned on every
// lookup, so a cartridge copied into it later is found without a restart, and a cartridge whose files change
// is reloaded.
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
#include "util/error.h"

namespace cartridge {

// Loads the cartridge (PEFT adapter) in `folder` for the served model and returns its KV prefix in the
// model's dtype and device. Throws the typed errors of util/error.h (FormatError for a damaged adapter,
// MismatchError for an adapter made for another model).
using CartridgeLoader = std::function<KvPrefix(const std::string& folder)>;
// The bytes of KV the loader would return for the cartridge in `folder`, from its adapter_config.json
// alone (no weights read), so that a load that cannot fit is refused before it holds any memory. Throws
// as the loader does for a config it cannot read.
using CartridgeSizer = std::function<int64_t(const std::string& folder)>;

// The cartridges in use fill the memory budget: nothing can be evicted for another one now (retry when
// requests have ended).
class CartridgeMemoryFullError : public Error {
 public:
  using Error::Error;
};

class CartridgeRegistry {
 public:
  // `memory_budget_bytes`: most bytes of loaded prefixes kept in the cache (0 = no limit). With a `sizer`,
  // the room for a cartridge is made (or refused) before its weights are read; without one, after.
  CartridgeRegistry(std::string directory, int64_t memory_budget_bytes, CartridgeLoader loader,
                    CartridgeSizer sizer = nullptr);

  // True when `name` is acceptable as a cartridge name (one safe path component).
  static bool is_valid_name(const std::string& name);

  // The cartridge names (folder names holding an adapter_config.json) in the directory now, sorted.
  std::vector<std::string> list() const;

  // The prefixes of the cartridges `names` (at least one), in this order; several are a composition, read
  // as their slots one after another with no re-rotation (docs/cartridge_format.md, "Composing
  // cartridges") and never copied into one. Loads what is not cached. Throws InvalidArgumentError for a bad
  // name or a prefix larger than the whole memory budget, FileNotFoundError for a name with no cartridge
  // folder, MismatchError when the cartridges have different layer counts, CartridgeMemoryFullError when a
  // load does not fit beside the cartridges in use, and whatever the loader throws.
  std::vector<std::shared_ptr<const KvPrefix>> acquire(const std::vector<std::string>& names);

  // The framing chat prompts follow the cartridges `names` with (their cartridge_framing.json files; a
  // cartridge without one: new_chat). Throws as acquire() for bad names, MismatchError when they disagree.
  Framing framing(const std::vector<std::string>& names) const;

  struct Stats {
    int64_t resident_bytes = 0;  // bytes of the prefixes held by the cache
    // resident_bytes + prefixes no longer cached (replaced on disk) that requests still hold: all cartridge
    // KV in memory, never above the budget.
    int64_t held_bytes = 0;
    int64_t refusals = 0;   // loads refused because the cartridges in use filled the budget
    int64_t entries = 0;    // cached prefixes
    int64_t loads = 0;      // prefixes loaded from disk
    int64_t hits = 0;       // lookups answered from the cache
    int64_t evictions = 0;  // prefixes dropped for the budget
  };
  Stats stats();

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
  // Makes room for `bytes` more within the budget by evicting least recently used entries that no request
  // holds; throws CartridgeMemoryFullError (evicting nothing more) when that is not enough. Caller holds
  // mutex_.
  void make_room(const std::string& what, int64_t bytes);
  // Caches `prefix` under `key` (room made first). Caller holds mutex_.
  void insert(const std::string& key, const std::string& signature, std::shared_ptr<const KvPrefix> prefix,
              int64_t bytes);
  // Drops the entry `found`; a prefix some request still holds moves to retired_. Caller holds mutex_.
  void drop(std::map<std::string, Entry>::iterator found);
  // Forgets retired prefixes that no request holds any more and recomputes stats_.held_bytes. Caller holds
  // mutex_.
  void update_held_bytes();
  void check_fits_budget(const std::string& what, int64_t bytes) const;

  std::string directory_;            // as given
  std::string canonical_directory_;  // after symlinks, for containment checks
  int64_t memory_budget_bytes_;
  CartridgeLoader loader_;
  CartridgeSizer sizer_;  // may be empty

  mutable std::mutex mutex_;  // guards everything below; loads run under it (one at a time)
  std::map<std::string, Entry> entries_;
  std::list<std::string> recency_;  // keys, most recently used first
  struct Retired {
    std::weak_ptr<const KvPrefix> prefix;  // expires when the last request holding it ends
    int64_t bytes = 0;
  };
  std::vector<Retired> retired_;  // replaced on disk while in use
  Stats stats_;
};

}  // namespace cartridge
