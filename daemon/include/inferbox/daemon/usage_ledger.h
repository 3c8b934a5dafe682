// The usage ledger: one row per request admitted to an engine that ended (finished, failed or
// cancelled; streamed or not; gRPC or HTTP): when it ended, key, model, API, prompt /
// completion / cached tokens, latency and outcome. Admins aggregate it (Admin.GetUsage,
// `inferboxctl usage`) for chargeback; KeyQuotas rebuilds its windows from it at start.
//
// Rows live in the box's SQLite database (state_dir/inferbox.db): table usage_records,
// versioned in schema_versions (component "usage_ledger"). Record only queues a row; a writer
// thread of the ledger's own inserts what is queued in one transaction, so request threads
// never wait for the disk. Commits are synced as SQLite's WAL NORMAL mode does: a crash of
// the process loses nothing committed, a power cut may lose the last commits. Close (also
// the destructor) writes everything queued before it returns, so a graceful shutdown loses
// nothing.
//
// Thread-safe: every method may be called from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/daemon/key_quotas.h"
#include "inferbox/v1/admin.pb.h"

namespace inferbox::sqlite {
class Database;
}  // namespace inferbox::sqlite

namespace inferbox::daemon {

struct UsageRecord {
  std::chrono::system_clock::time_point finished_at;
  // Empty: an anonymous caller (keyless box).
  std::string key_id;
  std::string model;
  // "grpc" or "http".
  std::string api;
  uint64_t prompt_tokens = 0;
  uint64_t completion_tokens = 0;
  uint64_t cached_prompt_tokens = 0;
  // From admission to the end.
  std::chrono::milliseconds latency{0};
  // "stop" or "length" when it finished; else why not: "cancelled", "deadline",
  // "engine_failed", "invalid", "queue_full", "error".
  std::string outcome;

  uint64_t tokens() const { return prompt_tokens + completion_tokens; }
};

// True for outcomes of requests that finished ("stop", "length").
bool IsFinishedOutcome(std::string_view outcome);

class UsageLedger {
 public:
  // Opens the database at `database` (as KeyStore does; the directory must exist), brings
  // the usage_records schema up to date and starts the writer thread.
  static Result<std::unique_ptr<UsageLedger>> Open(const std::filesystem::path& database);
  // Close().
  ~UsageLedger();
  UsageLedger(const UsageLedger&) = delete;
  UsageLedger& operator=(const UsageLedger&) = delete;

  // Queues a row; never waits for the disk. After Close, writes it at once.
  void Record(UsageRecord record);

  // Waits until every row recorded before the call is written, or `timeout` passed
  // (UNAVAILABLE, saying how many are still waiting and the last database error).
  Status Flush(std::chrono::milliseconds timeout);

  // Writes what is queued, stops the writer thread. Rows that cannot be written (the disk
  // fails) are logged as lost. Idempotent.
  void Close();

  // Rows aggregated as `request` asks (filters and group_by; key_name is left empty).
  // INVALID_ARGUMENT for an unknown dimension or an empty interval. Reads what is written:
  // Flush first to include what was just recorded.
  Result<inferbox::v1::GetUsageResponse> Aggregate(const inferbox::v1::GetUsageRequest& request);

  // Every row that ended in [since, until), oldest first.
  Result<std::vector<UsageRecord>> Records(std::chrono::system_clock::time_point since,
                                           std::chrono::system_clock::time_point until);

  // What KeyQuotas needs at `now`: tokens per key since the start of that UTC day and the
  // charges of the minute before it.
  Result<RecentUsage> Recent(std::chrono::system_clock::time_point now);

 private:
  explicit UsageLedger(std::unique_ptr<sqlite::Database> db);
  void WriterLoop();
  // Inserts `rows` in one transaction. Needs db_mutex_.
  Status Insert(const std::vector<UsageRecord>& rows);

  std::mutex db_mutex_;
  std::unique_ptr<sqlite::Database> db_;  // Guarded by db_mutex_.

  std::mutex queue_mutex_;
  std::condition_variable queue_changed_;
  // Guarded by queue_mutex_: rows waiting for the writer, how many were ever recorded and
  // written (or given up, see Close), the last write error, whether Close began and whether
  // the writer is gone (Record then writes itself).
  std::vector<UsageRecord> queue_;
  uint64_t recorded_ = 0;
  uint64_t written_ = 0;
  std::string last_error_;
  bool closing_ = false;
  bool closed_ = false;

  std::mutex join_mutex_;  // Held while Close joins writer_.
  std::thread writer_;
};

}  // namespace inferbox::daemon
