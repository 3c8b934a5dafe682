// The usage ledger on a real SQLite file: rows as recorded, aggregation (groups, filters,
// failures), nothing lost at close, what quotas rebuild from at start, the file shared with
// the key store; and the UsageMeter that ties quotas and ledger together.
#include "inferbox/daemon/usage_ledger.h"

#include <sqlite3.h>

#include <gmock/gmock.h>
#include <google/protobuf/util/time_util.h>
#include <gtest/gtest.h>

#include "inferbox/daemon/key_store.h"
#include "inferbox/daemon/usage_meter.h"
#include "temp_dir.h"

namespace inferbox::daemon {
namespace {

namespace api = ::inferbox::v1;
using namespace std::chrono_literals;
using google::protobuf::util::TimeUtil;
using ::testing::HasSubstr;
using TimePoint = std::chrono::system_clock::time_point;

// 2026-01-01T12:00:00Z and the next day's noon.
constexpr TimePoint kDay1{std::chrono::seconds(1767268800)};
constexpr TimePoint kDay2 = kDay1 + std::chrono::hours(24);

UsageRecord Row(TimePoint at, std::string key, std::string model, std::string outcome,
                uint64_t prompt, uint64_t completion, uint64_t cached = 0) {
  return {.finished_at = at,
          .key_id = std::move(key),
          .model = std::move(model),
          .api = "grpc",
          .prompt_tokens = prompt,
          .completion_tokens = completion,
          .cached_prompt_tokens = cached,
          .latency = 250ms,
          .outcome = std::move(outcome)};
}

google::protobuf::Timestamp Stamp(TimePoint time) {
  return TimeUtil::MillisecondsToTimestamp(
      std::chrono::duration_cast<std::chrono::milliseconds>(time.time_since_epoch()).count());
}

class UsageLedgerTest : public ::testing::Test {
 protected:
  std::filesystem::path database() const { return dir_ / "inferbox.db"; }

  std::unique_ptr<UsageLedger> Open() {
    auto ledger = UsageLedger::Open(database());
    EXPECT_TRUE(ledger.ok()) << ledger.status().ToString();
    return ledger.ok() ? std::move(ledger).value() : nullptr;
  }

  // Two keys, two models, two days; failures and a cancellation.
  void RecordSample(UsageLedger& ledger) {
    ledger.Record(Row(kDay1, "ibx_a", "qwen", "stop", 10, 20, 4));
    ledger.Record(Row(kDay1 + 1s, "ibx_a", "qwen", "length", 11, 30));
    ledger.Record(Row(kDay1 + 2s, "ibx_a", "llama", "cancelled", 0, 7));
    ledger.Record(Row(kDay1 + 3s, "ibx_b", "qwen", "engine_failed", 0, 3));
    ledger.Record(Row(kDay2, "ibx_a", "qwen", "stop", 5, 5));
    ledger.Record(Row(kDay2 + 1s, "", "qwen", "invalid", 0, 0));
  }

