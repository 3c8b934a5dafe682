#include "inferbox/admin/audit_log.h"

#include <algorithm>
#include <array>
#include <limits>

#include <fmt/format.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>
#include <sqlite3.h>

#include "inferbox/common/redact.h"
#include "inferbox/common/sqlite.h"

namespace inferbox::admin {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::util::TimeUtil;
using sqlite::BindText;
using sqlite::ColumnText;

// Index i takes the audit_events schema from version i to i + 1. Append only.
constexpr std::array<std::string_view, 1> kMigrations = {
    R"sql(
CREATE TABLE audit_events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: an id is never used twice.
  time_ms INTEGER NOT NULL,              -- Unix time in milliseconds.
  caller_key_id TEXT NOT NULL,           -- '' for anonymous or unauthenticated callers.
  peer TEXT NOT NULL,
  rpc TEXT NOT NULL,
  request TEXT NOT NULL,                 -- JSON, secrets redacted.
  code TEXT NOT NULL,                    -- gRPC status code name.
  message TEXT NOT NULL,
  detail TEXT NOT NULL
) STRICT;
CREATE TRIGGER audit_events_append_only_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
CREATE TRIGGER audit_events_append_only_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
)sql",
};
constexpr std::string_view kSchemaComponent = "audit_log";

constexpr size_t kMaxRequestBytes = 2048;
constexpr std::string_view kKeyIdPrefix = "ibx_";
constexpr size_t kKeyIdRandomChars = 12;

bool IsBase32(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '2' && c <= '7');
}

bool IsBase64Url(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_';
}

// The secret part of anything shaped like an inferbox key ("ibx_<id>.<secret>"); the id is
// public and stays.
void RedactApiKeys(std::string& text) {
  for (size_t at = text.find(kKeyIdPrefix); at != std::string::npos;
       at = text.find(kKeyIdPrefix, at + 1)) {
    const size_t dot = at + kKeyIdPrefix.size() + kKeyIdRandomChars;
    if (dot >= text.size() || text[dot] != '.') continue;
    const auto id_begin = text.begin() + static_cast<std::ptrdiff_t>(at + kKeyIdPrefix.size());
    if (!std::all_of(id_begin, text.begin() + static_cast<std::ptrdiff_t>(dot), IsBase32)) continue;
    size_t end = dot + 1;
    while (end < text.size() && IsBase64Url(text[end])) ++end;
    if (end > dot + 1) text.replace(dot + 1, end - dot - 1, kRedacted);
  }
}

std::string RedactString(const FieldDescriptor& field, std::string value) {
  if (value.empty()) return value;
  if (IsSecretName(field.name())) return std::string(kRedacted);
  if (field.type() == FieldDescriptor::TYPE_BYTES) return value;
  RedactApiKeys(value);
  RedactUrlCredentials(value);
  return value;
}

void Redact(google::protobuf::Message& message) {
  const auto* descriptor = message.GetDescriptor();
  const auto* reflection = message.GetReflection();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const FieldDescriptor* field = descriptor->field(i);
    if (field->cpp_type() == FieldDescriptor::CPPTYPE_STRING) {
      if (field->is_repeated()) {
        for (int j = 0; j < reflection->FieldSize(message, field); ++j) {
          reflection->SetRepeatedString(
              &message, field, j,
              RedactString(*field, reflection->GetRepeatedString(message, field, j)));
        }
      } else {
        const std::string value = reflection->GetString(message, field);
        if (!value.empty()) reflection->SetString(&message, field, RedactString(*field, value));
      }
    } else if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      if (field->is_repeated()) {
        for (int j = 0; j < reflection->FieldSize(message, field); ++j)
          Redact(*reflection->MutableRepeatedMessage(&message, field, j));
      } else if (reflection->HasField(message, field)) {
        Redact(*reflection->MutableMessage(&message, field));
      }
    }
  }
}

// Cuts `text` to at most `bytes`, never inside a UTF-8 character.
void Truncate(std::string& text, size_t bytes) {
  if (text.size() <= bytes) return;
  size_t end = bytes;
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  text.resize(end);
}

}  // namespace

