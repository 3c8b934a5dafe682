// KeyQuotas on an injected clock: the rolling minute, the UTC day and its rollover,
// concurrency, the retry-after of each, which limit is reported, and the rebuild from the
// ledger's recent usage.
#include "inferbox/daemon/key_quotas.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace inferbox::daemon {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using TimePoint = std::chrono::system_clock::time_point;

// 2026-01-01T12:00:00Z.
constexpr TimePoint kNoon{std::chrono::seconds(1767268800)};
// 2026-01-02T00:00:00Z.
constexpr TimePoint kMidnight{std::chrono::seconds(1767312000)};

class KeyQuotasTest : public ::testing::Test {
 protected:
  KeyQuotasTest() : quotas_([this] { return now_; }) {}

  static Caller Key(std::string id, uint64_t per_minute, uint64_t per_day = 0,
                    uint32_t concurrent = 0) {
    return Caller{.key_id = std::move(id),
                  .tokens_per_minute = per_minute,
                  .tokens_per_day = per_day,
                  .max_concurrent_requests = concurrent};
  }

  // Admits a request for `caller` now and ends it at once having used `tokens`.
  void Use(const Caller& caller, uint64_t tokens) {
    ASSERT_TRUE(quotas_.Admit(caller).ok());
    quotas_.Finish(caller.key_id, tokens, now_);
  }

  TimePoint now_ = kNoon;
  KeyQuotas quotas_;
};

TEST_F(KeyQuotasTest, AnonymousCallersAndKeysWithoutLimitsAreNeverRefused) {
  const Caller anonymous;
  const Caller unlimited = Key("ibx_unlimited0000", 0);
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(quotas_.Admit(anonymous).ok());
    ASSERT_TRUE(quotas_.Admit(unlimited).ok());
    quotas_.Finish(unlimited.key_id, 1'000'000, now_);
  }
  EXPECT_EQ(quotas_.Use("").in_flight, 0u) << "anonymous callers are not tracked";
  EXPECT_EQ(quotas_.Use(unlimited.key_id).tokens_today, 100'000'000u);
}

TEST_F(KeyQuotasTest, TheMinuteWindowRefusesUntilItsOldestChargesLeaveIt) {
  const Caller key = Key("ibx_minute000000", 100);
  Use(key, 30);  // 12:00:00
  now_ += 10s;
  Use(key, 30);  // 12:00:10
  now_ += 10s;
  Use(key, 30);  // 12:00:20: 90 used, still below the limit: admitted.
  now_ += 10s;
  Use(key, 20);  // 12:00:30: 110, over the limit: this request ran, the next must wait.
  now_ += 5s;    // 12:00:35

  const Status refused = quotas_.Admit(key);
  ASSERT_EQ(refused.code(), StatusCode::kResourceExhausted);
  ASSERT_TRUE(refused.quota_violation());
  EXPECT_EQ(refused.quota_violation()->limit, "tokens_per_minute");
  EXPECT_EQ(refused.quota_violation()->subject, "api_key:ibx_minute000000");
  // Dropping the 12:00:00 charge leaves 80 < 100: the window frees at 12:01:00.
  EXPECT_EQ(refused.quota_violation()->retry_after, 25s);
  EXPECT_THAT(refused.message(), HasSubstr("limit of 100 tokens per minute"));
  EXPECT_THAT(refused.message(), HasSubstr("110 used"));
  EXPECT_THAT(refused.message(), HasSubstr("retry in 25 s"));

  now_ = kNoon + 60s - 1ms;
  EXPECT_EQ(quotas_.Admit(key).quota_violation()->retry_after, 1ms);
  now_ = kNoon + 60s;
  EXPECT_TRUE(quotas_.Admit(key).ok()) << "the window frees exactly when it said";
}

TEST_F(KeyQuotasTest, RetryAfterCountsEveryChargeThatMustLeave) {
  const Caller key = Key("ibx_minute000000", 50);
  Use(key, 40);  // 12:00:00
  now_ += 20s;
  Use(key, 40);  // 12:00:20: 80 used.
  now_ += 1s;
  // Dropping the first charge leaves 40 < 50: free at 12:01:00, in 39 s.
  EXPECT_EQ(quotas_.Admit(key).quota_violation()->retry_after, 39s);

  Use(Key("ibx_other0000000", 50), 0);
  now_ = kNoon + 60s;
  ASSERT_TRUE(quotas_.Admit(key).ok());
  quotas_.Finish(key.key_id, 100, now_);  // 140 within the window now.
  // Both the 12:00:20 and the 12:01:00 charges must leave: free at 12:02:00.
  EXPECT_EQ(quotas_.Admit(key).quota_violation()->retry_after, 60s);
}

