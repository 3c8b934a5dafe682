// The box's embedded database (state_dir/inferbox.db), as each component opens it: one
// SQLite connection per component (API keys, usage ledger, audit log), all in WAL mode so
// that they share the file, each with its tables versioned in the shared table
// schema_versions (one row per component). Kept out of inferbox_common (library
// inferbox_sqlite) so that what does not use SQLite does not link it.
#pragma once

#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "inferbox/common/status.h"

struct sqlite3;
struct sqlite3_stmt;

namespace inferbox::sqlite {

struct StatementFinalizer {
  void operator()(sqlite3_stmt* statement) const;
};
using Statement = std::unique_ptr<sqlite3_stmt, StatementFinalizer>;

// How each commit reaches the disk. kFull survives a power cut; kNormal (in WAL mode)
// survives a crash of the process, and may lose the last commits to a power cut.
enum class Durability { kFull, kNormal };

// One connection. Not thread-safe: its owner guards it with a mutex of its own.
class Database {
 public:
  // Opens (creating it with mode 0600 if missing) the file at `path`, whose directory must
  // exist; tightens a looser mode (the file holds key hashes and usage); switches to WAL.
  // `description` names the file in messages, e.g. "key database".
  static Result<std::unique_ptr<Database>> Open(const std::filesystem::path& path,
                                                std::string_view description,
                                                Durability durability);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  // Brings `component`'s tables from the version schema_versions records to
  // migrations.size(): migrations[i] takes version i to i + 1, all in one transaction.
  // FAILED_PRECONDITION when the file has a newer version than `migrations` knows.
  Status Migrate(std::string_view component, std::span<const std::string_view> migrations);

  // A prepared statement, or the error (naming `what`) when `sql` does not compile.
  Result<Statement> Prepare(std::string_view sql, std::string_view what);
  // Runs SQL without results ("BEGIN", "COMMIT", ...).
  Status Execute(const char* sql, std::string_view what);
  // The connection's last error as a Status naming the file and `what` was being done:
  // UNAVAILABLE for what the environment causes (busy, full, I/O, permissions), else
  // INTERNAL.
  Status Error(std::string_view what) const;

  sqlite3* get() const { return db_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  Database(sqlite3* db, std::filesystem::path path, std::string description);

  sqlite3* const db_;
  const std::filesystem::path path_;
  const std::string description_;
};

// Binds a copy of `text` to parameter `index` (1-based); false on failure.
bool BindText(sqlite3_stmt* statement, int index, std::string_view text);
// A text column as a view valid until the next step or reset; empty for NULL.
std::string_view ColumnText(sqlite3_stmt* statement, int column);

}  // namespace inferbox::sqlite
