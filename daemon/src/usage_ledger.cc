#include "inferbox/daemon/usage_ledger.h"

#include <array>
#include <limits>
#include <string_view>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>

#include "inferbox/common/sqlite.h"

namespace inferbox::daemon {
namespace {

namespace api = ::inferbox::v1;
using TimePoint = std::chrono::system_clock::time_point;
using sqlite::BindText;
using sqlite::ColumnText;
using TimeUtil = google::protobuf::util::TimeUtil;

// Index i takes the usage_records schema from version i to i + 1. Append only.
constexpr std::array<std::string_view, 1> kMigrations = {
    R"sql(
CREATE TABLE usage_records (
  id INTEGER PRIMARY KEY,
  finished_at_ms INTEGER NOT NULL,      -- Unix time in milliseconds, when the request ended.
  key_id TEXT NOT NULL,                 -- '' for an anonymous caller.
  model TEXT NOT NULL,
  api TEXT NOT NULL,                    -- 'grpc' or 'http'.
  prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  cached_prompt_tokens INTEGER NOT NULL,
  latency_ms INTEGER NOT NULL,
  outcome TEXT NOT NULL                 -- 'stop', 'length', 'cancelled', 'engine_failed', ...
) STRICT;
CREATE INDEX usage_records_by_time ON usage_records (finished_at_ms);
CREATE INDEX usage_records_by_key ON usage_records (key_id, finished_at_ms);
)sql",
};
constexpr std::string_view kSchemaComponent = "usage_ledger";

// Past this many rows waiting (the disk has been failing for a long time), the oldest are
// dropped, with an error in the log, rather than growing without bound.
constexpr size_t kMaxQueuedRows = 100'000;
constexpr auto kRetryInterval = std::chrono::seconds(1);
constexpr int64_t kMillisPerDay = 86'400'000;

int64_t ToMillis(TimePoint time) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(time.time_since_epoch()).count();
}

TimePoint FromMillis(int64_t ms) {
  return TimePoint(std::chrono::milliseconds(ms));
}

uint64_t ColumnCount(sqlite3_stmt* statement, int column) {
  const int64_t value = sqlite3_column_int64(statement, column);
  return value > 0 ? static_cast<uint64_t>(value) : 0;
}

}  // namespace

bool IsFinishedOutcome(std::string_view outcome) {
  return outcome == "stop" || outcome == "length";
}

UsageLedger::UsageLedger(std::unique_ptr<sqlite::Database> db) : db_(std::move(db)) {}

UsageLedger::~UsageLedger() {
  Close();
}

Result<std::unique_ptr<UsageLedger>> UsageLedger::Open(const std::filesystem::path& database) {
  auto db = sqlite::Database::Open(database, "usage ledger", sqlite::Durability::kNormal);
  if (!db.ok()) return db.status();
  if (Status migrated = (*db)->Migrate(kSchemaComponent, kMigrations); !migrated.ok())
    return migrated;
  std::unique_ptr<UsageLedger> ledger(new UsageLedger(std::move(db).value()));
  ledger->writer_ = std::thread([raw = ledger.get()] { raw->WriterLoop(); });
  return ledger;
}

void UsageLedger::Record(UsageRecord record) {
  {
    std::lock_guard lock(queue_mutex_);
    if (!closed_) {
      queue_.push_back(std::move(record));
      ++recorded_;
      queue_changed_.notify_all();
      return;
    }
  }
  std::lock_guard db_lock(db_mutex_);
  if (Status written = Insert({record}); !written.ok()) {
    spdlog::error("usage ledger: a usage row written after close is lost: {}", written.message());
  }
}

Status UsageLedger::Flush(std::chrono::milliseconds timeout) {
  std::unique_lock lock(queue_mutex_);
  const uint64_t target = recorded_;
  if (queue_changed_.wait_for(lock, timeout, [&] { return written_ >= target; })) {
    return Status::Ok();
  }
  return UnavailableError(
      fmt::format("usage ledger: {} usage rows are not written yet{}", target - written_,
                  last_error_.empty() ? std::string() : " (last error: " + last_error_ + ")"));
}

void UsageLedger::Close() {
  {
    std::lock_guard lock(queue_mutex_);
    closing_ = true;
  }
  queue_changed_.notify_all();
  // Close may race with itself (the destructor after an explicit Close): join once.
  std::lock_guard join_lock(join_mutex_);
  if (writer_.joinable()) writer_.join();
}

