#include "util/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include <fmt/format.h>

namespace cartridge {

namespace {

std::string format_duration(double seconds) {
  if (!(seconds >= 0) || seconds > 360000) return "--:--";
  const int64_t whole = static_cast<int64_t>(seconds + 0.5);
  if (whole >= 3600) return fmt::format("{}:{:02d}:{:02d}", whole / 3600, (whole / 60) % 60, whole % 60);
  return fmt::format("{}:{:02d}", whole / 60, whole % 60);
}

}  // namespace

ProgressBar::ProgressBar(std::string label, int64_t total, std::string unit, bool enabled,
                         std::chrono::milliseconds log_interval)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(std::max<int64_t>(total, 0)),
      enabled_(enabled),
      is_terminal_(::isatty(STDERR_FILENO) != 0),
      log_interval_(log_interval),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {
  if (enabled_ && is_terminal_) draw(false);
}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::advance(int64_t amount, const std::string& extra) {
  if (!enabled_ || finished_) return;
  done_ += amount;
  if (!extra.empty()) extra_ = extra;
  const auto now = std::chrono::steady_clock::now();
  if (is_terminal_) {
    if (now - last_draw_ >= std::chrono::milliseconds(100) || done_ >= total_) draw(false);
  } else if (now - last_draw_ >= log_interval_ && done_ < total_) {
    draw(true);  // the final line comes from finish()
  }
}

void ProgressBar::skip(int64_t amount) {
  skipped_ += amount;
  advance(amount);
}

void ProgressBar::finish() {
  if (!enabled_ || finished_) return;
  finished_ = true;
  draw(true);
}

void ProgressBar::draw(bool final_line) {
  const auto now = std::chrono::steady_clock::now();
  last_draw_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done_ - skipped_) / elapsed : 0.0;
  const double remaining = rate > 0 ? static_cast<double>(total_ - done_) / rate : -1.0;
  constexpr int kWidth = 24;  // characters of the bar itself
  const int filled = total_ > 0 ? static_cast<int>(kWidth * std::min<int64_t>(done_, total_) / total_) : 0;
  std::string line = fmt::format("{} [{}{}] {}/{} {} {:.1f} {}/s {} {}", label_, std::string(filled, '#'),
                                 std::string(kWidth - filled, '.'), done_, total_, unit_, rate, unit_,
                                 finished_ ? "in" : "ETA", format_duration(finished_ ? elapsed : remaining));
  if (!extra_.empty()) line += " | " + extra_;
  if (is_terminal_) {
    std::fprintf(stderr, "\r\033[K%s%s", line.c_str(), final_line && finished_ ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

}  // namespace cartridge
