#include "inferbox/daemon/key_quotas.h"

#include <algorithm>
#include <optional>

#include <fmt/format.h>

namespace inferbox::daemon {
namespace {

using TimePoint = std::chrono::system_clock::time_point;
using std::chrono::milliseconds;

constexpr int64_t kMillisPerDay = 86'400'000;

int64_t UtcDay(TimePoint time) {
  const int64_t ms = std::chrono::duration_cast<milliseconds>(time.time_since_epoch()).count();
  return ms >= 0 ? ms / kMillisPerDay : (ms - kMillisPerDay + 1) / kMillisPerDay;
}

TimePoint StartOfUtcDay(int64_t day) {
  return TimePoint(milliseconds(day * kMillisPerDay));
}

// Whole milliseconds until `when`, rounded up so that retrying after them is never early.
milliseconds Until(TimePoint when, TimePoint now) {
  return std::max(milliseconds(1), std::chrono::ceil<milliseconds>(when - now));
}

int64_t WholeSeconds(milliseconds delay) {
  return std::chrono::ceil<std::chrono::seconds>(delay).count();
}

}  // namespace

KeyQuotas::KeyQuotas(Clock clock)
    : clock_(clock ? std::move(clock) : Clock([] { return std::chrono::system_clock::now(); })) {}

void KeyQuotas::Expire(Usage& usage, TimePoint now) {
  while (!usage.minute.empty() && usage.minute.front().first + kMinuteWindow <= now) {
    usage.minute_tokens -= usage.minute.front().second;
    usage.minute.pop_front();
  }
}

void KeyQuotas::AddToWindow(Usage& usage, uint64_t tokens, TimePoint at) {
  // Requests end on many threads: keep the window ordered by time.
  auto position = usage.minute.end();
  while (position != usage.minute.begin() && std::prev(position)->first > at) --position;
  usage.minute.emplace(position, at, tokens);
  usage.minute_tokens += tokens;
}

void KeyQuotas::Charge(Usage& usage, uint64_t tokens, TimePoint at) {
  if (tokens == 0) return;
  AddToWindow(usage, tokens, at);
  const int64_t day = UtcDay(at);
  if (day > usage.day) {
    usage.day = day;
    usage.day_tokens = 0;
  }
  // A request that ended yesterday (and is charged late) does not count against today.
  if (day == usage.day) usage.day_tokens += tokens;
}

void KeyQuotas::Restore(const RecentUsage& recent) {
  const TimePoint now = clock_();
  const int64_t today = UtcDay(now);
  std::lock_guard lock(mutex_);
  for (const auto& [key_id, tokens] : recent.tokens_today) {
    Usage& usage = keys_[key_id];
    usage.day = today;
    usage.day_tokens += tokens;
  }
  for (const TokenCharge& charge : recent.last_minute) {
    if (charge.key_id.empty() || charge.tokens == 0) continue;
    AddToWindow(keys_[charge.key_id], charge.tokens, charge.at);
  }
  for (auto& [key_id, usage] : keys_) Expire(usage, now);
}

Status KeyQuotas::Admit(const Caller& caller) {
  if (caller.key_id.empty()) return Status::Ok();
  const TimePoint now = clock_();
  std::lock_guard lock(mutex_);
  Usage& usage = keys_[caller.key_id];
  Expire(usage, now);

  // Of the limits reached, the one that frees last decides when to come back.
  std::optional<QuotaViolation> violation;
  std::string message;
  auto consider = [&](std::string_view limit, milliseconds retry_after, std::string why) {
    if (violation && violation->retry_after >= retry_after) return;
    violation = QuotaViolation{.limit = std::string(limit),
                               .subject = "api_key:" + caller.key_id,
                               .retry_after = retry_after};
    message = std::move(why);
  };
  if (caller.max_concurrent_requests > 0 && usage.in_flight >= caller.max_concurrent_requests) {
    consider("max_concurrent_requests", kConcurrencyRetryHint,
             fmt::format("API key {} already has {} request{} in flight, its limit; retry when one "
                         "ends",
                         caller.key_id, usage.in_flight, usage.in_flight == 1 ? "" : "s"));
  }
  const int64_t today = UtcDay(now);
  const uint64_t tokens_today = usage.day == today ? usage.day_tokens : 0;
  if (caller.tokens_per_day > 0 && tokens_today >= caller.tokens_per_day) {
    const milliseconds retry_after = Until(StartOfUtcDay(today + 1), now);
    consider(
        "tokens_per_day", retry_after,
        fmt::format("API key {} used its daily budget of {} tokens ({} used today, UTC); it "
                    "renews at 00:00 UTC, in {} s",
                    caller.key_id, caller.tokens_per_day, tokens_today, WholeSeconds(retry_after)));
  }
  if (caller.tokens_per_minute > 0 && usage.minute_tokens >= caller.tokens_per_minute) {
    // The window frees once enough of its oldest charges have left it.
    uint64_t remaining = usage.minute_tokens;
    TimePoint frees = now;
    for (const auto& [at, tokens] : usage.minute) {
      remaining -= tokens;
      if (remaining < caller.tokens_per_minute) {
        frees = at + kMinuteWindow;
        break;
      }
    }
    const milliseconds retry_after = Until(frees, now);
    consider("tokens_per_minute", retry_after,
             fmt::format("API key {} reached its limit of {} tokens per minute ({} used in the "
                         "last {} s); retry in {} s",
                         caller.key_id, caller.tokens_per_minute, usage.minute_tokens,
                         kMinuteWindow.count(), WholeSeconds(retry_after)));
  }
  if (violation) return QuotaExceededError(std::move(message), std::move(*violation));
  ++usage.in_flight;
  return Status::Ok();
}

void KeyQuotas::Finish(std::string_view key_id, uint64_t tokens, TimePoint at) {
  if (key_id.empty()) return;
  std::lock_guard lock(mutex_);
  auto found = keys_.find(key_id);
  if (found == keys_.end()) found = keys_.emplace(std::string(key_id), Usage{}).first;
  Usage& usage = found->second;
  if (usage.in_flight > 0) --usage.in_flight;
  Charge(usage, tokens, at);
}

KeyQuotas::KeyUse KeyQuotas::Use(std::string_view key_id) const {
  const TimePoint now = clock_();
  std::lock_guard lock(mutex_);
  const auto found = keys_.find(key_id);
  if (found == keys_.end()) return {};
  const Usage& usage = found->second;
  KeyUse use;
  for (const auto& [at, tokens] : usage.minute) {
    if (at + kMinuteWindow > now) use.tokens_last_minute += tokens;
  }
  use.tokens_today = usage.day == UtcDay(now) ? usage.day_tokens : 0;
  use.in_flight = usage.in_flight;
  return use;
}

}  // namespace inferbox::daemon
