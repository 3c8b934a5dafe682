#include "inferbox/daemon/key_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <set>

#include <fmt/format.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>

namespace inferbox::daemon {
namespace {

using Sha256 = std::array<unsigned char, 32>;

// RFC 4648 base32, lower case: 256 is a multiple of 32, so byte % 32 is uniform.
constexpr std::string_view kIdAlphabet = "abcdefghijklmnopqrstuvwxyz234567";
constexpr size_t kIdRandomChars = 12;
constexpr size_t kIdChars = 4 + kIdRandomChars;  // kKeyIdPrefix + random part.
constexpr size_t kSecretBytes = 32;
constexpr size_t kSecretChars = 43;  // base64url of 32 bytes, no padding.
constexpr size_t kMaxNameBytes = 128;
constexpr int kMaxModels = 256;
constexpr int kBusyTimeoutMs = 5000;
constexpr int kCreateAttempts = 4;  // Id collisions (60 random bits) are astronomically rare.

constexpr std::string_view kTokenShape = "ibx_<12 characters>.<43 characters>";

// Index i takes the api_keys schema from version i to version i + 1. Append only: a
// released step never changes, a new one is added after it.
constexpr std::array<std::string_view, 1> kMigrations = {
    R"sql(
CREATE TABLE api_keys (
  id TEXT PRIMARY KEY NOT NULL,   -- "ibx_" + 12 base32 characters; public.
  name TEXT NOT NULL,
  role INTEGER NOT NULL,          -- inferbox.v1.KeyRole.
  secret_sha256 BLOB NOT NULL,    -- SHA-256 of the token's secret part (after the dot).
  limits TEXT NOT NULL,           -- inferbox.v1.KeyLimits as protobuf JSON.
  created_at_ms INTEGER NOT NULL, -- Unix time in milliseconds.
  revoked_at_ms INTEGER           -- NULL while the key is valid.
) STRICT;
)sql",
};
constexpr std::string_view kSchemaComponent = "api_keys";

struct StatementFinalizer {
  void operator()(sqlite3_stmt* statement) const { sqlite3_finalize(statement); }
};
using Statement = std::unique_ptr<sqlite3_stmt, StatementFinalizer>;

Status Unauthenticated(std::string message) {
  return {StatusCode::kUnauthenticated, std::move(message)};
}

std::string_view Trim(std::string_view text) {
  constexpr std::string_view kBlank = " \t";
  const auto first = text.find_first_not_of(kBlank);
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(kBlank);
  return text.substr(first, last - first + 1);
}

bool EqualsIgnoringCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

bool IsKeyId(std::string_view id) {
  if (id.size() != kIdChars || !id.starts_with(kKeyIdPrefix)) return false;
  return std::all_of(id.begin() + static_cast<std::ptrdiff_t>(kKeyIdPrefix.size()), id.end(),
                     [](char c) { return kIdAlphabet.find(c) != std::string_view::npos; });
}

bool IsBase64Url(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
  });
}

// [a-z0-9][a-z0-9._-]{0,63}, as config.h's ModelServeConfig::name.
bool IsModelId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!alnum(id.front())) return false;
  return std::all_of(id.begin(), id.end(),
                     [&](char c) { return alnum(c) || c == '.' || c == '_' || c == '-'; });
}

Result<std::string> RandomBytes(size_t count) {
  std::string bytes(count, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(bytes.data()), static_cast<int>(count)) != 1) {
    return InternalError("cannot get random bytes from OpenSSL (RAND_bytes failed)");
  }
  return bytes;
}

Result<std::string> NewKeyId() {
  auto random = RandomBytes(kIdRandomChars);
  if (!random.ok()) return random.status();
  std::string id(kKeyIdPrefix);
  for (char byte : *random) id += kIdAlphabet[static_cast<unsigned char>(byte) % 32];
  return id;
}

Result<std::string> NewSecret() {
  auto random = RandomBytes(kSecretBytes);
  if (!random.ok()) return random.status();
  // EVP_EncodeBlock writes standard base64 with padding and a terminating NUL.
  std::array<unsigned char, 4 * ((kSecretBytes + 2) / 3) + 1> encoded{};
  const int length = EVP_EncodeBlock(
      encoded.data(), reinterpret_cast<const unsigned char*>(random->data()), kSecretBytes);
  std::string secret(reinterpret_cast<const char*>(encoded.data()), static_cast<size_t>(length));
  while (!secret.empty() && secret.back() == '=') secret.pop_back();
  for (char& c : secret) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  INFERBOX_CHECK(secret.size() == kSecretChars);
  return secret;
}

