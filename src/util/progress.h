// A terminal progress bar for long work (prefill, synthesis, training): `label [####....] 12/40 tokens
// 35.2 tok/s ETA 0:12 | extra`. Redraws in place on a terminal (at most 10 times a second). When stderr is
// not a terminal (a log file, a pipe) it prints a line at most every `log_interval` and a final one, so a
// log of a long job holds a few lines per stage however often the bar advances.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace cartridge {

class ProgressBar {
 public:
  // `total` units of work named `unit` ("tokens", "steps", ...); `enabled=false` makes every call a no-op.
  ProgressBar(std::string label, int64_t total, std::string unit, bool enabled = true,
              std::chrono::milliseconds log_interval = std::chrono::seconds(30));
  ~ProgressBar();

  // Advances by `amount` units; `extra` is shown after the rate (e.g. "loss 1.234").
  void advance(int64_t amount = 1, const std::string& extra = "");
  // Marks `amount` units as done before this bar started (a resumed run): they count towards done/total
  // but not towards the rate, so the ETA is not fooled by them.
  void skip(int64_t amount);
  // Ends the bar with a final line (idempotent; also called by the destructor).
  void finish();

  int64_t done() const { return done_; }

 private:
  void draw(bool final_line);

  std::string label_;
  std::string unit_;
  std::string extra_;
  int64_t total_;
  int64_t done_ = 0;
  int64_t skipped_ = 0;  // of done_, units done before the bar started
  bool enabled_;
  bool finished_ = false;
  bool is_terminal_;
  std::chrono::milliseconds log_interval_;  // between lines when not on a terminal
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace cartridge