std::string SummarizeRequest(const google::protobuf::Message& request) {
  std::unique_ptr<google::protobuf::Message> copy(request.New());
  copy->CopyFrom(request);
  Redact(*copy);
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(*copy, &json, options).ok()) {
    return "(the request cannot be shown)";
  }
  Truncate(json, kMaxRequestBytes);
  return json;
}

std::string_view GrpcCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    default: return "UNKNOWN";
  }
}

AuditLog::AuditLog(std::unique_ptr<sqlite::Database> db, Clock clock)
    : clock_(clock ? std::move(clock) : Clock([] { return std::chrono::system_clock::now(); })),
      db_(std::move(db)) {}

AuditLog::~AuditLog() = default;

Result<std::unique_ptr<AuditLog>> AuditLog::Open(const std::filesystem::path& database,
                                                 Clock clock) {
  auto db = sqlite::Database::Open(database, "audit log", sqlite::Durability::kFull);
  if (!db.ok()) return db.status();
  if (Status migrated = (*db)->Migrate(kSchemaComponent, kMigrations); !migrated.ok())
    return migrated;
  return std::unique_ptr<AuditLog>(new AuditLog(std::move(db).value(), std::move(clock)));
}

Status AuditLog::Append(inferbox::v1::AuditEvent event) {
  const int64_t time_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(clock_().time_since_epoch()).count();
  std::lock_guard lock(mutex_);
  auto insert = db_->Prepare(
      "INSERT INTO audit_events (time_ms, caller_key_id, peer, rpc, request, code, message, "
      "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
      "recording an admin call");
  if (!insert.ok()) return insert.status();
  sqlite3_stmt* statement = insert->get();
  sqlite3_bind_int64(statement, 1, time_ms);
  BindText(statement, 2, event.caller_key_id());
  BindText(statement, 3, event.peer());
  BindText(statement, 4, event.rpc());
  BindText(statement, 5, event.request());
  BindText(statement, 6, event.code());
  BindText(statement, 7, event.message());
  BindText(statement, 8, event.detail());
  if (sqlite3_step(statement) != SQLITE_DONE) return db_->Error("recording an admin call");
  return Status::Ok();
}

Result<std::vector<inferbox::v1::AuditEvent>> AuditLog::List(
    uint32_t limit, std::optional<std::chrono::system_clock::time_point> since) {
  const int64_t since_ms =
      since
          ? std::chrono::duration_cast<std::chrono::milliseconds>(since->time_since_epoch()).count()
          : std::numeric_limits<int64_t>::min();
  std::lock_guard lock(mutex_);
  auto select = db_->Prepare(
      "SELECT id, time_ms, caller_key_id, peer, rpc, request, code, message, detail "
      "FROM audit_events WHERE time_ms >= ? ORDER BY id DESC LIMIT ?",
      "reading the audit log");
  if (!select.ok()) return select.status();
  sqlite3_stmt* statement = select->get();
  sqlite3_bind_int64(statement, 1, since_ms);
  sqlite3_bind_int64(statement, 2, limit);
  std::vector<inferbox::v1::AuditEvent> events;
  int step = SQLITE_ROW;
  while ((step = sqlite3_step(statement)) == SQLITE_ROW) {
    inferbox::v1::AuditEvent& event = events.emplace_back();
    event.set_id(static_cast<uint64_t>(sqlite3_column_int64(statement, 0)));
    *event.mutable_time() = TimeUtil::MillisecondsToTimestamp(sqlite3_column_int64(statement, 1));
    event.set_caller_key_id(std::string(ColumnText(statement, 2)));
    event.set_peer(std::string(ColumnText(statement, 3)));
    event.set_rpc(std::string(ColumnText(statement, 4)));
    event.set_request(std::string(ColumnText(statement, 5)));
    event.set_code(std::string(ColumnText(statement, 6)));
    event.set_message(std::string(ColumnText(statement, 7)));
    event.set_detail(std::string(ColumnText(statement, 8)));
  }
  if (step != SQLITE_DONE) return db_->Error("reading the audit log");
  return events;
}

}  // namespace inferbox::admin