Sha256 HashSecret(std::string_view secret) {
  Sha256 digest{};
  unsigned int length = 0;
  const int done =
      EVP_Digest(secret.data(), secret.size(), digest.data(), &length, EVP_sha256(), nullptr);
  INFERBOX_CHECK(done == 1 && length == digest.size());
  return digest;
}

int64_t ToMillis(std::chrono::system_clock::time_point time) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(time.time_since_epoch()).count();
}

Status ValidateName(std::string_view name) {
  if (Trim(name).empty()) return InvalidArgumentError("a key needs a name (who or what it is for)");
  if (name.size() > kMaxNameBytes) {
    return InvalidArgumentError(fmt::format("key name is {} bytes long; at most {} are allowed",
                                            name.size(), kMaxNameBytes));
  }
  const bool has_control = std::any_of(name.begin(), name.end(), [](char c) {
    const auto byte = static_cast<unsigned char>(c);
    return byte < 0x20 || byte == 0x7f;
  });
  if (has_control) return InvalidArgumentError("key name must not contain control characters");
  return Status::Ok();
}

Status ValidateLimits(const inferbox::v1::KeyLimits& limits) {
  if (limits.models_size() > kMaxModels) {
    return InvalidArgumentError(
        fmt::format("a key may name at most {} models, not {}", kMaxModels, limits.models_size()));
  }
  std::set<std::string_view> seen;
  for (const std::string& model : limits.models()) {
    if (!IsModelId(model)) {
      return InvalidArgumentError(fmt::format(
          "\"{}\" is not a model id ([a-z0-9][a-z0-9._-]{{0,63}})", model.substr(0, 80)));
    }
    if (!seen.insert(model).second) {
      return InvalidArgumentError(fmt::format("model \"{}\" is listed twice", model));
    }
  }
  return Status::Ok();
}

Result<inferbox::v1::KeyRole> NormalizeRole(inferbox::v1::KeyRole role) {
  switch (role) {
    case inferbox::v1::KEY_ROLE_UNSPECIFIED: return inferbox::v1::KEY_ROLE_INFERENCE;
    case inferbox::v1::KEY_ROLE_INFERENCE:
    case inferbox::v1::KEY_ROLE_ADMIN: return role;
    default:
      return InvalidArgumentError(fmt::format(
          "unknown key role {}; use KEY_ROLE_INFERENCE or KEY_ROLE_ADMIN", static_cast<int>(role)));
  }
}

std::string_view ColumnText(sqlite3_stmt* statement, int column) {
  const auto* text = sqlite3_column_text(statement, column);
  if (text == nullptr) return {};
  return {reinterpret_cast<const char*>(text),
          static_cast<size_t>(sqlite3_column_bytes(statement, column))};
}

bool BindText(sqlite3_stmt* statement, int index, std::string_view text) {
  return sqlite3_bind_text(statement, index, text.data(), static_cast<int>(text.size()),
                           SQLITE_TRANSIENT) == SQLITE_OK;
}

