// The progress bar away from a terminal (the tests' stderr is a pipe or a file): a line per interval and a
// final line, not a line per update.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <string>

#include "util/progress.h"

namespace cartridge {
namespace {

int64_t line_count(const std::string& text) { return std::count(text.begin(), text.end(), '\n'); }

TEST(ProgressBarTest, OffATerminalALongIntervalLeavesOnlyTheFinalLine) {
  ::testing::internal::CaptureStderr();
  {
    ProgressBar bar("work", 1000, "items", /*enabled=*/true, std::chrono::hours(1));
    for (int i = 0; i < 1000; ++i) bar.advance(1, "extra text");
  }
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(line_count(log), 1) << log;
  EXPECT_NE(log.find("work [########################] 1000/1000 items"), std::string::npos) << log;
  EXPECT_NE(log.find("| extra text"), std::string::npos) << log;
}

TEST(ProgressBarTest, OffATerminalAZeroIntervalPrintsEveryUpdateBeforeTheEnd) {
  ::testing::internal::CaptureStderr();
  {
    ProgressBar bar("work", 10, "items", /*enabled=*/true, std::chrono::milliseconds(0));
    for (int i = 0; i < 10; ++i) bar.advance();
    bar.finish();
    bar.finish();  // idempotent
  }
  // Updates 1..9 (the 10th completes the bar and is the final line).
  EXPECT_EQ(line_count(::testing::internal::GetCapturedStderr()), 10);
}

TEST(ProgressBarTest, DisabledPrintsNothing) {
  ::testing::internal::CaptureStderr();
  {
    ProgressBar bar("work", 10, "items", /*enabled=*/false);
    bar.advance(10);
  }
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
}

}  // namespace
}  // namespace cartridge
