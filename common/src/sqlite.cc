#include "inferbox/common/sqlite.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>

namespace inferbox::sqlite {
namespace {

constexpr int kBusyTimeoutMs = 5000;

// Creates the file with mode 0600 if missing, tightens a looser mode, refuses non-files.
// SQLite gives its -wal and -shm files the database file's mode.
Status PrepareDatabaseFile(const std::filesystem::path& path, std::string_view description) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    const int error = errno;
    return {error == ENOENT ? StatusCode::kFailedPrecondition : StatusCode::kUnavailable,
            fmt::format("cannot open {} {}: {}", description, path.string(), std::strerror(error))};
  }
  struct stat info {};
  Status status;
  if (::fstat(fd, &info) != 0) {
    status = UnavailableError(
        fmt::format("cannot stat {} {}: {}", description, path.string(), std::strerror(errno)));
  } else if (!S_ISREG(info.st_mode)) {
    status = FailedPreconditionError(
        fmt::format("{} {} is not a regular file", description, path.string()));
  } else if ((info.st_mode & 0077) != 0) {
    if (::fchmod(fd, 0600) != 0) {
      status = FailedPreconditionError(
          fmt::format("{} {} has mode {:o} and cannot be made 0600: {}", description, path.string(),
                      info.st_mode & 0777, std::strerror(errno)));
    } else {
      spdlog::warn("{} {} had mode {:o}; set it to 0600", description, path.string(),
                   info.st_mode & 0777);
    }
  }
  ::close(fd);
  if (!status.ok()) return status;
  for (const char* suffix : {"-wal", "-shm"}) {
    const std::string side = path.string() + suffix;
    const int side_fd = ::open(side.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (side_fd < 0) continue;
    if (::fstat(side_fd, &info) == 0 && S_ISREG(info.st_mode) && (info.st_mode & 0077) != 0) {
      if (::fchmod(side_fd, 0600) != 0) {
        spdlog::warn("cannot set {} to mode 0600: {}", side, std::strerror(errno));
      }
    }
    ::close(side_fd);
  }
  return Status::Ok();
}

}  // namespace

void StatementFinalizer::operator()(sqlite3_stmt* statement) const {
  sqlite3_finalize(statement);
}

bool BindText(sqlite3_stmt* statement, int index, std::string_view text) {
  return sqlite3_bind_text(statement, index, text.data(), static_cast<int>(text.size()),
                           SQLITE_TRANSIENT) == SQLITE_OK;
}

std::string_view ColumnText(sqlite3_stmt* statement, int column) {
  const auto* text = sqlite3_column_text(statement, column);
  if (text == nullptr) return {};
  return {reinterpret_cast<const char*>(text),
          static_cast<size_t>(sqlite3_column_bytes(statement, column))};
}

Database::Database(sqlite3* db, std::filesystem::path path, std::string description)
    : db_(db), path_(std::move(path)), description_(std::move(description)) {}

Database::~Database() {
  sqlite3_close_v2(db_);
}

Result<std::unique_ptr<Database>> Database::Open(const std::filesystem::path& path,
                                                 std::string_view description,
                                                 Durability durability) {
  if (Status prepared = PrepareDatabaseFile(path, description); !prepared.ok()) return prepared;

  sqlite3* raw = nullptr;
  const int opened = sqlite3_open_v2(
      path.c_str(), &raw,
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX | SQLITE_OPEN_NOFOLLOW,
      nullptr);
  if (opened != SQLITE_OK) {
    Status error =
        UnavailableError(fmt::format("cannot open {} {}: {}", description, path.string(),
                                     raw != nullptr ? sqlite3_errmsg(raw) : "no memory"));
    sqlite3_close_v2(raw);
    return error;
  }
  std::unique_ptr<Database> database(new Database(raw, path, std::string(description)));
  sqlite3_busy_timeout(raw, kBusyTimeoutMs);

  // WAL lets the components' connections (and their readers) share the file.
  auto journal = database->Prepare("PRAGMA journal_mode=WAL", "setting journal_mode=WAL");
  if (!journal.ok()) return journal.status();
  if (sqlite3_step(journal->get()) != SQLITE_ROW || ColumnText(journal->get(), 0) != "wal") {
    return UnavailableError(fmt::format(
        "{} {}: cannot switch to WAL journal mode (is the file on a network filesystem?)",
        description, path.string()));
  }
  journal->reset();
  const char* synchronous =
      durability == Durability::kFull ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL";
  for (const char* pragma : {synchronous, "PRAGMA trusted_schema=OFF"}) {
    if (Status set = database->Execute(pragma, pragma); !set.ok()) return set;
  }
  return database;
}