// Creates the file with mode 0600 if missing, tightens a looser mode, refuses non-files.
// SQLite gives its -wal and -shm files the database file's mode.
Status PrepareDatabaseFile(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    const int error = errno;
    return {error == ENOENT ? StatusCode::kFailedPrecondition : StatusCode::kUnavailable,
            fmt::format("cannot open key database {}: {}", path.string(), std::strerror(error))};
  }
  struct stat info {};
  Status status;
  if (::fstat(fd, &info) != 0) {
    status = UnavailableError(
        fmt::format("cannot stat key database {}: {}", path.string(), std::strerror(errno)));
  } else if (!S_ISREG(info.st_mode)) {
    status = FailedPreconditionError(
        fmt::format("key database {} is not a regular file", path.string()));
  } else if ((info.st_mode & 0077) != 0) {
    if (::fchmod(fd, 0600) != 0) {
      status = FailedPreconditionError(
          fmt::format("key database {} has mode {:o} and cannot be made 0600: {}", path.string(),
                      info.st_mode & 0777, std::strerror(errno)));
    } else {
      spdlog::warn("key database {} had mode {:o}; set it to 0600", path.string(),
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

void KeyStore::SqliteCloser::operator()(sqlite3* db) const {
  sqlite3_close_v2(db);
}

KeyStore::KeyStore(std::filesystem::path path, std::unique_ptr<sqlite3, SqliteCloser> db,
                   bool require_keys, Clock clock)
    : path_(std::move(path)),
      clock_(clock ? std::move(clock) : Clock([] { return std::chrono::system_clock::now(); })),
      require_keys_(require_keys),
      db_(std::move(db)) {}

KeyStore::~KeyStore() = default;

Result<std::unique_ptr<KeyStore>> KeyStore::Open(const std::filesystem::path& database,
                                                 bool require_keys, Clock clock) {
  if (Status prepared = PrepareDatabaseFile(database); !prepared.ok()) return prepared;

  sqlite3* raw = nullptr;
  const int opened = sqlite3_open_v2(
      database.c_str(), &raw,
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX | SQLITE_OPEN_NOFOLLOW,
      nullptr);
  std::unique_ptr<sqlite3, SqliteCloser> db(raw);
  if (opened != SQLITE_OK) {
    return UnavailableError(fmt::format("cannot open key database {}: {}", database.string(),
                                        raw != nullptr ? sqlite3_errmsg(raw) : "out of memory"));
  }
  sqlite3_busy_timeout(db.get(), kBusyTimeoutMs);

  std::unique_ptr<KeyStore> store(
      new KeyStore(database, std::move(db), require_keys, std::move(clock)));
  {
    std::lock_guard lock(store->db_mutex_);
    // WAL lets the usage ledger's writers and readers share the file. Key changes are rare
    // and must survive a power cut, so this connection syncs every commit (FULL).
    Statement journal;
    {
      sqlite3_stmt* statement = nullptr;
      if (sqlite3_prepare_v2(store->db_.get(), "PRAGMA journal_mode=WAL", -1, &statement,
                             nullptr) != SQLITE_OK) {
        return store->DatabaseError("setting journal_mode=WAL");
      }
      journal.reset(statement);
    }
    if (sqlite3_step(journal.get()) != SQLITE_ROW || ColumnText(journal.get(), 0) != "wal") {
      return UnavailableError(fmt::format(
          "key database {}: cannot switch to WAL journal mode (is the file on a network "
          "filesystem?)",
          database.string()));
    }
    journal.reset();
    for (const char* pragma : {"PRAGMA synchronous=FULL", "PRAGMA trusted_schema=OFF"}) {
      if (sqlite3_exec(store->db_.get(), pragma, nullptr, nullptr, nullptr) != SQLITE_OK) {
        return store->DatabaseError(pragma);
      }
    }
    if (Status migrated = store->Migrate(); !migrated.ok()) return migrated;
  }
  if (Status loaded = store->LoadCache(); !loaded.ok()) return loaded;
  return store;
}

Status KeyStore::DatabaseError(std::string_view what) const {
  const int code = sqlite3_errcode(db_.get());
  const int primary = code & 0xff;
  const bool environmental = primary == SQLITE_BUSY || primary == SQLITE_LOCKED ||
                             primary == SQLITE_FULL || primary == SQLITE_IOERR ||
                             primary == SQLITE_READONLY || primary == SQLITE_CANTOPEN ||
                             primary == SQLITE_PERM;
  return {environmental ? StatusCode::kUnavailable : StatusCode::kInternal,
          fmt::format("key database {}: {}: {}", path_.string(), what, sqlite3_errmsg(db_.get()))};
}

Status KeyStore::Migrate() {
  sqlite3* db = db_.get();
  // IMMEDIATE: two processes opening a fresh file at once must not both create the tables.
  if (sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) != SQLITE_OK) {
    return DatabaseError("starting the schema migration");
  }
  auto rollback = [&](Status status) {
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    return status;
  };
  if (sqlite3_exec(db,
                   "CREATE TABLE IF NOT EXISTS schema_versions ("
                   "component TEXT PRIMARY KEY NOT NULL, version INTEGER NOT NULL) STRICT",
                   nullptr, nullptr, nullptr) != SQLITE_OK) {
    return rollback(DatabaseError("creating schema_versions"));
  }
  int64_t version = 0;
  {
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v2(db, "SELECT version FROM schema_versions WHERE component = ?", -1, &raw,
                           nullptr) != SQLITE_OK) {
      return rollback(DatabaseError("reading the schema version"));
    }
    Statement select(raw);
    BindText(select.get(), 1, kSchemaComponent);
    const int step = sqlite3_step(select.get());
    if (step == SQLITE_ROW) {
      version = sqlite3_column_int64(select.get(), 0);
    } else if (step != SQLITE_DONE) {
      return rollback(DatabaseError("reading the schema version"));
    }
  }
  const auto latest = static_cast<int64_t>(kMigrations.size());
  if (version > latest) {
    return rollback(FailedPreconditionError(fmt::format(
        "key database {} has api_keys schema version {}, newer than this inferboxd knows ({}); "
        "it was written by a newer release, and downgrades are not supported",
        path_.string(), version, latest)));
  }
  if (version == latest) {
    sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
    return Status::Ok();
  }
  for (int64_t step = version; step < latest; ++step) {
    const std::string sql(kMigrations[static_cast<size_t>(step)]);
    if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
      return rollback(DatabaseError(
          fmt::format("migrating api_keys from schema version {} to {}", step, step + 1)));
    }
  }
  {
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO schema_versions (component, version) VALUES (?, ?) "
                           "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                           -1, &raw, nullptr) != SQLITE_OK) {
      return rollback(DatabaseError("recording the schema version"));
    }
    Statement upsert(raw);
    BindText(upsert.get(), 1, kSchemaComponent);
    sqlite3_bind_int64(upsert.get(), 2, latest);
    if (sqlite3_step(upsert.get()) != SQLITE_DONE) {
      return rollback(DatabaseError("recording the schema version"));
    }
  }
  if (sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) {
    return rollback(DatabaseError("committing the schema migration"));
  }
  if (version != 0) {
    spdlog::info("key database {}: api_keys schema migrated from version {} to {}", path_.string(),
                 version, latest);
  }
  return Status::Ok();
}

