// The audit log of the Admin service: one event per call (who, from where, which RPC, the
// request without its secrets, when, the outcome), refusals included. Append-only: the
// table refuses UPDATE and DELETE (SQLite triggers), and ids only grow.
//
// Events live in the box's SQLite database (state_dir/inferbox.db): table audit_events,
// versioned in schema_versions (component "audit_log"). Append writes and syncs before it
// returns (admin calls are rare; their record must survive a power cut).
//
// Thread-safe: every method may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <google/protobuf/message.h>
#include <grpcpp/support/status.h>

#include "inferbox/common/status.h"
#include "inferbox/v1/admin.pb.h"

namespace inferbox::sqlite {
class Database;
}  // namespace inferbox::sqlite

namespace inferbox::admin {

class AuditLog {
 public:
  // Injectable for tests; unset: the system clock.
  using Clock = std::function<std::chrono::system_clock::time_point()>;

  // Opens the database at `database` (as KeyStore does; the directory must exist) and
  // brings the audit_events schema up to date.
  static Result<std::unique_ptr<AuditLog>> Open(const std::filesystem::path& database,
                                                Clock clock = {});
  ~AuditLog();
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  // Appends `event` with the time now (its id and time are assigned here).
  Status Append(inferbox::v1::AuditEvent event);

  // The newest `limit` events (at or after `since` when set), newest first.
  Result<std::vector<inferbox::v1::AuditEvent>> List(
      uint32_t limit, std::optional<std::chrono::system_clock::time_point> since);

 private:
  AuditLog(std::unique_ptr<sqlite::Database> db, Clock clock);

  const Clock clock_;
  std::mutex mutex_;
  std::unique_ptr<sqlite::Database> db_;  // Guarded by mutex_.
};

// The request as an audit event shows it: JSON with the field names of its .proto, at most
// 2 KiB, with secrets replaced by "[redacted]": fields named like secrets (secret, token,
// password, passphrase, credential, private_key), the secret part of anything shaped like
// an inferbox API key, and the user information and query of URLs.
std::string SummarizeRequest(const google::protobuf::Message& request);

// "OK", "PERMISSION_DENIED", ...: the name of a gRPC status code.
std::string_view GrpcCodeName(grpc::StatusCode code);

}  // namespace inferbox::admin