void UsageLedger::WriterLoop() {
  std::unique_lock lock(queue_mutex_);
  for (;;) {
    queue_changed_.wait(lock, [&] { return !queue_.empty() || closing_; });
    if (queue_.empty()) {
      // Closing with nothing left: from now on Record writes itself.
      closed_ = true;
      return;
    }
    std::vector<UsageRecord> batch;
    batch.swap(queue_);
    lock.unlock();
    Status written;
    {
      std::lock_guard db_lock(db_mutex_);
      written = Insert(batch);
    }
    lock.lock();
    if (written.ok()) {
      written_ += batch.size();
      last_error_.clear();
      queue_changed_.notify_all();
      continue;
    }
    if (last_error_ != written.message()) spdlog::error("{}", written.message());
    last_error_ = written.message();
    if (closing_) {
      // The last try at shutdown failed: say what is lost, and let Flush callers go.
      const size_t lost = batch.size() + queue_.size();
      spdlog::error("usage ledger: {} usage rows lost at shutdown: {}", lost, last_error_);
      written_ += lost;
      queue_.clear();
      closed_ = true;
      queue_changed_.notify_all();
      return;
    }
    // Keep the rows, oldest first, and try again shortly.
    queue_.insert(queue_.begin(), std::make_move_iterator(batch.begin()),
                  std::make_move_iterator(batch.end()));
    if (queue_.size() > kMaxQueuedRows) {
      const size_t dropped = queue_.size() - kMaxQueuedRows;
      spdlog::error("usage ledger: dropping the {} oldest unwritten usage rows: {}", dropped,
                    last_error_);
      queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(dropped));
      written_ += dropped;
    }
    queue_changed_.wait_for(lock, kRetryInterval, [&] { return closing_; });
  }
}

Status UsageLedger::Insert(const std::vector<UsageRecord>& rows) {
  if (Status begun = db_->Execute("BEGIN IMMEDIATE", "starting to write usage rows"); !begun.ok())
    return begun;
  auto rollback = [&](Status status) {
    sqlite3_exec(db_->get(), "ROLLBACK", nullptr, nullptr, nullptr);
    return status;
  };
  auto insert = db_->Prepare(
      "INSERT INTO usage_records (finished_at_ms, key_id, model, api, prompt_tokens, "
      "completion_tokens, cached_prompt_tokens, latency_ms, outcome) "
      "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
      "writing usage rows");
  if (!insert.ok()) return rollback(insert.status());
  sqlite3_stmt* statement = insert->get();
  for (const UsageRecord& row : rows) {
    sqlite3_reset(statement);
    sqlite3_bind_int64(statement, 1, ToMillis(row.finished_at));
    BindText(statement, 2, row.key_id);
    BindText(statement, 3, row.model);
    BindText(statement, 4, row.api);
    sqlite3_bind_int64(statement, 5, static_cast<int64_t>(row.prompt_tokens));
    sqlite3_bind_int64(statement, 6, static_cast<int64_t>(row.completion_tokens));
    sqlite3_bind_int64(statement, 7, static_cast<int64_t>(row.cached_prompt_tokens));
    sqlite3_bind_int64(statement, 8, row.latency.count());
    BindText(statement, 9, row.outcome);
    if (sqlite3_step(statement) != SQLITE_DONE) return rollback(db_->Error("writing usage rows"));
  }
  insert->reset();
  if (Status committed = db_->Execute("COMMIT", "committing usage rows"); !committed.ok())
    return rollback(committed);
  return Status::Ok();
}

Result<api::GetUsageResponse> UsageLedger::Aggregate(const api::GetUsageRequest& request) {
  bool by_day = false;
  bool by_key = request.group_by().empty();
  bool by_model = request.group_by().empty();
  for (const int dimension : request.group_by()) {
    switch (dimension) {
      case api::USAGE_DIMENSION_DAY: by_day = true; break;
      case api::USAGE_DIMENSION_KEY: by_key = true; break;
      case api::USAGE_DIMENSION_MODEL: by_model = true; break;
      default:
        return InvalidArgumentError(
            fmt::format("group_by: {} is not a usage dimension (KEY, MODEL or DAY)", dimension));
    }
  }
  const int64_t since = request.has_since() ? TimeUtil::TimestampToMilliseconds(request.since())
                                            : std::numeric_limits<int64_t>::min();
  const int64_t until = request.has_until() ? TimeUtil::TimestampToMilliseconds(request.until())
                                            : std::numeric_limits<int64_t>::max();
  if (since >= until) return InvalidArgumentError("since must be before until");

  std::vector<std::string_view> columns;
  if (by_day) columns.push_back("strftime('%Y-%m-%d', finished_at_ms / 1000, 'unixepoch')");
  if (by_key) columns.push_back("key_id");
  if (by_model) columns.push_back("model");
  const std::string grouped = fmt::format("{}", fmt::join(columns, ", "));
  const std::string sql = fmt::format(
      "SELECT {0}, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), "
      "SUM(cached_prompt_tokens), SUM(outcome NOT IN ('stop', 'length')), "
      "SUM(outcome = 'cancelled') FROM usage_records "
      "WHERE finished_at_ms >= ?1 AND finished_at_ms < ?2 AND (?3 = '' OR key_id = ?3) "
      "AND (?4 = '' OR model = ?4) GROUP BY {0} ORDER BY {0}",
      grouped);

  std::lock_guard lock(db_mutex_);
  auto select = db_->Prepare(sql, "aggregating usage");
  if (!select.ok()) return select.status();
  sqlite3_stmt* statement = select->get();
  sqlite3_bind_int64(statement, 1, since);
  sqlite3_bind_int64(statement, 2, until);
  BindText(statement, 3, request.key_id());
  BindText(statement, 4, request.model());
  api::GetUsageResponse response;
  int step = SQLITE_ROW;
  while ((step = sqlite3_step(statement)) == SQLITE_ROW) {
    api::UsageRow& row = *response.add_rows();
    int column = 0;
    if (by_day) row.set_day(std::string(ColumnText(statement, column++)));
    if (by_key) row.set_key_id(std::string(ColumnText(statement, column++)));
    if (by_model) row.set_model(std::string(ColumnText(statement, column++)));
    row.set_requests(ColumnCount(statement, column++));
    row.set_prompt_tokens(ColumnCount(statement, column++));
    row.set_completion_tokens(ColumnCount(statement, column++));
    row.set_cached_prompt_tokens(ColumnCount(statement, column++));
    row.set_failed_requests(ColumnCount(statement, column++));
    row.set_cancelled_requests(ColumnCount(statement, column++));
  }
  if (step != SQLITE_DONE) return db_->Error("aggregating usage");
  return response;
}

