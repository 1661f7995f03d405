#include "generate/stop_matcher.h"

#include <algorithm>

namespace cartridge {

StopMatcher::StopMatcher(std::vector<std::string> stop_strings) : stop_strings_(std::move(stop_strings)) {
  stop_strings_.erase(std::remove(stop_strings_.begin(), stop_strings_.end(), std::string()),
                      stop_strings_.end());
}

std::string StopMatcher::push(const std::string& text) {
  if (stopped_) return "";
  pending_ += text;
  // The earliest complete stop string ends generation.
  size_t first_stop = std::string::npos;
  for (const std::string& stop : stop_strings_) first_stop = std::min(first_stop, pending_.find(stop));
  if (first_stop != std::string::npos) {
    stopped_ = true;
    std::string released = pending_.substr(0, first_stop);
    pending_.clear();
    return released;
  }
  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string& stop : stop_strings_) {
    for (size_t length = std::min(stop.size() - 1, pending_.size()); length > hold; --length) {
      if (pending_.compare(pending_.size() - length, length, stop, 0, length) == 0) {
        hold = length;
        break;
      }
    }
  }
  std::string released = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return released;
}

std::string StopMatcher::flush() {
  std::string released;
  released.swap(pending_);
  return stopped_ ? "" : released;
}

}  // namespace cartridge