Status KeyStore::LoadCache() {
  std::map<std::string, CachedKey, std::less<>> loaded;
  {
    std::lock_guard lock(db_mutex_);
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v2(db_.get(),
                           "SELECT id, role, secret_sha256, limits, revoked_at_ms IS NOT NULL "
                           "FROM api_keys",
                           -1, &raw, nullptr) != SQLITE_OK) {
      return DatabaseError("reading the keys");
    }
    Statement select(raw);
    int step = SQLITE_ROW;
    while ((step = sqlite3_step(select.get())) == SQLITE_ROW) {
      const std::string id(ColumnText(select.get(), 0));
      CachedKey key;
      key.role = static_cast<inferbox::v1::KeyRole>(sqlite3_column_int(select.get(), 1));
      if (sqlite3_column_bytes(select.get(), 2) != static_cast<int>(key.secret_sha256.size())) {
        return InternalError(
            fmt::format("key database {}: key {} has a damaged secret hash", path_.string(), id));
      }
      std::memcpy(key.secret_sha256.data(), sqlite3_column_blob(select.get(), 2),
                  key.secret_sha256.size());
      inferbox::v1::KeyLimits limits;
      const std::string limits_json(ColumnText(select.get(), 3));
      if (!google::protobuf::util::JsonStringToMessage(limits_json, &limits).ok()) {
        return InternalError(
            fmt::format("key database {}: key {} has unreadable limits", path_.string(), id));
      }
      key.models.assign(limits.models().begin(), limits.models().end());
      key.revoked = sqlite3_column_int(select.get(), 4) != 0;
      loaded.emplace(id, std::move(key));
    }
    if (step != SQLITE_DONE) return DatabaseError("reading the keys");
  }
  std::unique_lock lock(cache_mutex_);
  cache_ = std::move(loaded);
  return Status::Ok();
}