TEST_F(KeyQuotasTest, TheDailyBudgetRenewsAtUtcMidnight) {
  const Caller key = Key("ibx_daily0000000", 0, 1000);
  now_ = kMidnight - 10min;
  Use(key, 999);
  Use(key, 5);  // Crosses the budget.
  now_ = kMidnight - 30s;
  const Status refused = quotas_.Admit(key);
  ASSERT_TRUE(refused.quota_violation());
  EXPECT_EQ(refused.quota_violation()->limit, "tokens_per_day");
  EXPECT_EQ(refused.quota_violation()->retry_after, 30s);
  EXPECT_THAT(refused.message(), HasSubstr("daily budget of 1000 tokens (1004 used today"));

  now_ = kMidnight;
  EXPECT_TRUE(quotas_.Admit(key).ok()) << "a new UTC day has a fresh budget";
  EXPECT_EQ(quotas_.Use(key.key_id).tokens_today, 0u);
  // A request admitted yesterday that ends today counts against today...
  quotas_.Finish(key.key_id, 7, kMidnight + 1s);
  // ...one that ended yesterday but is charged late does not.
  quotas_.Finish(key.key_id, 500, kMidnight - 1s);
  EXPECT_EQ(quotas_.Use(key.key_id).tokens_today, 7u);
}

TEST_F(KeyQuotasTest, ConcurrencyCountsRequestsUntilTheyFinish) {
  const Caller key = Key("ibx_streams00000", 0, 0, 2);
  ASSERT_TRUE(quotas_.Admit(key).ok());
  ASSERT_TRUE(quotas_.Admit(key).ok());
  const Status refused = quotas_.Admit(key);
  ASSERT_TRUE(refused.quota_violation());
  EXPECT_EQ(refused.quota_violation()->limit, "max_concurrent_requests");
  EXPECT_EQ(refused.quota_violation()->retry_after, KeyQuotas::kConcurrencyRetryHint);
  EXPECT_THAT(refused.message(), HasSubstr("already has 2 requests in flight"));
  EXPECT_EQ(quotas_.Use(key.key_id).in_flight, 2u) << "a refused request takes no slot";

  quotas_.Finish(key.key_id, 0, now_);
  EXPECT_TRUE(quotas_.Admit(key).ok());
}

TEST_F(KeyQuotasTest, OfSeveralLimitsReachedTheOneThatFreesLastIsReported) {
  const Caller key = Key("ibx_several00000", 100, 150, 1);
  now_ = kMidnight - 1h;
  // Two requests under a looser limit: one ends having used 200 tokens, one stays open.
  const Caller setup = Key(key.key_id, 0, 0, 2);
  ASSERT_TRUE(quotas_.Admit(setup).ok());
  ASSERT_TRUE(quotas_.Admit(setup).ok());
  quotas_.Finish(key.key_id, 200, now_);
  now_ += 1s;
  const Status refused = quotas_.Admit(key);
  ASSERT_TRUE(refused.quota_violation());
  EXPECT_EQ(refused.quota_violation()->limit, "tokens_per_day");
  EXPECT_EQ(refused.quota_violation()->retry_after, 1h - 1s);
}

TEST_F(KeyQuotasTest, KeysHaveSeparateQuotas) {
  const Caller heavy = Key("ibx_heavy0000000", 10, 10, 1);
  const Caller light = Key("ibx_light0000000", 10, 10, 1);
  Use(heavy, 50);
  ASSERT_TRUE(quotas_.Admit(heavy).quota_violation());
  EXPECT_TRUE(quotas_.Admit(light).ok());
}

TEST_F(KeyQuotasTest, RestoredUsageRefusesAsTheStateBeforeTheRestartDid) {
  const Caller key = Key("ibx_restored0000", 100, 300);
  RecentUsage recent;
  recent.tokens_today = {{key.key_id, 320}, {"ibx_other0000000", 5}};
  recent.last_minute = {{.key_id = key.key_id, .at = kNoon - 50s, .tokens = 60},
                        {.key_id = key.key_id, .at = kNoon - 20s, .tokens = 60},
                        {.key_id = "ibx_other0000000", .at = kNoon - 5s, .tokens = 5}};
  quotas_.Restore(recent);

  const KeyQuotas::KeyUse use = quotas_.Use(key.key_id);
  EXPECT_EQ(use.tokens_last_minute, 120u);
  EXPECT_EQ(use.tokens_today, 320u);
  EXPECT_EQ(use.in_flight, 0u);
  const Status refused = quotas_.Admit(Key(key.key_id, 100));
  ASSERT_TRUE(refused.quota_violation());
  EXPECT_EQ(refused.quota_violation()->retry_after, 10s)
      << "the 11:59:10 charge leaves at noon+10s";
  EXPECT_EQ(quotas_.Admit(Key(key.key_id, 0, 300)).quota_violation()->limit, "tokens_per_day");
}

}  // namespace
}  // namespace inferbox::daemon
