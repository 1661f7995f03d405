// The server's cartridge registry: name safety (no traversal, no symlinks out), listing, loading once and
// sharing, LRU eviction under the memory budget, reload on change, composition. A fake loader stands in
// for the adapter reader so each behaviour is checked on its own.
#include "serve/cartridge_registry.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "util/error.h"

namespace cartridge {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kLayers = 2;
constexpr int64_t kHeads = 2;
constexpr int64_t kHeadDim = 4;

// A fresh folder per test, removed afterwards.
class TemporaryFolder {
 public:
  TemporaryFolder() {
    std::random_device random;
    path_ = fs::temp_directory_path() /
            ("serve_registry_test_" + std::to_string(::getpid()) + "_" + std::to_string(random()));
    fs::create_directories(path_);
  }
  ~TemporaryFolder() {
    std::error_code error;
    fs::remove_all(path_, error);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// A cartridge folder whose "weights" file holds the number of slots the fake loader gives it.
void make_cartridge(const fs::path& folder, int64_t slots) {
  fs::create_directories(folder);
  write_file(folder / "adapter_config.json", "{}");
  write_file(folder / "slots.txt", std::to_string(slots));
}

int64_t bytes_of(int64_t slots) { return 2 * kLayers * kHeads * slots * kHeadDim * 4; }  // float32 K and V

// Loads [H, slots, D] tensors whose values encode the folder, and counts loads per folder.
struct FakeLoader {
  std::shared_ptr<std::map<std::string, int>> loads = std::make_shared<std::map<std::string, int>>();

  CartridgeLoader loader() const {
    auto counts = loads;
    return [counts](const std::string& folder) {
      ++(*counts)[fs::path(folder).filename().string()];
      std::ifstream in(fs::path(folder) / "slots.txt");
      int64_t slots = 0;
      in >> slots;
      KvPrefix prefix;
      const float tag =
          static_cast<float>(std::hash<std::string>()(fs::path(folder).filename().string()) % 1000);
      for (int64_t layer = 0; layer < kLayers; ++layer) {
        prefix.keys.push_back(at::full({kHeads, slots, kHeadDim}, tag + static_cast<float>(layer)));
        prefix.values.push_back(at::full({kHeads, slots, kHeadDim}, -tag - static_cast<float>(layer)));
      }
      return prefix;
    };
  }
  int count(const std::string& name) const {
    auto found = loads->find(name);
    return found == loads->end() ? 0 : found->second;
  }
  // The bytes its loader will return, from the folder's files without loading (as a real sizer reads the
  // adapter's config).
  static CartridgeSizer sizer() {
    return [](const std::string& folder) {
      std::ifstream in(fs::path(folder) / "slots.txt");
      int64_t slots = 0;
      in >> slots;
      return bytes_of(slots);
    };
  }
};

TEST(CartridgeRegistryTest, AcceptsOnlySafeNames) {
  for (const std::string name : {"doc", "doc-1.v2", "A_b", "x"}) {
    EXPECT_TRUE(CartridgeRegistry::is_valid_name(name)) << name;
  }
  for (const std::string name :
       {"", ".", "..", ".hidden", "../x", "a/b", "a\\b", "/etc", "a b", "a\nb", "é"}) {
    EXPECT_FALSE(CartridgeRegistry::is_valid_name(name)) << name;
  }
  EXPECT_FALSE(CartridgeRegistry::is_valid_name(std::string(200, 'a')));
}

TEST(CartridgeRegistryTest, MissingDirectoryIsAnError) {
  FakeLoader fake;
  EXPECT_THROW(CartridgeRegistry("/nonexistent/cartridges/dir", 0, fake.loader()), FileNotFoundError);
}

TEST(CartridgeRegistryTest, ListsCartridgeFoldersAndFindsNewOnesWithoutRestart) {
  TemporaryFolder root;
  const fs::path directory = root.path() / "cartridges";
  make_cartridge(directory / "beta", 3);
  make_cartridge(directory / "alpha", 2);
  fs::create_directories(directory / "not-a-cartridge");  // no adapter_config.json
  make_cartridge(directory / ".hidden", 2);
  write_file(directory / "file.txt", "x");
  FakeLoader fake;
  CartridgeRegistry registry(directory.string(), 0, fake.loader());
  EXPECT_EQ(registry.list(), (std::vector<std::string>{"alpha", "beta"}));
  EXPECT_THROW(registry.acquire({"gamma"}), FileNotFoundError);

  make_cartridge(directory / "gamma", 4);
  EXPECT_EQ(registry.list(), (std::vector<std::string>{"alpha", "beta", "gamma"}));
  EXPECT_EQ(registry.acquire({"gamma"}).front()->length(), 4);
}

TEST(CartridgeRegistryTest, RefusesTraversalAndSymlinksOut) {
  TemporaryFolder root;
  const fs::path directory = root.path() / "cartridges";
  make_cartridge(directory / "inside", 2);
  make_cartridge(root.path() / "outside", 2);  // a real cartridge, but not under the directory
  fs::create_directory_symlink(root.path() / "outside", directory / "escape");
  fs::create_directory_symlink(directory / "inside", directory / "alias");  // stays inside: allowed
  make_cartridge(directory / "leaky", 2);
  write_file(root.path() / "secret.safetensors", "secret");
  fs::create_symlink(root.path() / "secret.safetensors", directory / "leaky" / "adapter_model.safetensors");
  FakeLoader fake;
  CartridgeRegistry registry(directory.string(), 0, fake.loader());

  EXPECT_THROW(registry.acquire({"../outside"}), InvalidArgumentError);
  EXPECT_THROW(registry.acquire({".."}), InvalidArgumentError);
  EXPECT_THROW(registry.acquire({"inside/../../outside"}), InvalidArgumentError);
  EXPECT_THROW(registry.acquire({"escape"}), InvalidArgumentError);
  EXPECT_THROW(registry.acquire({"leaky"}), InvalidArgumentError);
  EXPECT_EQ(fake.count("outside"), 0);
  EXPECT_EQ(fake.count("leaky"), 0);
  EXPECT_EQ(registry.acquire({"alias"}).front()->length(), 2);
  const std::vector<std::string> listed = registry.list();
  EXPECT_EQ(std::count(listed.begin(), listed.end(), "escape"), 0);
  EXPECT_EQ(std::count(listed.begin(), listed.end(), "alias"), 1);
}

TEST(CartridgeRegistryTest, LoadsOnceAndShares) {
  TemporaryFolder root;
  make_cartridge(root.path() / "a", 3);
  FakeLoader fake;
  CartridgeRegistry registry(root.path().string(), 0, fake.loader());
  const auto first = registry.acquire({"a"}).front();
  const auto second = registry.acquire({"a"}).front();
  EXPECT_EQ(first.get(), second.get());
  EXPECT_EQ(fake.count("a"), 1);
  EXPECT_EQ(registry.stats().hits, 1);
  EXPECT_EQ(registry.stats().resident_bytes, bytes_of(3));
  EXPECT_EQ(CartridgeRegistry::prefix_bytes(*first), bytes_of(3));
}

TEST(CartridgeRegistryTest, EvictsLeastRecentlyUsedBeyondTheBudget) {
  TemporaryFolder root;
  for (const char* name : {"a", "b", "c"}) make_cartridge(root.path() / name, 4);
  FakeLoader fake;
  CartridgeRegistry registry(root.path().string(), 2 * bytes_of(4), fake.loader());  // room for two
  registry.acquire({"a"});
  registry.acquire({"b"});
  registry.acquire({"a"});  // a is now the most recent
  registry.acquire({"c"});  // evicts b
  EXPECT_EQ(registry.stats().evictions, 1);
  EXPECT_EQ(registry.stats().resident_bytes, 2 * bytes_of(4));
  registry.acquire({"a"});
  EXPECT_EQ(fake.count("a"), 1);  // still cached
  registry.acquire({"b"});
  EXPECT_EQ(fake.count("b"), 2);  // was evicted, loaded again
  EXPECT_LE(registry.stats().resident_bytes, 2 * bytes_of(4));
}

TEST(CartridgeRegistryTest, NeverEvictsACartridgeInUseAndRefusesWhatCannotFitBesideThem) {
  TemporaryFolder root;
  for (const char* name : {"a", "b", "c"}) make_cartridge(root.path() / name, 4);
  FakeLoader fake;
  CartridgeRegistry registry(root.path().string(), 2 * bytes_of(4), fake.loader());  // room for two
  auto a = registry.acquire({"a"});  // held, as a running request holds it
  auto b = registry.acquire({"b"});
  EXPECT_THROW(registry.acquire({"c"}), CartridgeMemoryFullError);
  EXPECT_EQ(registry.stats().refusals, 1);
  EXPECT_EQ(registry.stats().evictions, 0);
  EXPECT_EQ(registry.stats().held_bytes, 2 * bytes_of(4));
  b.clear();  // that request ended: b may go
  registry.acquire({"c"});
  EXPECT_EQ(registry.stats().evictions, 1);
  EXPECT_EQ(fake.count("a"), 1);  // the one in use stayed
  EXPECT_LE(registry.stats().held_bytes, 2 * bytes_of(4));
  // A composition never evicts its own earlier parts to make room for a later one.
  a.clear();
  EXPECT_THROW(registry.acquire({"a", "b", "c"}), CartridgeMemoryFullError);
}

TEST(CartridgeRegistryTest, WithASizerALoadThatCannotFitIsRefusedBeforeItsWeightsAreRead) {
  TemporaryFolder root;
  for (const char* name : {"a", "b", "c"}) make_cartridge(root.path() / name, 4);
  make_cartridge(root.path() / "big", 10);
  FakeLoader fake;
  CartridgeRegistry registry(root.path().string(), 2 * bytes_of(4), fake.loader(), FakeLoader::sizer());
  auto a = registry.acquire({"a"});
  auto b = registry.acquire({"b"});
  EXPECT_THROW(registry.acquire({"c"}), CartridgeMemoryFullError);
  EXPECT_THROW(registry.acquire({"big"}), InvalidArgumentError);  // larger than the whole budget
  EXPECT_EQ(fake.count("c"), 0);                                  // never loaded
  EXPECT_EQ(fake.count("big"), 0);
  EXPECT_EQ(registry.stats().held_bytes, 2 * bytes_of(4));
  b.clear();
  EXPECT_EQ(registry.acquire({"c"}).front()->length(), 4);
  EXPECT_EQ(fake.count("c"), 1);
  EXPECT_EQ(registry.stats().held_bytes, 2 * bytes_of(4));
}

TEST(CartridgeRegistryTest, ACartridgeReplacedOnDiskWhileInUseCountsUntilReleased) {
  TemporaryFolder root;
  make_cartridge(root.path() / "a", 2);
  FakeLoader fake;
  CartridgeRegistry registry(root.path().string(), 0, fake.loader());
  auto old = registry.acquire({"a"});
  write_file(root.path() / "a" / "slots.txt", "3");  // replaced while a request holds the old one
  auto fresh = registry.acquire({"a"});
  EXPECT_EQ(fresh.front()->length(), 3);
  EXPECT_EQ(registry.stats().resident_bytes, bytes_of(3));
  EXPECT_EQ(registry.stats().held_bytes, bytes_of(2) + bytes_of(3));
  old.clear();
  EXPECT_EQ(registry.stats().held_bytes, bytes_of(3));
}

TEST(CartridgeRegistryTest, RefusesAPrefixLargerThanTheWholeBudget) {
  TemporaryFolder root;
  make_cartridge(root.path() / "big", 10);
  FakeLoader fake;
  CartridgeRegistry registry(root.path().string(), bytes_of(10) - 1, fake.loader());
  EXPECT_THROW(registry.acquire({"big"}), InvalidArgumentError);
  EXPECT_EQ(registry.stats().resident_bytes, 0);
}

TEST(CartridgeRegistryTest, ReloadsWhenTheFilesChange) {
  TemporaryFolder root;
  make_cartridge(root.path() / "a", 2);
  FakeLoader fake;
  CartridgeRegistry registry(root.path().string(), 0, fake.loader());
  EXPECT_EQ(registry.acquire({"a"}).front()->length(), 2);
  write_file(root.path() / "a" / "slots.txt", "17");  // another size: the signature changes
  EXPECT_EQ(registry.acquire({"a"}).front()->length(), 17);
  EXPECT_EQ(fake.count("a"), 2);
  EXPECT_EQ(registry.stats().resident_bytes, bytes_of(17));
}

TEST(CartridgeRegistryTest, ComposesInOrderWithoutCopyingOrReloadingParts) {
  TemporaryFolder root;
  make_cartridge(root.path() / "a", 2);
  make_cartridge(root.path() / "b", 3);
  FakeLoader fake;
  CartridgeRegistry registry(root.path().string(), 0, fake.loader());
  const auto a = registry.acquire({"a"});
  const auto b = registry.acquire({"b"});
  ASSERT_EQ(a.size(), 1u);
  // A composition is its parts in order, the very objects single requests get: nothing is copied.
  EXPECT_EQ(registry.acquire({"a", "b"}), (std::vector<std::shared_ptr<const KvPrefix>>{a[0], b[0]}));
  EXPECT_EQ(registry.acquire({"b", "a"}), (std::vector<std::shared_ptr<const KvPrefix>>{b[0], a[0]}));
  EXPECT_EQ(registry.acquire({"b", "b"}), (std::vector<std::shared_ptr<const KvPrefix>>{b[0], b[0]}));
  EXPECT_EQ(fake.count("a"), 1);
  EXPECT_EQ(fake.count("b"), 1);
  EXPECT_EQ(registry.stats().entries, 2);
  EXPECT_EQ(registry.stats().resident_bytes, bytes_of(2) + bytes_of(3));
  EXPECT_THROW(registry.acquire({"a", "missing"}), FileNotFoundError);
  EXPECT_THROW(registry.acquire({}), InvalidArgumentError);
}

}  // namespace
}  // namespace cartridge