Result<inferbox::v1::CreateKeyResponse> KeyStore::Create(std::string_view name,
                                                         inferbox::v1::KeyRole role,
                                                         const inferbox::v1::KeyLimits& limits) {
  if (Status valid = ValidateName(name); !valid.ok()) return valid;
  auto normalized_role = NormalizeRole(role);
  if (!normalized_role.ok()) return normalized_role.status();
  if (Status valid = ValidateLimits(limits); !valid.ok()) return valid;

  google::protobuf::util::JsonPrintOptions json_options;
  json_options.preserve_proto_field_names = true;
  std::string limits_json;
  if (!google::protobuf::util::MessageToJsonString(limits, &limits_json, json_options).ok()) {
    return InternalError("cannot serialize key limits");
  }
  auto secret = NewSecret();
  if (!secret.ok()) return secret.status();
  const Sha256 secret_sha256 = HashSecret(*secret);
  const int64_t created_at_ms = ToMillis(clock_());

  std::string id;
  {
    std::lock_guard lock(db_mutex_);
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v2(db_.get(),
                           "INSERT INTO api_keys (id, name, role, secret_sha256, limits, "
                           "created_at_ms) VALUES (?, ?, ?, ?, ?, ?)",
                           -1, &raw, nullptr) != SQLITE_OK) {
      return DatabaseError("adding a key");
    }
    Statement insert(raw);
    for (int attempt = 0;; ++attempt) {
      auto candidate = NewKeyId();
      if (!candidate.ok()) return candidate.status();
      id = std::move(candidate).value();
      sqlite3_reset(insert.get());
      BindText(insert.get(), 1, id);
      BindText(insert.get(), 2, name);
      sqlite3_bind_int(insert.get(), 3, *normalized_role);
      sqlite3_bind_blob(insert.get(), 4, secret_sha256.data(),
                        static_cast<int>(secret_sha256.size()), SQLITE_TRANSIENT);
      BindText(insert.get(), 5, limits_json);
      sqlite3_bind_int64(insert.get(), 6, created_at_ms);
      const int step = sqlite3_step(insert.get());
      if (step == SQLITE_DONE) break;
      const bool id_taken = sqlite3_extended_errcode(db_.get()) == SQLITE_CONSTRAINT_PRIMARYKEY;
      if (!id_taken || attempt + 1 == kCreateAttempts) return DatabaseError("adding a key");
    }
  }
  {
    CachedKey cached;
    cached.secret_sha256 = secret_sha256;
    cached.role = *normalized_role;
    cached.models.assign(limits.models().begin(), limits.models().end());
    std::unique_lock lock(cache_mutex_);
    cache_.insert_or_assign(id, std::move(cached));
  }

  inferbox::v1::CreateKeyResponse response;
  inferbox::v1::KeyInfo& info = *response.mutable_key();
  info.set_id(id);
  info.set_name(std::string(name));
  info.set_role(*normalized_role);
  *info.mutable_limits() = limits;
  *info.mutable_created_at() =
      google::protobuf::util::TimeUtil::MillisecondsToTimestamp(created_at_ms);
  response.set_secret(fmt::format("{}.{}", id, *secret));
  return response;
}

Result<std::vector<inferbox::v1::KeyInfo>> KeyStore::List(bool include_revoked) const {
  std::lock_guard lock(db_mutex_);
  sqlite3_stmt* raw = nullptr;
  const char* sql = include_revoked
                        ? "SELECT id, name, role, limits, created_at_ms, revoked_at_ms "
                          "FROM api_keys ORDER BY created_at_ms, id"
                        : "SELECT id, name, role, limits, created_at_ms, revoked_at_ms "
                          "FROM api_keys WHERE revoked_at_ms IS NULL ORDER BY created_at_ms, id";
  if (sqlite3_prepare_v2(db_.get(), sql, -1, &raw, nullptr) != SQLITE_OK) {
    return DatabaseError("listing the keys");
  }
  Statement select(raw);
  std::vector<inferbox::v1::KeyInfo> keys;
  int step = SQLITE_ROW;
  while ((step = sqlite3_step(select.get())) == SQLITE_ROW) {
    inferbox::v1::KeyInfo& info = keys.emplace_back();
    info.set_id(std::string(ColumnText(select.get(), 0)));
    info.set_name(std::string(ColumnText(select.get(), 1)));
    info.set_role(static_cast<inferbox::v1::KeyRole>(sqlite3_column_int(select.get(), 2)));
    const std::string limits_json(ColumnText(select.get(), 3));
    if (!google::protobuf::util::JsonStringToMessage(limits_json, info.mutable_limits()).ok()) {
      return InternalError(
          fmt::format("key database {}: key {} has unreadable limits", path_.string(), info.id()));
    }
    *info.mutable_created_at() = google::protobuf::util::TimeUtil::MillisecondsToTimestamp(
        sqlite3_column_int64(select.get(), 4));
    if (sqlite3_column_type(select.get(), 5) != SQLITE_NULL) {
      *info.mutable_revoked_at() = google::protobuf::util::TimeUtil::MillisecondsToTimestamp(
          sqlite3_column_int64(select.get(), 5));
    }
  }
  if (step != SQLITE_DONE) return DatabaseError("listing the keys");
  return keys;
}

