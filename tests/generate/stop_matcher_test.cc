#include "generate/stop_matcher.h"

#include <gtest/gtest.h>

namespace cartridge {
namespace {

// Feeds pieces one by one and returns everything released (push + flush).
std::string run(StopMatcher& matcher, const std::vector<std::string>& pieces) {
  std::string released;
  for (const std::string& piece : pieces) released += matcher.push(piece);
  return released + matcher.flush();
}

TEST(StopMatcherTest, WithoutStopStringsEverythingPassesThrough) {
  StopMatcher matcher({});
  EXPECT_EQ(matcher.push("Hello"), "Hello");
  EXPECT_EQ(matcher.push(" world"), " world");
  EXPECT_FALSE(matcher.stopped());
}

TEST(StopMatcherTest, CutsBeforeAStopStringSplitAcrossPieces) {
  StopMatcher matcher({"\nUser:"});
  EXPECT_EQ(matcher.push("Paris is the capital.\nUs"), "Paris is the capital.");
  EXPECT_FALSE(matcher.stopped());
  EXPECT_EQ(matcher.push("er: and"), "");
  EXPECT_TRUE(matcher.stopped());
  EXPECT_EQ(matcher.push("more"), "");
  EXPECT_EQ(matcher.flush(), "");
}

TEST(StopMatcherTest, ReleasesHeldTextWhenItTurnsOutNotToBeAStop) {
  StopMatcher matcher({"###"});
  EXPECT_EQ(matcher.push("a #"), "a ");
  EXPECT_EQ(matcher.push("#b"), "##b");
  EXPECT_EQ(matcher.push("##"), "");
  EXPECT_EQ(matcher.flush(), "##");
}

TEST(StopMatcherTest, EarliestOfSeveralStopsWins) {
  StopMatcher matcher({"END", "STOP"});
  EXPECT_EQ(run(matcher, {"one STOP two END"}), "one ");
  EXPECT_TRUE(matcher.stopped());
}

TEST(StopMatcherTest, EmptyStopStringsAreIgnored) {
  StopMatcher matcher({""});
  EXPECT_EQ(run(matcher, {"abc"}), "abc");
  EXPECT_FALSE(matcher.stopped());
}

}  // namespace
}  // namespace cartridge