  inferbox::testing::TempDir dir_;
};

TEST_F(UsageLedgerTest, RowsComeBackAsRecorded) {
  auto ledger = Open();
  ASSERT_NE(ledger, nullptr);
  UsageRecord row = Row(kDay1, "ibx_a", "qwen", "stop", 12, 34, 8);
  row.api = "http";
  row.latency = 1234ms;
  ledger->Record(row);
  ASSERT_TRUE(ledger->Flush(5s).ok());
  auto rows = ledger->Records(kDay1, kDay1 + 1ms);
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  ASSERT_EQ(rows->size(), 1u);
  const UsageRecord& read = rows->front();
  EXPECT_EQ(read.finished_at, kDay1);
  EXPECT_EQ(read.key_id, "ibx_a");
  EXPECT_EQ(read.model, "qwen");
  EXPECT_EQ(read.api, "http");
  EXPECT_EQ(read.prompt_tokens, 12u);
  EXPECT_EQ(read.completion_tokens, 34u);
  EXPECT_EQ(read.cached_prompt_tokens, 8u);
  EXPECT_EQ(read.latency, 1234ms);
  EXPECT_EQ(read.outcome, "stop");
  EXPECT_TRUE(ledger->Records(kDay1 + 1ms, kDay2)->empty()) << "until is exclusive";
}

TEST_F(UsageLedgerTest, AggregatesByKeyAndModelByDefault) {
  auto ledger = Open();
  ASSERT_NE(ledger, nullptr);
  RecordSample(*ledger);
  ASSERT_TRUE(ledger->Flush(5s).ok());
  auto usage = ledger->Aggregate(api::GetUsageRequest());
  ASSERT_TRUE(usage.ok()) << usage.status().ToString();
  ASSERT_EQ(usage->rows_size(), 4);
  // Ordered by key id, then model; the anonymous caller's key id is empty.
  EXPECT_EQ(usage->rows(0).key_id(), "");
  EXPECT_EQ(usage->rows(0).failed_requests(), 1u);
  const api::UsageRow& llama = usage->rows(1);
  EXPECT_EQ(llama.key_id(), "ibx_a");
  EXPECT_EQ(llama.model(), "llama");
  EXPECT_EQ(llama.requests(), 1u);
  EXPECT_EQ(llama.failed_requests(), 1u);
  EXPECT_EQ(llama.cancelled_requests(), 1u);
  EXPECT_EQ(llama.completion_tokens(), 7u);
  const api::UsageRow& qwen = usage->rows(2);
  EXPECT_EQ(qwen.model(), "qwen");
  EXPECT_EQ(qwen.requests(), 3u);
  EXPECT_EQ(qwen.prompt_tokens(), 26u);
  EXPECT_EQ(qwen.completion_tokens(), 55u);
  EXPECT_EQ(qwen.cached_prompt_tokens(), 4u);
  EXPECT_EQ(qwen.failed_requests(), 0u);
  EXPECT_TRUE(qwen.day().empty());
  EXPECT_EQ(usage->rows(3).key_id(), "ibx_b");
  EXPECT_EQ(usage->rows(3).failed_requests(), 1u);
  EXPECT_EQ(usage->rows(3).cancelled_requests(), 0u);
}

TEST_F(UsageLedgerTest, GroupsByDayAndFilters) {
  auto ledger = Open();
  ASSERT_NE(ledger, nullptr);
  RecordSample(*ledger);
  ASSERT_TRUE(ledger->Flush(5s).ok());

  api::GetUsageRequest by_day;
  by_day.add_group_by(api::USAGE_DIMENSION_DAY);
  auto days = ledger->Aggregate(by_day);
  ASSERT_TRUE(days.ok()) << days.status().ToString();
  ASSERT_EQ(days->rows_size(), 2);
  EXPECT_EQ(days->rows(0).day(), "2026-01-01");
  EXPECT_EQ(days->rows(0).requests(), 4u);
  EXPECT_TRUE(days->rows(0).key_id().empty()) << "not grouped by key";
  EXPECT_EQ(days->rows(1).day(), "2026-01-02");
  EXPECT_EQ(days->rows(1).requests(), 2u);

  api::GetUsageRequest filtered;
  filtered.add_group_by(api::USAGE_DIMENSION_MODEL);
  filtered.add_group_by(api::USAGE_DIMENSION_DAY);
  filtered.set_key_id("ibx_a");
  filtered.set_model("qwen");
  *filtered.mutable_since() = Stamp(kDay1 + 1s);
  *filtered.mutable_until() = Stamp(kDay2 + 1ms);
  auto narrow = ledger->Aggregate(filtered);
  ASSERT_TRUE(narrow.ok()) << narrow.status().ToString();
  ASSERT_EQ(narrow->rows_size(), 2);
  EXPECT_EQ(narrow->rows(0).day(), "2026-01-01");
  EXPECT_EQ(narrow->rows(0).prompt_tokens(), 11u) << "since is inclusive";
  EXPECT_EQ(narrow->rows(1).day(), "2026-01-02");
  EXPECT_EQ(narrow->rows(1).prompt_tokens(), 5u);

  api::GetUsageRequest bad;
  bad.add_group_by(static_cast<api::UsageDimension>(42));
  EXPECT_EQ(ledger->Aggregate(bad).status().code(), StatusCode::kInvalidArgument);
  api::GetUsageRequest empty;
  *empty.mutable_since() = Stamp(kDay2);
  *empty.mutable_until() = Stamp(kDay1);
  EXPECT_THAT(ledger->Aggregate(empty).status().message(), HasSubstr("since must be before"));
}

TEST_F(UsageLedgerTest, CloseWritesEverythingQueuedAndLaterRowsStillLand) {
  {
    auto ledger = Open();
    ASSERT_NE(ledger, nullptr);
    for (int i = 0; i < 500; ++i)
      ledger->Record(Row(kDay1 + std::chrono::milliseconds(i), "ibx_a", "qwen", "stop", 1, 1));
    ledger->Close();
    // A request that ends after the ledger closed is written at once.
    ledger->Record(Row(kDay2, "ibx_late", "qwen", "stop", 1, 1));
  }
  auto reopened = Open();
  ASSERT_NE(reopened, nullptr);
  auto rows = reopened->Records(kDay1, kDay2 + 1s);
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(rows->size(), 501u) << "a graceful shutdown loses no usage row";
  EXPECT_EQ(rows->back().key_id, "ibx_late");
}

TEST_F(UsageLedgerTest, RecentUsageIsWhatQuotasNeed) {
  auto ledger = Open();
  ASSERT_NE(ledger, nullptr);
  const TimePoint now = kDay2 + 30s;                                  // 12:00:30 on day 2.
  ledger->Record(Row(kDay1, "ibx_a", "qwen", "stop", 100, 100));      // Yesterday.
  ledger->Record(Row(kDay2 - 12h, "ibx_a", "qwen", "stop", 10, 10));  // Today, 00:00.
  ledger->Record(Row(kDay2 - 30s, "ibx_a", "qwen", "stop", 1, 2));    // Just outside.
  ledger->Record(Row(kDay2, "ibx_a", "qwen", "cancelled", 0, 4));     // In the minute.
  ledger->Record(Row(kDay2 + 10s, "ibx_b", "qwen", "stop", 3, 3));    // In the minute.
  ledger->Record(Row(kDay2 + 20s, "", "qwen", "stop", 50, 50));       // Anonymous.
  ASSERT_TRUE(ledger->Flush(5s).ok());
  auto recent = ledger->Recent(now);
  ASSERT_TRUE(recent.ok()) << recent.status().ToString();
  EXPECT_EQ(recent->tokens_today.size(), 2u) << "anonymous use has no quota";
  EXPECT_EQ(recent->tokens_today.at("ibx_a"), 20u + 3u + 4u);
  EXPECT_EQ(recent->tokens_today.at("ibx_b"), 6u);
  ASSERT_EQ(recent->last_minute.size(), 2u);
  EXPECT_EQ(recent->last_minute[0].key_id, "ibx_a");
  EXPECT_EQ(recent->last_minute[0].at, kDay2);
  EXPECT_EQ(recent->last_minute[0].tokens, 4u);
  EXPECT_EQ(recent->last_minute[1].key_id, "ibx_b");
}

TEST_F(UsageLedgerTest, SharesTheDatabaseWithTheKeyStore) {
  auto keys = KeyStore::Open(database(), true);
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  auto ledger = Open();
  ASSERT_NE(ledger, nullptr);
  ASSERT_TRUE((*keys)->Create("ops", api::KEY_ROLE_ADMIN, {}).ok());
  ledger->Record(Row(kDay1, "ibx_a", "qwen", "stop", 1, 1));
  ASSERT_TRUE(ledger->Flush(5s).ok());

  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2(database().c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite3_stmt* statement = nullptr;
  ASSERT_EQ(
      sqlite3_prepare_v2(db, "SELECT component, version FROM schema_versions ORDER BY component",
                         -1, &statement, nullptr),
      SQLITE_OK);
  std::vector<std::string> components;
  while (sqlite3_step(statement) == SQLITE_ROW) {
    components.push_back(reinterpret_cast<const char*>(sqlite3_column_text(statement, 0)) +
                         std::string("=") + std::to_string(sqlite3_column_int(statement, 1)));
  }
  sqlite3_finalize(statement);
  sqlite3_close(db);
  EXPECT_EQ(components, (std::vector<std::string>{"api_keys=1", "usage_ledger=1"}));
}

TEST_F(UsageLedgerTest, ASchemaFromANewerReleaseIsRefused) {
  { ASSERT_NE(Open(), nullptr); }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(database().c_str(), &db), SQLITE_OK);
  ASSERT_EQ(
      sqlite3_exec(db, "UPDATE schema_versions SET version = 7 WHERE component = 'usage_ledger'",
                   nullptr, nullptr, nullptr),
      SQLITE_OK);
  sqlite3_close(db);
  auto ledger = UsageLedger::Open(database());
  ASSERT_FALSE(ledger.ok());
  EXPECT_EQ(ledger.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(ledger.status().message(), HasSubstr("usage_ledger schema version 7, newer than"));
}

TEST_F(UsageLedgerTest, TheMeterChargesRecordsAndSurvivesARestart) {
  TimePoint now = kDay1;
  const Caller caller{.key_id = "ibx_metered00000",
                      .tokens_per_minute = 50,
                      .max_concurrent_requests = 1,
                      .api = "http"};
  {
    auto ledger = Open();
    ASSERT_NE(ledger, nullptr);
    KeyQuotas quotas([&] { return now; });
    UsageMeter meter(quotas, ledger.get());
    auto first = meter.Admit(caller, "qwen");
    ASSERT_TRUE(first.ok()) << first.status().ToString();
    EXPECT_EQ(meter.Admit(caller, "qwen").status().quota_violation()->limit,
              "max_concurrent_requests");
    now += 2s;
    (*first)->Settle({.prompt_tokens = 20, .completion_tokens = 40, .outcome = "length"});
    (*first)->Settle({.outcome = "error"});  // Only the first settle counts.
    {
      // Admitted, never started (e.g. the engine vanished): frees its slot, records nothing.
      auto second = meter.Admit(Caller{.key_id = "ibx_other0000000"}, "qwen");
      ASSERT_TRUE(second.ok());
    }
    EXPECT_EQ(quotas.Use("ibx_other0000000").in_flight, 0u);
    EXPECT_EQ(meter.Admit(caller, "qwen").status().quota_violation()->retry_after, 60s);
    ledger->Close();
    auto rows = ledger->Records(kDay1, kDay2);
    ASSERT_TRUE(rows.ok());
    ASSERT_EQ(rows->size(), 1u);
    EXPECT_EQ(rows->front().finished_at, kDay1 + 2s);
    EXPECT_EQ(rows->front().api, "http");
    EXPECT_EQ(rows->front().model, "qwen");
    EXPECT_EQ(rows->front().outcome, "length");
    EXPECT_EQ(rows->front().tokens(), 60u);
  }
  // A restarted daemon rebuilds its quotas from the ledger: still refused, as long as before.
  now += 10s;
  auto ledger = Open();
  ASSERT_NE(ledger, nullptr);
  KeyQuotas quotas([&] { return now; });
  auto recent = ledger->Recent(now);
  ASSERT_TRUE(recent.ok());
  quotas.Restore(*recent);
  const Status refused = quotas.Admit(caller);
  ASSERT_TRUE(refused.quota_violation());
  EXPECT_EQ(refused.quota_violation()->retry_after, 50s);
}

}  // namespace
}  // namespace inferbox::daemon
