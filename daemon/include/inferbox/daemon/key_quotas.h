// The quotas of API keys (KeyLimits): prompt + completion tokens per rolling minute and per
// UTC day, and requests in flight at once. Checked when a generation is admitted, charged
// when it ends.
//
// Tokens are charged when a request ends (finished, failed or cancelled), with what the
// usage ledger records for it, so that the state can be rebuilt from the ledger after a
// restart (Restore). A request is admitted while the key's use is below each limit; the
// request that crosses a limit is not cut short, it pushes the next admission back until
// enough of the window has passed. Requests still running count against the concurrency
// limit only, which bounds how far a key can overshoot its token limits.
//
// Thread-safe: every method may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/daemon/frontend.h"

namespace inferbox::daemon {

// Tokens one request used, charged to its key when it ended.
struct TokenCharge {
  std::string key_id;
  std::chrono::system_clock::time_point at;
  uint64_t tokens = 0;
};

// What the usage ledger holds about recent use, as of some time.
struct RecentUsage {
  // Tokens charged to each key since the start of the UTC day of the time asked about.
  std::map<std::string, uint64_t, std::less<>> tokens_today;
  // Charges within the minute before the time asked about.
  std::vector<TokenCharge> last_minute;
};

class KeyQuotas {
 public:
  // Injectable for tests; unset: the system clock.
  using Clock = std::function<std::chrono::system_clock::time_point()>;

  // The rolling window of tokens_per_minute.
  static constexpr std::chrono::seconds kMinuteWindow{60};
  // The retry hint when only the concurrency limit refuses: the box cannot know when one of
  // the key's requests will end.
  static constexpr std::chrono::seconds kConcurrencyRetryHint{1};

  explicit KeyQuotas(Clock clock = {});

  std::chrono::system_clock::time_point Now() const { return clock_(); }

  // Adds what the ledger recorded (at start, before any Admit).
  void Restore(const RecentUsage& recent);

  // OK: the request may start, and holds one of the caller's concurrent slots until Finish.
  // Else RESOURCE_EXHAUSTED with a QuotaViolation naming the limit and when it frees; when
  // several limits are reached, the one that frees last. Anonymous callers (no key) have no
  // quotas and are not tracked.
  Status Admit(const Caller& caller);

  // A request admitted for `key_id` ended at `at` having used `tokens` (0 for one that never
  // started): charges them and frees its slot.
  void Finish(std::string_view key_id, uint64_t tokens, std::chrono::system_clock::time_point at);

  struct KeyUse {
    uint64_t tokens_last_minute = 0;
    uint64_t tokens_today = 0;
    uint32_t in_flight = 0;
  };
  // A key's use now (for tests and diagnostics).
  KeyUse Use(std::string_view key_id) const;

 private:
  struct Usage {
    // Charges of the last minute, oldest first, and their sum.
    std::deque<std::pair<std::chrono::system_clock::time_point, uint64_t>> minute;
    uint64_t minute_tokens = 0;
    // Tokens charged on UTC day number `day` (days since the Unix epoch).
    int64_t day = 0;
    uint64_t day_tokens = 0;
    uint32_t in_flight = 0;
  };

  // Drops the charges that left the minute window by `now`. Needs mutex_.
  static void Expire(Usage& usage, std::chrono::system_clock::time_point now);
  static void AddToWindow(Usage& usage, uint64_t tokens, std::chrono::system_clock::time_point at);
  static void Charge(Usage& usage, uint64_t tokens, std::chrono::system_clock::time_point at);

  const Clock clock_;
  mutable std::mutex mutex_;
  std::map<std::string, Usage, std::less<>> keys_;  // Guarded by mutex_.
};

}  // namespace inferbox::daemon