Status Database::Error(std::string_view what) const {
  const int primary = sqlite3_errcode(db_) & 0xff;
  const bool environmental = primary == SQLITE_BUSY || primary == SQLITE_LOCKED ||
                             primary == SQLITE_FULL || primary == SQLITE_IOERR ||
                             primary == SQLITE_READONLY || primary == SQLITE_CANTOPEN ||
                             primary == SQLITE_PERM;
  return {environmental ? StatusCode::kUnavailable : StatusCode::kInternal,
          fmt::format("{} {}: {}: {}", description_, path_.string(), what, sqlite3_errmsg(db_))};
}

Result<Statement> Database::Prepare(std::string_view sql, std::string_view what) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db_, sql.data(), static_cast<int>(sql.size()), &raw, nullptr) !=
      SQLITE_OK) {
    return Error(what);
  }
  return Statement(raw);
}

Status Database::Execute(const char* sql, std::string_view what) {
  if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) return Error(what);
  return Status::Ok();
}

Status Database::Migrate(std::string_view component, std::span<const std::string_view> migrations) {
  // IMMEDIATE: two processes opening a fresh file at once must not both create the tables.
  if (Status begun = Execute("BEGIN IMMEDIATE", "starting the schema migration"); !begun.ok())
    return begun;
  auto rollback = [&](Status status) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return status;
  };
  if (Status created = Execute("CREATE TABLE IF NOT EXISTS schema_versions ("
                               "component TEXT PRIMARY KEY NOT NULL, version INTEGER NOT NULL) "
                               "STRICT",
                               "creating schema_versions");
      !created.ok()) {
    return rollback(created);
  }
  int64_t version = 0;
  {
    auto select = Prepare("SELECT version FROM schema_versions WHERE component = ?",
                          "reading the schema version");
    if (!select.ok()) return rollback(select.status());
    BindText(select->get(), 1, component);
    const int step = sqlite3_step(select->get());
    if (step == SQLITE_ROW) {
      version = sqlite3_column_int64(select->get(), 0);
    } else if (step != SQLITE_DONE) {
      return rollback(Error("reading the schema version"));
    }
  }
  const auto latest = static_cast<int64_t>(migrations.size());
  if (version > latest) {
    return rollback(FailedPreconditionError(fmt::format(
        "{} {} has {} schema version {}, newer than this inferboxd knows ({}); it was written "
        "by a newer release, and downgrades are not supported",
        description_, path_.string(), component, version, latest)));
  }
  if (version == latest) {
    sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr);
    return Status::Ok();
  }
  for (int64_t step = version; step < latest; ++step) {
    const std::string sql(migrations[static_cast<size_t>(step)]);
    if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
      return rollback(Error(
          fmt::format("migrating {} from schema version {} to {}", component, step, step + 1)));
    }
  }
  {
    auto upsert = Prepare(
        "INSERT INTO schema_versions (component, version) VALUES (?, ?) "
        "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
        "recording the schema version");
    if (!upsert.ok()) return rollback(upsert.status());
    BindText(upsert->get(), 1, component);
    sqlite3_bind_int64(upsert->get(), 2, latest);
    if (sqlite3_step(upsert->get()) != SQLITE_DONE) {
      return rollback(Error("recording the schema version"));
    }
  }
  if (Status committed = Execute("COMMIT", "committing the schema migration"); !committed.ok())
    return rollback(committed);
  if (version != 0) {
    spdlog::info("{} {}: {} schema migrated from version {} to {}", description_, path_.string(),
                 component, version, latest);
  }
  return Status::Ok();
}

}  // namespace inferbox::sqlite