Result<std::vector<UsageRecord>> UsageLedger::Records(TimePoint since, TimePoint until) {
  std::lock_guard lock(db_mutex_);
  auto select = db_->Prepare(
      "SELECT finished_at_ms, key_id, model, api, prompt_tokens, completion_tokens, "
      "cached_prompt_tokens, latency_ms, outcome FROM usage_records "
      "WHERE finished_at_ms >= ? AND finished_at_ms < ? ORDER BY id",
      "reading usage rows");
  if (!select.ok()) return select.status();
  sqlite3_stmt* statement = select->get();
  sqlite3_bind_int64(statement, 1, ToMillis(since));
  sqlite3_bind_int64(statement, 2, ToMillis(until));
  std::vector<UsageRecord> rows;
  int step = SQLITE_ROW;
  while ((step = sqlite3_step(statement)) == SQLITE_ROW) {
    rows.push_back({.finished_at = FromMillis(sqlite3_column_int64(statement, 0)),
                    .key_id = std::string(ColumnText(statement, 1)),
                    .model = std::string(ColumnText(statement, 2)),
                    .api = std::string(ColumnText(statement, 3)),
                    .prompt_tokens = ColumnCount(statement, 4),
                    .completion_tokens = ColumnCount(statement, 5),
                    .cached_prompt_tokens = ColumnCount(statement, 6),
                    .latency = std::chrono::milliseconds(sqlite3_column_int64(statement, 7)),
                    .outcome = std::string(ColumnText(statement, 8))});
  }
  if (step != SQLITE_DONE) return db_->Error("reading usage rows");
  return rows;
}

Result<RecentUsage> UsageLedger::Recent(TimePoint now) {
  const int64_t now_ms = ToMillis(now);
  const int64_t day_start = now_ms - (now_ms % kMillisPerDay + kMillisPerDay) % kMillisPerDay;
  const int64_t window_start =
      now_ms -
      std::chrono::duration_cast<std::chrono::milliseconds>(KeyQuotas::kMinuteWindow).count();
  RecentUsage recent;
  std::lock_guard lock(db_mutex_);
  {
    auto select = db_->Prepare(
        "SELECT key_id, SUM(prompt_tokens + completion_tokens) FROM usage_records "
        "WHERE finished_at_ms >= ? AND key_id != '' GROUP BY key_id",
        "reading today's usage");
    if (!select.ok()) return select.status();
    sqlite3_bind_int64(select->get(), 1, day_start);
    int step = SQLITE_ROW;
    while ((step = sqlite3_step(select->get())) == SQLITE_ROW) {
      recent.tokens_today.emplace(std::string(ColumnText(select->get(), 0)),
                                  ColumnCount(select->get(), 1));
    }
    if (step != SQLITE_DONE) return db_->Error("reading today's usage");
  }
  auto select = db_->Prepare(
      "SELECT key_id, finished_at_ms, prompt_tokens + completion_tokens FROM usage_records "
      "WHERE finished_at_ms > ? AND key_id != '' ORDER BY finished_at_ms",
      "reading the last minute's usage");
  if (!select.ok()) return select.status();
  sqlite3_bind_int64(select->get(), 1, window_start);
  int step = SQLITE_ROW;
  while ((step = sqlite3_step(select->get())) == SQLITE_ROW) {
    recent.last_minute.push_back({.key_id = std::string(ColumnText(select->get(), 0)),
                                  .at = FromMillis(sqlite3_column_int64(select->get(), 1)),
                                  .tokens = ColumnCount(select->get(), 2)});
  }
  if (step != SQLITE_DONE) return db_->Error("reading the last minute's usage");
  return recent;
}

}  // namespace inferbox::daemon