Status KeyStore::Revoke(std::string_view id) {
  if (!IsKeyId(id)) {
    return InvalidArgumentError(fmt::format(
        "not a key id: an id is {} followed by {} characters, as `inferboxctl keys list` shows "
        "(the part of the key before the dot, never the secret)",
        kKeyIdPrefix, kIdRandomChars));
  }
  {
    std::lock_guard lock(db_mutex_);
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v2(db_.get(),
                           "UPDATE api_keys SET revoked_at_ms = ? "
                           "WHERE id = ? AND revoked_at_ms IS NULL",
                           -1, &raw, nullptr) != SQLITE_OK) {
      return DatabaseError("revoking a key");
    }
    Statement update(raw);
    sqlite3_bind_int64(update.get(), 1, ToMillis(clock_()));
    BindText(update.get(), 2, id);
    if (sqlite3_step(update.get()) != SQLITE_DONE) return DatabaseError("revoking a key");
    if (sqlite3_changes(db_.get()) == 0) {
      raw = nullptr;
      if (sqlite3_prepare_v2(db_.get(), "SELECT 1 FROM api_keys WHERE id = ?", -1, &raw, nullptr) !=
          SQLITE_OK) {
        return DatabaseError("looking up a key");
      }
      Statement select(raw);
      BindText(select.get(), 1, id);
      const int step = sqlite3_step(select.get());
      if (step == SQLITE_DONE) return NotFoundError(fmt::format("no API key with id {}", id));
      if (step != SQLITE_ROW) return DatabaseError("looking up a key");
      // Already revoked: nothing changes, the first revocation time stands.
    }
  }
  std::unique_lock lock(cache_mutex_);
  if (auto found = cache_.find(id); found != cache_.end()) found->second.revoked = true;
  return Status::Ok();
}

Result<Caller> KeyStore::Authenticate(std::string_view authorization) const {
  const std::string_view header = Trim(authorization);
  const Caller anonymous{.key_id = "", .role = inferbox::v1::KEY_ROLE_ADMIN, .models = {}};
  if (header.empty()) {
    if (require_keys()) {
      return Unauthenticated("missing API key: send Authorization: Bearer <key>");
    }
    return anonymous;
  }
  Result<Caller> verified = Verify(header);
  if (verified.ok() || require_keys()) return verified;
  // A keyless box serves anyone who reaches it, so a key it does not know changes nothing:
  // OpenAI SDKs always send one ("EMPTY", "sk-...") and must work against it. A valid key
  // still identifies its caller.
  spdlog::debug("keys are not required: serving a request whose API key is not valid ({})",
                verified.status().message());
  return anonymous;
}

Result<Caller> KeyStore::Verify(std::string_view header) const {
  // Nothing from the header goes into a message unless it has been checked to be an id.
  const auto blank = header.find_first_of(" \t");
  const std::string_view scheme = header.substr(0, blank);
  if (blank == std::string_view::npos || !EqualsIgnoringCase(scheme, "Bearer")) {
    if (EqualsIgnoringCase(scheme, "Bearer")) {
      return Unauthenticated("malformed Authorization header: \"Bearer\" without a key");
    }
    if (header.starts_with(kKeyIdPrefix)) {
      return Unauthenticated(
          "malformed Authorization header: put \"Bearer \" before the key (Authorization: "
          "Bearer <key>)");
    }
    return Unauthenticated(
        "malformed Authorization header: expected \"Bearer <key>\" (no other scheme is "
        "accepted)");
  }
  const std::string_view token = Trim(header.substr(blank));
  const auto dot = token.find('.');
  if (dot == std::string_view::npos || !IsKeyId(token.substr(0, dot)) ||
      token.size() - dot - 1 != kSecretChars || !IsBase64Url(token.substr(dot + 1))) {
    return Unauthenticated(
        fmt::format("malformed API key: inferbox keys look like {}; check that it was copied whole",
                    kTokenShape));
  }
  const std::string_view id = token.substr(0, dot);
  const Sha256 presented = HashSecret(token.substr(dot + 1));

  std::shared_lock lock(cache_mutex_);
  const auto found = cache_.find(id);
  // Unknown id and wrong secret read the same: a leaked id alone tells nothing more.
  if (found == cache_.end() ||
      CRYPTO_memcmp(presented.data(), found->second.secret_sha256.data(), presented.size()) != 0) {
    return Unauthenticated(
        fmt::format("API key {} is not valid: no such key on this box, or a wrong secret", id));
  }
  if (found->second.revoked) {
    return Unauthenticated(fmt::format("API key {} has been revoked", id));
  }
  return Caller{
      .key_id = std::string(id), .role = found->second.role, .models = found->second.models};
}

}  // namespace inferbox::daemon
