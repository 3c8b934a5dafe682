#include "inferbox/daemon/key_store.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <optional>
#include <set>

#include <fmt/format.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>

#include "inferbox/common/model_id.h"
#include "inferbox/common/sqlite.h"

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

using sqlite::BindText;
using sqlite::ColumnText;

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
      return InvalidArgumentError(
          fmt::format("\"{}\" is not a model id ({})", model.substr(0, 80), kModelIdPattern));
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

Status NotAKeyId() {
  return InvalidArgumentError(fmt::format(
      "not a key id: an id is {} followed by {} characters, as `inferboxctl keys list` shows "
      "(the part of the key before the dot, never the secret)",
      kKeyIdPrefix, kIdRandomChars));
}

Result<std::string> LimitsJson(const inferbox::v1::KeyLimits& limits) {
  google::protobuf::util::JsonPrintOptions json_options;
  json_options.preserve_proto_field_names = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(limits, &json, json_options).ok()) {
    return InternalError("cannot serialize key limits");
  }
  return json;
}

// A row of "SELECT id, name, role, limits, created_at_ms, revoked_at_ms FROM api_keys".
Result<inferbox::v1::KeyInfo> ReadKeyInfo(sqlite3_stmt* row, const sqlite::Database& db) {
  inferbox::v1::KeyInfo info;
  info.set_id(std::string(ColumnText(row, 0)));
  info.set_name(std::string(ColumnText(row, 1)));
  info.set_role(static_cast<inferbox::v1::KeyRole>(sqlite3_column_int(row, 2)));
  const std::string limits_json(ColumnText(row, 3));
  if (!google::protobuf::util::JsonStringToMessage(limits_json, info.mutable_limits()).ok()) {
    return InternalError(fmt::format("key database {}: key {} has unreadable limits",
                                     db.path().string(), info.id()));
  }
  *info.mutable_created_at() =
      google::protobuf::util::TimeUtil::MillisecondsToTimestamp(sqlite3_column_int64(row, 4));
  if (sqlite3_column_type(row, 5) != SQLITE_NULL) {
    *info.mutable_revoked_at() =
        google::protobuf::util::TimeUtil::MillisecondsToTimestamp(sqlite3_column_int64(row, 5));
  }
  return info;
}

}  // namespace

KeyStore::KeyStore(std::unique_ptr<sqlite::Database> db, bool require_keys, Clock clock)
    : clock_(clock ? std::move(clock) : Clock([] { return std::chrono::system_clock::now(); })),
      require_keys_(require_keys),
      db_(std::move(db)) {}

KeyStore::~KeyStore() = default;

Result<std::unique_ptr<KeyStore>> KeyStore::Open(const std::filesystem::path& database,
                                                 bool require_keys, Clock clock) {
  // Key changes are rare and must survive a power cut: every commit is synced.
  auto db = sqlite::Database::Open(database, "key database", sqlite::Durability::kFull);
  if (!db.ok()) return db.status();
  if (Status migrated = (*db)->Migrate(kSchemaComponent, kMigrations); !migrated.ok())
    return migrated;
  std::unique_ptr<KeyStore> store(
      new KeyStore(std::move(db).value(), require_keys, std::move(clock)));
  if (Status loaded = store->LoadCache(); !loaded.ok()) return loaded;
  return store;
}

