#include "inferbox/engine/sampling/stop.h"

#include <algorithm>

namespace inferbox::engine {

FinishReason CheckTokenStop(const StopCriteria& criteria, int32_t token, int64_t num_generated) {
  const auto contains = [token](const std::vector<int32_t>& ids) {
    return std::find(ids.begin(), ids.end(), token) != ids.end();
  };
  if (!criteria.ignore_eos && num_generated >= criteria.min_tokens &&
      contains(criteria.eos_token_ids)) {
    return FinishReason::kStop;
  }
  if (contains(criteria.stop_token_ids)) return FinishReason::kStop;
  if (criteria.max_tokens > 0 && num_generated >= criteria.max_tokens) return FinishReason::kLength;
  return FinishReason::kNone;
}

StopStringMatcher::StopStringMatcher(std::vector<std::string> stop_strings,
                                     bool include_stop_string)
    : include_(include_stop_string) {
  for (auto& stop : stop_strings) {
    if (!stop.empty()) stops_.push_back(std::move(stop));
  }
}

std::string StopStringMatcher::Feed(std::string_view delta) {
  if (stopped_) return {};
  pending_ += delta;

  // The earliest stop string in the pending text (the longest one if several start there).
  size_t best = std::string::npos;
  for (const auto& stop : stops_) {
    const size_t at = pending_.find(stop);
    if (at != std::string::npos && (at < best || (at == best && stop.size() > matched_.size()))) {
      best = at;
      matched_ = stop;
    }
  }
  if (best != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, include_ ? best + matched_.size() : best);
    pending_.clear();
    return out;
  }

  // Withhold the longest tail that is a proper prefix of some stop string.
  size_t withheld = 0;
  for (const auto& stop : stops_) {
    for (size_t length = std::min(stop.size() - 1, pending_.size()); length > withheld; --length) {
      if (pending_.compare(pending_.size() - length, length, stop, 0, length) == 0) {
        withheld = length;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - withheld);
  pending_.erase(0, pending_.size() - withheld);
  return out;
}

std::string StopStringMatcher::Flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace inferbox::engine
