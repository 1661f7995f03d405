// Incremental stop-string matching on streamed text: releases text as soon as it cannot be the start of a
// stop string, and reports the first stop string found (the text before it is released, the rest dropped).
#pragma once

#include <string>
#include <vector>

namespace cartridge {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stop_strings);

  // Adds newly decoded text; returns the text that is now safe to show.
  std::string push(const std::string& text);
  // At the end of generation: whatever is still held back (no stop string can complete any more).
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stop_strings_;
  std::string pending_;  // text not yet released
  bool stopped_ = false;
};

}  // namespace cartridge
