// API keys: created, listed, updated and revoked through the Admin service, checked on every
// request.
//
// A key is the bearer token "ibx_<12 chars>.<43 chars>". The part before the dot is the
// key's public id (KeyInfo.id, Caller.key_id): 12 random base32 characters after "ibx_",
// safe to log and to show. The part after it is the secret: 32 random bytes (OpenSSL
// RAND_bytes), base64url without padding. The database keeps only SHA-256 of the secret,
// so the token is shown once, at creation, and cannot be recovered later.
//
// Keys live in the box's SQLite database (state_dir/inferbox.db, shared with other
// components): table api_keys, versioned in the shared table schema_versions (component
// "api_keys"). Every key is also held in memory for Authenticate; keys are few. Changes
// made through this object take effect at once; changes made by another process to the
// same file are seen after the next Open.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/daemon/frontend.h"
#include "inferbox/v1/admin.pb.h"

namespace inferbox::sqlite {
class Database;
}  // namespace inferbox::sqlite

namespace inferbox::daemon {

// Every token starts with this; what follows up to the dot is random.
inline constexpr std::string_view kKeyIdPrefix = "ibx_";

// Thread-safe: every method may be called from any thread.
class KeyStore final : public Authenticator {
 public:
  // Injectable for tests; unset: the system clock.
  using Clock = std::function<std::chrono::system_clock::time_point()>;

  // Opens (creating it with mode 0600 if missing) the SQLite database at `database`, whose
  // directory must exist, and brings the api_keys schema up to date. An existing file with
  // a looser mode is tightened to 0600: it holds the key hashes. `require_keys` false is a
  // keyless box (loopback only, see R6.9): callers without a key are let in, as admins.
  static Result<std::unique_ptr<KeyStore>> Open(const std::filesystem::path& database,
                                                bool require_keys, Clock clock = {});
  ~KeyStore() override;
  KeyStore(const KeyStore&) = delete;
  KeyStore& operator=(const KeyStore&) = delete;

  // Creates a key; the response's `secret` is the whole bearer token, the only copy.
  // INVALID_ARGUMENT when `name` is empty, longer than 128 bytes or holds control
  // characters, when `role` is not a KeyRole (UNSPECIFIED means INFERENCE), or when a
  // model in `limits` is not a model id ([a-z0-9][a-z0-9._-]{0,63}) or is listed twice.
  Result<inferbox::v1::CreateKeyResponse> Create(std::string_view name, inferbox::v1::KeyRole role,
                                                 const inferbox::v1::KeyLimits& limits);

  // Keys in creation order; revoked ones only with `include_revoked`.
  Result<std::vector<inferbox::v1::KeyInfo>> List(bool include_revoked) const;

  // Revokes a key by id; every later Authenticate with it fails. Idempotent: revoking a
  // revoked key succeeds and keeps the first revocation time. NOT_FOUND for an unknown id,
  // INVALID_ARGUMENT for something that is not an id (the input is not echoed: it might be
  // a whole token).
  Status Revoke(std::string_view id);

  // Changes a valid key's name, role and/or limits (the fields `request` sets; `limits`
  // replaces them all) and returns the key as it now is. Its secret and id stay, and its
  // next request sees the change. Validation as Create's; NOT_FOUND for an unknown id,
  // FAILED_PRECONDITION for a revoked key.
  Result<inferbox::v1::KeyInfo> Update(const inferbox::v1::UpdateKeyRequest& request);

  // Accepts "Bearer <token>" (scheme in any case, surrounding blanks ignored). Without a
  // header: an anonymous caller with role ADMIN when keys are not required (the keyless
  // box serves loopback only and has no one to tell apart), else UNAUTHENTICATED. A valid
  // key identifies its caller either way; an invalid one is UNAUTHENTICATED when keys are
  // required and ignored (anonymous) when not, as OpenAI SDKs always send some key.
  // Messages never contain the secret.
  Result<Caller> Authenticate(std::string_view authorization) const override;

  // For configuration reloads.
  void set_require_keys(bool require_keys) { require_keys_.store(require_keys); }
  bool require_keys() const { return require_keys_.load(); }

 private:
  // Checks a non-empty Authorization value against the stored keys.
  Result<Caller> Verify(std::string_view header) const;

  struct CachedKey {
    std::array<unsigned char, 32> secret_sha256{};
    inferbox::v1::KeyRole role = inferbox::v1::KEY_ROLE_INFERENCE;
    std::vector<std::string> models;
    uint64_t tokens_per_minute = 0;
    uint64_t tokens_per_day = 0;
    uint32_t max_concurrent_requests = 0;
    bool revoked = false;

    void SetLimits(const inferbox::v1::KeyLimits& limits) {
      models.assign(limits.models().begin(), limits.models().end());
      tokens_per_minute = limits.tokens_per_minute();
      tokens_per_day = limits.tokens_per_day();
      max_concurrent_requests = limits.max_concurrent_requests();
    }
  };

  KeyStore(std::unique_ptr<sqlite::Database> db, bool require_keys, Clock clock);
  Status LoadCache();

  const Clock clock_;
  std::atomic<bool> require_keys_;

  mutable std::mutex db_mutex_;
  std::unique_ptr<sqlite::Database> db_;  // Guarded by db_mutex_.

  mutable std::shared_mutex cache_mutex_;
  std::map<std::string, CachedKey, std::less<>> cache_;  // By id. Guarded by cache_mutex_.
};

}  // namespace inferbox::daemon