Status KeyStore::LoadCache() {
  std::map<std::string, CachedKey, std::less<>> loaded;
  {
    std::lock_guard lock(db_mutex_);
    auto prepared = db_->Prepare(
        "SELECT id, role, secret_sha256, limits, revoked_at_ms IS NOT NULL FROM api_keys",
        "reading the keys");
    if (!prepared.ok()) return prepared.status();
    sqlite::Statement select = std::move(prepared).value();
    int step = SQLITE_ROW;
    while ((step = sqlite3_step(select.get())) == SQLITE_ROW) {
      const std::string id(ColumnText(select.get(), 0));
      CachedKey key;
      key.role = static_cast<inferbox::v1::KeyRole>(sqlite3_column_int(select.get(), 1));
      if (sqlite3_column_bytes(select.get(), 2) != static_cast<int>(key.secret_sha256.size())) {
        return InternalError(fmt::format("key database {}: key {} has a damaged secret hash",
                                         db_->path().string(), id));
      }
      std::memcpy(key.secret_sha256.data(), sqlite3_column_blob(select.get(), 2),
                  key.secret_sha256.size());
      inferbox::v1::KeyLimits limits;
      const std::string limits_json(ColumnText(select.get(), 3));
      if (!google::protobuf::util::JsonStringToMessage(limits_json, &limits).ok()) {
        return InternalError(
            fmt::format("key database {}: key {} has unreadable limits", db_->path().string(), id));
      }
      key.SetLimits(limits);
      key.revoked = sqlite3_column_int(select.get(), 4) != 0;
      loaded.emplace(id, std::move(key));
    }
    if (step != SQLITE_DONE) return db_->Error("reading the keys");
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

  auto limits_json = LimitsJson(limits);
  if (!limits_json.ok()) return limits_json.status();
  auto secret = NewSecret();
  if (!secret.ok()) return secret.status();
  const Sha256 secret_sha256 = HashSecret(*secret);
  const int64_t created_at_ms = ToMillis(clock_());

  std::string id;
  {
    std::lock_guard lock(db_mutex_);
    auto prepared = db_->Prepare(
        "INSERT INTO api_keys (id, name, role, secret_sha256, limits, created_at_ms) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        "adding a key");
    if (!prepared.ok()) return prepared.status();
    sqlite::Statement insert = std::move(prepared).value();
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
      BindText(insert.get(), 5, *limits_json);
      sqlite3_bind_int64(insert.get(), 6, created_at_ms);
      const int step = sqlite3_step(insert.get());
      if (step == SQLITE_DONE) break;
      const bool id_taken = sqlite3_extended_errcode(db_->get()) == SQLITE_CONSTRAINT_PRIMARYKEY;
      if (!id_taken || attempt + 1 == kCreateAttempts) return db_->Error("adding a key");
    }
  }
  {
    CachedKey cached;
    cached.secret_sha256 = secret_sha256;
    cached.role = *normalized_role;
    cached.SetLimits(limits);
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
  const char* sql = include_revoked
                        ? "SELECT id, name, role, limits, created_at_ms, revoked_at_ms "
                          "FROM api_keys ORDER BY created_at_ms, id"
                        : "SELECT id, name, role, limits, created_at_ms, revoked_at_ms "
                          "FROM api_keys WHERE revoked_at_ms IS NULL ORDER BY created_at_ms, id";
  auto prepared = db_->Prepare(sql, "listing the keys");
  if (!prepared.ok()) return prepared.status();
  sqlite::Statement select = std::move(prepared).value();
  std::vector<inferbox::v1::KeyInfo> keys;
  int step = SQLITE_ROW;
  while ((step = sqlite3_step(select.get())) == SQLITE_ROW) {
    auto info = ReadKeyInfo(select.get(), *db_);
    if (!info.ok()) return info.status();
    keys.push_back(std::move(info).value());
  }
  if (step != SQLITE_DONE) return db_->Error("listing the keys");
  return keys;
}

Status KeyStore::Revoke(std::string_view id) {
  if (!IsKeyId(id)) return NotAKeyId();
  {
    std::lock_guard lock(db_mutex_);
    auto prepared =
        db_->Prepare("UPDATE api_keys SET revoked_at_ms = ? WHERE id = ? AND revoked_at_ms IS NULL",
                     "revoking a key");
    if (!prepared.ok()) return prepared.status();
    sqlite::Statement update = std::move(prepared).value();
    sqlite3_bind_int64(update.get(), 1, ToMillis(clock_()));
    BindText(update.get(), 2, id);
    if (sqlite3_step(update.get()) != SQLITE_DONE) return db_->Error("revoking a key");
    if (sqlite3_changes(db_->get()) == 0) {
      auto lookup = db_->Prepare("SELECT 1 FROM api_keys WHERE id = ?", "looking up a key");
      if (!lookup.ok()) return lookup.status();
      sqlite::Statement select = std::move(lookup).value();
      BindText(select.get(), 1, id);
      const int step = sqlite3_step(select.get());
      if (step == SQLITE_DONE) return NotFoundError(fmt::format("no API key with id {}", id));
      if (step != SQLITE_ROW) return db_->Error("looking up a key");
      // Already revoked: nothing changes, the first revocation time stands.
    }
  }
  std::unique_lock lock(cache_mutex_);
  if (auto found = cache_.find(id); found != cache_.end()) found->second.revoked = true;
  return Status::Ok();
}

Result<inferbox::v1::KeyInfo> KeyStore::Update(const inferbox::v1::UpdateKeyRequest& request) {
  if (!IsKeyId(request.id())) return NotAKeyId();
  if (request.has_name()) {
    if (Status valid = ValidateName(request.name()); !valid.ok()) return valid;
  }
  std::optional<inferbox::v1::KeyRole> role;
  if (request.role() != inferbox::v1::KEY_ROLE_UNSPECIFIED) {
    auto normalized = NormalizeRole(request.role());
    if (!normalized.ok()) return normalized.status();
    role = *normalized;
  }
  std::optional<std::string> limits_json;
  if (request.has_limits()) {
    if (Status valid = ValidateLimits(request.limits()); !valid.ok()) return valid;
    auto json = LimitsJson(request.limits());
    if (!json.ok()) return json.status();
    limits_json = std::move(json).value();
  }

  inferbox::v1::KeyInfo info;
  {
    std::lock_guard lock(db_mutex_);
    // NULL keeps a column: COALESCE takes the stored value.
    auto prepared = db_->Prepare(
        "UPDATE api_keys SET name = COALESCE(?, name), role = COALESCE(?, role), "
        "limits = COALESCE(?, limits) WHERE id = ? AND revoked_at_ms IS NULL",
        "updating a key");
    if (!prepared.ok()) return prepared.status();
    sqlite::Statement update = std::move(prepared).value();
    if (request.has_name()) BindText(update.get(), 1, request.name());
    if (role) sqlite3_bind_int(update.get(), 2, *role);
    if (limits_json) BindText(update.get(), 3, *limits_json);
    BindText(update.get(), 4, request.id());
    if (sqlite3_step(update.get()) != SQLITE_DONE) return db_->Error("updating a key");
    const bool updated = sqlite3_changes(db_->get()) > 0;

    auto lookup = db_->Prepare(
        "SELECT id, name, role, limits, created_at_ms, revoked_at_ms FROM api_keys WHERE id = ?",
        "looking up a key");
    if (!lookup.ok()) return lookup.status();
    sqlite::Statement select = std::move(lookup).value();
    BindText(select.get(), 1, request.id());
    const int step = sqlite3_step(select.get());
    if (step == SQLITE_DONE)
      return NotFoundError(fmt::format("no API key with id {}", request.id()));
    if (step != SQLITE_ROW) return db_->Error("looking up a key");
    if (!updated) {
      return FailedPreconditionError(fmt::format(
          "API key {} is revoked and cannot change; create a new key instead", request.id()));
    }
    auto read = ReadKeyInfo(select.get(), *db_);
    if (!read.ok()) return read.status();
    info = std::move(read).value();
    // Still under db_mutex_: two updates reach the cache in the order they reached the file.
    std::unique_lock cache_lock(cache_mutex_);
    if (auto found = cache_.find(request.id()); found != cache_.end()) {
      found->second.role = info.role();
      found->second.SetLimits(info.limits());
    }
  }
  return info;
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
  const CachedKey& key = found->second;
  return Caller{.key_id = std::string(id),
                .role = key.role,
                .models = key.models,
                .tokens_per_minute = key.tokens_per_minute,
                .tokens_per_day = key.tokens_per_day,
                .max_concurrent_requests = key.max_concurrent_requests};
}

}  // namespace inferbox::daemon
