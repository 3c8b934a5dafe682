// When a generation ends: end-of-sequence and stop token ids, max_tokens, and stop strings
// that may span token boundaries. Per request, engine thread only.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace inferbox::engine {

enum class FinishReason { kNone, kStop, kLength };

struct StopCriteria {
  std::vector<int32_t> eos_token_ids;   // From the model (generation_config / config).
  std::vector<int32_t> stop_token_ids;  // From the request.
  int64_t max_tokens = 0;  // Generated tokens at most; the caller clamps it to the context.
  int64_t min_tokens = 0;  // No end-of-sequence stop before this many.
  bool ignore_eos = false;
};

// After token number `num_generated` (1-based) was produced: kStop for an EOS or stop id
// (EOS ids honour min_tokens and ignore_eos), kLength once max_tokens is reached.
FinishReason CheckTokenStop(const StopCriteria& criteria, int32_t token, int64_t num_generated);

// Streams generated text, withholding any tail that could still grow into a stop string,
// so that nothing sent to a client ever has to be taken back.
class StopStringMatcher {
 public:
  StopStringMatcher(std::vector<std::string> stop_strings, bool include_stop_string);

  // Appends a text delta (whole UTF-8 characters); returns the text now safe to emit. Once a
  // stop string appears, stopped() is true and the returned text ends where it starts (or
  // after it, with include_stop_string); later calls return nothing.
  std::string Feed(std::string_view delta);
  // Generation ended for another reason: returns the withheld tail.
  std::string Flush();

  bool stopped() const { return stopped_; }
  const std::string& matched() const { return matched_; }

 private:
  std::vector<std::string> stops_;
  bool include_;
  std::string pending_;
  bool stopped_ = false;
  std::string matched_;
};

}  // namespace inferbox::engine
