// The framing file beside an adapter (docs/framing.md): names, the file's round trip, what a damaged or
// newer file gets, cartridges without one, and composed cartridges that disagree.
#include "cartridge/framing.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "cartridge_test_util.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace cartridge {
namespace {

using testing::TemporaryFolder;

TEST(Framing, NamesRoundTripAndUnknownNamesAreRefused) {
  for (Framing framing : {Framing::kSystemTurn, Framing::kNewChat}) {
    EXPECT_EQ(parse_framing(framing_name(framing)), framing);
  }
  EXPECT_EQ(parse_framing("system-turn"), Framing::kSystemTurn);
  EXPECT_EQ(parse_framing("new-chat"), Framing::kNewChat);
  EXPECT_THROW(parse_framing("systemturn"), InvalidArgumentError);
}

TEST(Framing, TheFileRoundTripsAndAFolderWithoutOneIsNewChat) {
  TemporaryFolder folder;
  EXPECT_EQ(read_framing(folder.path()), Framing::kNewChat);
  write_file_atomic(folder / kFramingFileName, framing_file_text(Framing::kSystemTurn));
  EXPECT_EQ(read_framing(folder.path()), Framing::kSystemTurn);
  EXPECT_EQ(
      framing_file_text(Framing::kSystemTurn),
      "{\n  \"format\": \"cartridge-framing\",\n  \"version\": 1,\n  \"framing\": \"system_turn\"\n}\n");
}

TEST(Framing, DamagedOrNewerFilesAreRefusedNamingTheFile) {
  TemporaryFolder folder;
  const std::string path = folder / kFramingFileName;
  for (const std::string& text :
       {std::string("{not json"), std::string("[]"),
        std::string(R"({"format": "cartridge-framing", "version": 1})"),
        std::string(R"({"format": "other", "version": 1, "framing": "new_chat"})"),
        std::string(R"({"format": "cartridge-framing", "version": 1, "framing": "x"})")}) {
    write_file_atomic(path, text);
    try {
      read_framing(folder.path());
      ADD_FAILURE() << "accepted " << text;
    } catch (const FormatError& error) {
      EXPECT_NE(std::string(error.what()).find(kFramingFileName), std::string::npos) << error.what();
    }
  }
  write_file_atomic(path, R"({"format": "cartridge-framing", "version": 2, "framing": "new_chat"})");
  EXPECT_THROW(read_framing(folder.path()), UnsupportedError);
}

TEST(Framing, ComposedCartridgesMustAgree) {
  EXPECT_EQ(common_framing({Framing::kSystemTurn, Framing::kSystemTurn}, {"a", "b"}), Framing::kSystemTurn);
  try {
    common_framing({Framing::kSystemTurn, Framing::kNewChat}, {"a", "b"});
    ADD_FAILURE() << "mixed framings accepted";
  } catch (const MismatchError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("a: system_turn"), std::string::npos) << message;
    EXPECT_NE(message.find("b: new_chat"), std::string::npos) << message;
    EXPECT_NE(message.find("--framing"), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace cartridge
