#include "util/atomic_file.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <gtest/gtest.h>

#include "util/error.h"
#include "util/mapped_file.h"

namespace cartridge {
namespace {
namespace fs = std::filesystem;

class AtomicFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    folder_ = fs::temp_directory_path() / ("atomic_file_test_" + std::to_string(::getpid()) + "_" +
                                           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(folder_);
    fs::create_directories(folder_);
  }
  void TearDown() override { fs::remove_all(folder_); }

  // Everything in the folder, to prove no temporary file is left behind.
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(folder_)) names.push_back(entry.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

  fs::path folder_;
};

TEST_F(AtomicFileTest, WritesAndReplacesFile) {
  const std::string path = folder_ / "out.txt";
  write_file_atomic(path, "first");
  EXPECT_EQ(read_text_file(path), "first");
  write_file_atomic(path, std::string("second\0bytes", 12));
  EXPECT_EQ(read_text_file(path), std::string("second\0bytes", 12));
  EXPECT_EQ(entries(), std::vector<std::string>{"out.txt"});
}

TEST_F(AtomicFileTest, MissingFolderIsAUserError) {
  EXPECT_THROW(write_file_atomic((folder_ / "no" / "such" / "file").string(), "x"), FileNotFoundError);
  EXPECT_TRUE(entries().empty());
}

TEST_F(AtomicFileTest, DirectoryIsCreatedWhole) {
  const std::string path = folder_ / "adapter";
  write_directory_atomic(path, false, [](const std::string& temporary) {
    write_file_atomic(temporary + "/a.json", "{}");
    write_file_atomic(temporary + "/b.bin", "data");
  });
  EXPECT_EQ(read_text_file(path + "/a.json"), "{}");
  EXPECT_EQ(read_text_file(path + "/b.bin"), "data");
  EXPECT_EQ(entries(), std::vector<std::string>{"adapter"});
}

TEST_F(AtomicFileTest, FailureLeavesNothingAndKeepsTheOldFolder) {
  const std::string path = folder_ / "adapter";
  write_directory_atomic(path, false,
                         [](const std::string& temporary) { write_file_atomic(temporary + "/a", "old"); });
  EXPECT_THROW(write_directory_atomic(path, true,
                                      [](const std::string& temporary) {
                                        write_file_atomic(temporary + "/a", "new");
                                        throw InvalidArgumentError("failed half way");
                                      }),
               InvalidArgumentError);
  EXPECT_EQ(read_text_file(path + "/a"), "old");
  EXPECT_EQ(entries(), std::vector<std::string>{"adapter"});
}

TEST_F(AtomicFileTest, ExistingFolderIsNotOverwrittenUnlessAsked) {
  const std::string path = folder_ / "adapter";
  write_directory_atomic(path, false,
                         [](const std::string& temporary) { write_file_atomic(temporary + "/a", "1"); });
  EXPECT_THROW(write_directory_atomic(path, false, [](const std::string&) {}), InvalidArgumentError);
  write_directory_atomic(path, true,
                         [](const std::string& temporary) { write_file_atomic(temporary + "/a", "2"); });
  EXPECT_EQ(read_text_file(path + "/a"), "2");
  EXPECT_EQ(entries(), std::vector<std::string>{"adapter"});
}

TEST(MappedFileTest, MapsBytesAndRejectsFolders) {
  const fs::path path = fs::temp_directory_path() / ("mapped_file_test_" + std::to_string(::getpid()));
  write_file_atomic(path.string(), "hello");
  {
    MappedFile file(path.string());
    ASSERT_EQ(file.size(), 5u);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(file.data()), file.size()), "hello");
    MappedFile moved(std::move(file));
    EXPECT_EQ(moved.size(), 5u);
  }
  fs::remove(path);
  EXPECT_THROW(MappedFile(path.string()), FileNotFoundError);
  EXPECT_THROW(MappedFile(fs::temp_directory_path().string()), FormatError);
  try {
    MappedFile missing("/no/such/model.gguf");
  } catch (const FileNotFoundError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("/no/such/model.gguf"), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << "error messages are one line";
  }
}

}  // namespace
}  // namespace cartridge
