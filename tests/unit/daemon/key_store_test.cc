#include "inferbox/daemon/key_store.h"

#include <sqlite3.h>
#include <sys/stat.h>

#include <atomic>
#include <fstream>
#include <iterator>
#include <set>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "temp_dir.h"

namespace inferbox::daemon {
namespace {

using inferbox::testing::TempDir;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;

// 2026-01-01T00:00:00Z, advanced by a second per reading.
struct FakeClock {
  std::chrono::system_clock::time_point now{std::chrono::seconds(1767225600)};
  KeyStore::Clock AsClock() {
    return [this] {
      now += std::chrono::seconds(1);
      return now;
    };
  }
};

std::unique_ptr<KeyStore> OpenOrDie(const std::filesystem::path& path, bool require_keys,
                                    KeyStore::Clock clock = {}) {
  auto store = KeyStore::Open(path, require_keys, std::move(clock));
  EXPECT_TRUE(store.ok()) << store.status().ToString();
  return store.ok() ? std::move(store).value() : nullptr;
}

inferbox::v1::CreateKeyResponse CreateOrDie(KeyStore& store, std::string_view name,
                                            inferbox::v1::KeyRole role,
                                            const inferbox::v1::KeyLimits& limits = {}) {
  auto created = store.Create(name, role, limits);
  EXPECT_TRUE(created.ok()) << created.status().ToString();
  return created.ok() ? std::move(created).value() : inferbox::v1::CreateKeyResponse();
}

std::string Bearer(const inferbox::v1::CreateKeyResponse& key) {
  return "Bearer " + key.secret();
}

// The part of the token after the dot: what must never be stored or echoed.
std::string SecretPart(const inferbox::v1::CreateKeyResponse& key) {
  return key.secret().substr(key.secret().find('.') + 1);
}

std::string ReadBytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

mode_t ModeOf(const std::filesystem::path& path) {
  struct stat info {};
  EXPECT_EQ(::stat(path.c_str(), &info), 0) << path;
  return info.st_mode & 0777;
}

class KeyStoreTest : public ::testing::Test {
 protected:
  std::filesystem::path database() const { return dir_ / "inferbox.db"; }

  TempDir dir_;
  FakeClock clock_;
};

TEST_F(KeyStoreTest, CreatedKeyAuthenticatesWithItsRoleAndModels) {
  auto store = OpenOrDie(database(), /*require_keys=*/true);
  ASSERT_NE(store, nullptr);
  inferbox::v1::KeyLimits limits;
  limits.add_models("qwen3-0.6b");
  limits.add_models("llama-3.1-8b");
  limits.set_tokens_per_minute(1000);
  const auto key = CreateOrDie(*store, "risk-team", inferbox::v1::KEY_ROLE_INFERENCE, limits);

  EXPECT_THAT(key.secret(), MatchesRegex("ibx_[a-z2-7]{12}\\.[A-Za-z0-9_-]{43}"));
  EXPECT_EQ(key.secret().substr(0, key.secret().find('.')), key.key().id())
      << "the id is the part of the token before the dot";
  EXPECT_EQ(key.key().name(), "risk-team");
  EXPECT_EQ(key.key().limits().tokens_per_minute(), 1000u);
  EXPECT_FALSE(key.key().has_revoked_at());

  auto caller = store->Authenticate(Bearer(key));
  ASSERT_TRUE(caller.ok()) << caller.status().ToString();
  EXPECT_EQ(caller->key_id, key.key().id());
  EXPECT_EQ(caller->role, inferbox::v1::KEY_ROLE_INFERENCE);
  EXPECT_THAT(caller->models, ::testing::ElementsAre("qwen3-0.6b", "llama-3.1-8b"));
}

TEST_F(KeyStoreTest, SchemeIsCaseInsensitiveAndBlanksAroundAreIgnored) {
  auto store = OpenOrDie(database(), true);
  const auto key = CreateOrDie(*store, "ops", inferbox::v1::KEY_ROLE_ADMIN);
  for (const std::string& header :
       {"Bearer " + key.secret(), "bearer " + key.secret(), "BEARER\t" + key.secret(),
        "  Bearer   " + key.secret() + "  "}) {
    auto caller = store->Authenticate(header);
    ASSERT_TRUE(caller.ok()) << "expected \"" << header
                             << "\" to be accepted: " << caller.status().ToString();
    EXPECT_EQ(caller->role, inferbox::v1::KEY_ROLE_ADMIN);
  }
}

TEST_F(KeyStoreTest, UnspecifiedRoleMeansInference) {
  auto store = OpenOrDie(database(), true);
  const auto key = CreateOrDie(*store, "default-role", inferbox::v1::KEY_ROLE_UNSPECIFIED);
  EXPECT_EQ(key.key().role(), inferbox::v1::KEY_ROLE_INFERENCE);
  auto caller = store->Authenticate(Bearer(key));
  ASSERT_TRUE(caller.ok()) << caller.status().ToString();
  EXPECT_EQ(caller->role, inferbox::v1::KEY_ROLE_INFERENCE);
}

TEST_F(KeyStoreTest, InvalidCreateRequestsAreRefusedWithTheReason) {
  auto store = OpenOrDie(database(), true);
  struct Case {
    std::string name;
    int role;
    std::vector<std::string> models;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"", 1, {}, "needs a name"},
      {"   ", 1, {}, "needs a name"},
      {std::string(129, 'n'), 1, {}, "at most 128"},
      {"tab\there", 1, {}, "control characters"},
      {"role", 7, {}, "unknown key role 7"},
      {"models", 1, {"Qwen/Qwen3"}, "\"Qwen/Qwen3\" is not a model id"},
      {"models", 1, {""}, "is not a model id"},
      {"models", 1, {"a", "b", "a"}, "model \"a\" is listed twice"},
  };
  for (const auto& c : cases) {
    inferbox::v1::KeyLimits limits;
    for (const auto& model : c.models) limits.add_models(model);
    auto created = store->Create(c.name, static_cast<inferbox::v1::KeyRole>(c.role), limits);
    ASSERT_FALSE(created.ok()) << "expected name \"" << c.name << "\" role " << c.role
                               << " to be refused";
    EXPECT_EQ(created.status().code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(created.status().message(), HasSubstr(c.expected));
  }
  auto listed = store->List(true);
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->empty()) << "a refused key must not be stored";
  EXPECT_TRUE(store->Create(std::string(128, 'n'), inferbox::v1::KEY_ROLE_ADMIN, {}).ok())
      << "128 bytes is the longest name allowed";
}

TEST_F(KeyStoreTest, ListsKeysInCreationOrderWithTimesAndRevokedOnlyOnRequest) {
  auto store = OpenOrDie(database(), true, clock_.AsClock());
  const auto first = CreateOrDie(*store, "first", inferbox::v1::KEY_ROLE_ADMIN);
  inferbox::v1::KeyLimits limits;
  limits.add_models("qwen3-0.6b");
  limits.set_tokens_per_day(50000);
  limits.set_max_concurrent_requests(4);
  const auto second = CreateOrDie(*store, "second", inferbox::v1::KEY_ROLE_INFERENCE, limits);
  ASSERT_TRUE(store->Revoke(first.key().id()).ok());

  auto valid = store->List(/*include_revoked=*/false);
  ASSERT_TRUE(valid.ok()) << valid.status().ToString();
  ASSERT_EQ(valid->size(), 1u);
  EXPECT_EQ((*valid)[0].id(), second.key().id());
  EXPECT_EQ((*valid)[0].limits().SerializeAsString(), limits.SerializeAsString())
      << "limits come back as they were given";

  auto all = store->List(/*include_revoked=*/true);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].id(), first.key().id());
  EXPECT_EQ((*all)[0].name(), "first");
  EXPECT_EQ((*all)[0].role(), inferbox::v1::KEY_ROLE_ADMIN);
  EXPECT_EQ((*all)[0].created_at().seconds(), 1767225601);
  EXPECT_EQ((*all)[0].revoked_at().seconds(), 1767225603);
  EXPECT_EQ((*all)[1].id(), second.key().id());
  EXPECT_EQ((*all)[1].created_at().seconds(), 1767225602);
  EXPECT_FALSE((*all)[1].has_revoked_at());
}

TEST_F(KeyStoreTest, RevokedKeyIsRefusedAtOnceAndOthersStillWork) {
  auto store = OpenOrDie(database(), true);
  const auto revoked = CreateOrDie(*store, "leaked", inferbox::v1::KEY_ROLE_ADMIN);
  const auto kept = CreateOrDie(*store, "kept", inferbox::v1::KEY_ROLE_ADMIN);
  ASSERT_TRUE(store->Authenticate(Bearer(revoked)).ok());

  ASSERT_TRUE(store->Revoke(revoked.key().id()).ok());
  auto caller = store->Authenticate(Bearer(revoked));
  ASSERT_FALSE(caller.ok()) << "a revoked key must be refused by the very next call";
  EXPECT_EQ(caller.status().code(), StatusCode::kUnauthenticated);
  EXPECT_THAT(caller.status().message(), HasSubstr(revoked.key().id() + " has been revoked"));
  EXPECT_TRUE(store->Authenticate(Bearer(kept)).ok());
}

TEST_F(KeyStoreTest, RevokeIsIdempotentAndKeepsTheFirstRevocationTime) {
  auto store = OpenOrDie(database(), true, clock_.AsClock());
  const auto key = CreateOrDie(*store, "twice", inferbox::v1::KEY_ROLE_INFERENCE);
  ASSERT_TRUE(store->Revoke(key.key().id()).ok());
  const Status again = store->Revoke(key.key().id());
  EXPECT_TRUE(again.ok()) << "revoking a revoked key succeeds: " << again.ToString();
  auto all = store->List(true);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].revoked_at().seconds(), 1767225602);
}

TEST_F(KeyStoreTest, RevokeOfAnUnknownIdIsNotFoundAndOfANonIdIsInvalid) {
  auto store = OpenOrDie(database(), true);
  const auto key = CreateOrDie(*store, "k", inferbox::v1::KEY_ROLE_INFERENCE);

  const Status unknown = store->Revoke("ibx_aaaaaaaaaaaa");
  EXPECT_EQ(unknown.code(), StatusCode::kNotFound);
  EXPECT_THAT(unknown.message(), HasSubstr("no API key with id ibx_aaaaaaaaaaaa"));

  const Status whole_token = store->Revoke(key.secret());
  EXPECT_EQ(whole_token.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(whole_token.message(), HasSubstr("not a key id"));
  EXPECT_THAT(whole_token.message(), Not(HasSubstr(SecretPart(key))))
      << "a token passed by mistake must not be echoed";
  EXPECT_TRUE(store->Authenticate(Bearer(key)).ok()) << "nothing was revoked";
}

TEST_F(KeyStoreTest, UpdateChangesNameRoleAndLimitsInPlaceAndTheNextCallSeesThem) {
  auto store = OpenOrDie(database(), true);
  inferbox::v1::KeyLimits limits;
  limits.add_models("qwen3-0.6b");
  limits.set_tokens_per_minute(1000);
  const auto key = CreateOrDie(*store, "risk-team", inferbox::v1::KEY_ROLE_INFERENCE, limits);

  inferbox::v1::UpdateKeyRequest request;
  request.set_id(key.key().id());
  request.set_name("risk-team-prod");
  request.set_role(inferbox::v1::KEY_ROLE_ADMIN);
  request.mutable_limits()->add_models("llama-3.1-8b");
  request.mutable_limits()->set_tokens_per_day(50000);
  request.mutable_limits()->set_max_concurrent_requests(4);
  auto updated = store->Update(request);
  ASSERT_TRUE(updated.ok()) << updated.status().ToString();
  EXPECT_EQ(updated->id(), key.key().id());
  EXPECT_EQ(updated->name(), "risk-team-prod");
  EXPECT_EQ(updated->role(), inferbox::v1::KEY_ROLE_ADMIN);
  EXPECT_THAT(updated->limits().models(), ::testing::ElementsAre("llama-3.1-8b"));
  EXPECT_EQ(updated->limits().tokens_per_minute(), 0u) << "limits are replaced whole";
  EXPECT_EQ(updated->limits().tokens_per_day(), 50000u);
  EXPECT_EQ(updated->created_at().seconds(), key.key().created_at().seconds());

  auto caller = store->Authenticate(Bearer(key));
  ASSERT_TRUE(caller.ok()) << "the secret stays valid: " << caller.status().ToString();
  EXPECT_EQ(caller->role, inferbox::v1::KEY_ROLE_ADMIN);
  EXPECT_THAT(caller->models, ::testing::ElementsAre("llama-3.1-8b"));
  EXPECT_EQ(caller->tokens_per_minute, 0u);
  EXPECT_EQ(caller->tokens_per_day, 50000u);
  EXPECT_EQ(caller->max_concurrent_requests, 4u);

  store.reset();
  store = OpenOrDie(database(), true);
  auto reopened = store->Authenticate(Bearer(key));
  ASSERT_TRUE(reopened.ok());
  EXPECT_EQ(reopened->tokens_per_day, 50000u) << "the change is stored, not only cached";
  auto listed = store->List(false);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].name(), "risk-team-prod");
}

TEST_F(KeyStoreTest, UpdateKeepsWhatTheRequestDoesNotSet) {
  auto store = OpenOrDie(database(), true);
  inferbox::v1::KeyLimits limits;
  limits.set_tokens_per_minute(1000);
  const auto key = CreateOrDie(*store, "batch", inferbox::v1::KEY_ROLE_INFERENCE, limits);
  inferbox::v1::UpdateKeyRequest request;
  request.set_id(key.key().id());
  request.set_name("batch-jobs");
  auto updated = store->Update(request);
  ASSERT_TRUE(updated.ok()) << updated.status().ToString();
  EXPECT_EQ(updated->role(), inferbox::v1::KEY_ROLE_INFERENCE);
  EXPECT_EQ(updated->limits().tokens_per_minute(), 1000u);
  auto caller = store->Authenticate(Bearer(key));
  ASSERT_TRUE(caller.ok());
  EXPECT_EQ(caller->tokens_per_minute, 1000u);
}

TEST_F(KeyStoreTest, InvalidUnknownAndRevokedUpdatesAreRefusedAndChangeNothing) {
  auto store = OpenOrDie(database(), true);
  const auto key = CreateOrDie(*store, "k", inferbox::v1::KEY_ROLE_INFERENCE);
  inferbox::v1::UpdateKeyRequest request;
  request.set_id(key.key().id());
  request.set_name("renamed");
  request.mutable_limits()->add_models("Not A Model");
  auto bad_model = store->Update(request);
  EXPECT_EQ(bad_model.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_model.status().message(), HasSubstr("not a model id"));
  request.clear_limits();
  request.set_name("");
  EXPECT_EQ(store->Update(request).status().code(), StatusCode::kInvalidArgument);
  request.clear_name();
  request.set_role(static_cast<inferbox::v1::KeyRole>(42));
  EXPECT_EQ(store->Update(request).status().code(), StatusCode::kInvalidArgument);
  auto listed = store->List(false);
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ((*listed)[0].name(), "k") << "a refused update changes nothing";

  inferbox::v1::UpdateKeyRequest unknown;
  unknown.set_id("ibx_aaaaaaaaaaaa");
  unknown.set_name("x");
  EXPECT_EQ(store->Update(unknown).status().code(), StatusCode::kNotFound);
  unknown.set_id(key.secret());
  auto whole_token = store->Update(unknown);
  EXPECT_EQ(whole_token.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(whole_token.status().message(), Not(HasSubstr(SecretPart(key))));

  ASSERT_TRUE(store->Revoke(key.key().id()).ok());
  inferbox::v1::UpdateKeyRequest revoked;
  revoked.set_id(key.key().id());
  revoked.set_role(inferbox::v1::KEY_ROLE_ADMIN);
  auto refused = store->Update(revoked);
  EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("revoked"));
  EXPECT_FALSE(store->Authenticate(Bearer(key)).ok()) << "a revoked key stays revoked";
}

TEST_F(KeyStoreTest, RightIdWithAWrongSecretIsRefused) {
  auto store = OpenOrDie(database(), true);
  const auto key = CreateOrDie(*store, "k", inferbox::v1::KEY_ROLE_ADMIN);
  std::string forged = key.secret();
  forged.back() = forged.back() == 'A' ? 'B' : 'A';
  auto caller = store->Authenticate("Bearer " + forged);
  ASSERT_FALSE(caller.ok()) << "a key with the right id and a wrong secret must be refused";
  EXPECT_EQ(caller.status().code(), StatusCode::kUnauthenticated);
  EXPECT_THAT(caller.status().message(), HasSubstr("API key " + key.key().id() + " is not valid"));
  EXPECT_THAT(caller.status().message(), Not(HasSubstr(SecretPart(key))));
  EXPECT_THAT(caller.status().message(), Not(HasSubstr(forged.substr(forged.find('.') + 1))));

  auto unknown = store->Authenticate("Bearer ibx_aaaaaaaaaaaa." + SecretPart(key));
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), StatusCode::kUnauthenticated);
  EXPECT_THAT(unknown.status().message(), HasSubstr("ibx_aaaaaaaaaaaa is not valid"));
}

TEST_F(KeyStoreTest, MalformedHeadersAreRefusedWithClearMessagesThatDoNotEchoThem) {
  auto store = OpenOrDie(database(), /*require_keys=*/true);
  const auto key = CreateOrDie(*store, "k", inferbox::v1::KEY_ROLE_ADMIN);
  const std::string secret = SecretPart(key);
  struct Case {
    std::string header;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"Basic " + secret, "expected \"Bearer <key>\""},
      {"Token " + key.secret(), "expected \"Bearer <key>\""},
      {key.secret(), "put \"Bearer \" before the key"},
      {secret, "expected \"Bearer <key>\""},
      {"Bearer", "\"Bearer\" without a key"},
      {"Bearer   ", "\"Bearer\" without a key"},
      {"Bearer " + secret, "malformed API key"},
      {"Bearer ibx_short." + secret, "malformed API key"},
      {"Bearer " + key.key().id(), "malformed API key"},
      {"Bearer " + key.secret().substr(0, key.secret().size() - 1), "malformed API key"},
      {"Bearer " + key.secret() + "x", "malformed API key"},
      {"Bearer " + key.secret() + " extra", "malformed API key"},
      {"Bearer " + key.key().id() + "." + secret.substr(0, 42) + "+", "malformed API key"},
      {"Bearer IBX_" + key.secret().substr(4), "malformed API key"},
  };
  for (const auto& c : cases) {
    auto caller = store->Authenticate(c.header);
    ASSERT_FALSE(caller.ok()) << "expected \"" << c.header << "\" to be refused";
    EXPECT_EQ(caller.status().code(), StatusCode::kUnauthenticated) << c.header;
    EXPECT_THAT(caller.status().message(), HasSubstr(c.expected)) << c.header;
    EXPECT_THAT(caller.status().message(), Not(HasSubstr(secret.substr(0, 16))))
        << "the message for \"" << c.header << "\" echoes the secret";
  }
}

TEST_F(KeyStoreTest, WithoutRequiredKeysAnEmptyHeaderIsAnAnonymousAdmin) {
  auto store = OpenOrDie(database(), /*require_keys=*/false);
  for (std::string_view header : {"", "   "}) {
    auto caller = store->Authenticate(header);
    ASSERT_TRUE(caller.ok()) << caller.status().ToString();
    EXPECT_EQ(caller->key_id, "");
    EXPECT_EQ(caller->role, inferbox::v1::KEY_ROLE_ADMIN);
    EXPECT_TRUE(caller->models.empty());
  }
  const auto key = CreateOrDie(*store, "inference", inferbox::v1::KEY_ROLE_INFERENCE);
  auto caller = store->Authenticate(Bearer(key));
  ASSERT_TRUE(caller.ok());
  EXPECT_EQ(caller->role, inferbox::v1::KEY_ROLE_INFERENCE)
      << "a presented key is used even where none is required";
  // What OpenAI SDKs send to a keyless server ("EMPTY", "sk-...") and a revoked key make
  // the caller anonymous, as no header would: the box serves whoever reaches it.
  ASSERT_TRUE(store->Revoke(key.key().id()).ok());
  for (const std::string& header :
       {Bearer(key), std::string("Bearer EMPTY"), std::string("Bearer sk-no-key-required")}) {
    auto ignored = store->Authenticate(header);
    ASSERT_TRUE(ignored.ok()) << header;
    EXPECT_EQ(ignored->key_id, "") << header;
  }
  store->set_require_keys(true);
  EXPECT_EQ(store->Authenticate(Bearer(key)).status().code(), StatusCode::kUnauthenticated)
      << "once keys are required, the revoked key is refused";
  EXPECT_EQ(store->Authenticate("Bearer EMPTY").status().code(), StatusCode::kUnauthenticated);
}

TEST_F(KeyStoreTest, WithRequiredKeysAnEmptyHeaderIsRefused) {
  auto store = OpenOrDie(database(), /*require_keys=*/true);
  auto caller = store->Authenticate("");
  ASSERT_FALSE(caller.ok());
  EXPECT_EQ(caller.status().code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(caller.status().message(), "missing API key: send Authorization: Bearer <key>");

  store->set_require_keys(false);
  EXPECT_TRUE(store->Authenticate("").ok()) << "set_require_keys(false) takes effect at once";
  store->set_require_keys(true);
  EXPECT_FALSE(store->Authenticate("").ok());
}

TEST_F(KeyStoreTest, TheSecretIsNotStoredInTheDatabaseFiles) {
  std::vector<inferbox::v1::CreateKeyResponse> keys;
  {
    auto store = OpenOrDie(database(), true);
    for (int i = 0; i < 3; ++i) {
      keys.push_back(CreateOrDie(*store, "k" + std::to_string(i), inferbox::v1::KEY_ROLE_ADMIN));
    }
    ASSERT_TRUE(store->Revoke(keys[0].key().id()).ok());
    // While open, the rows are in the write-ahead log; check it as well as the main file.
    std::string bytes;
    for (const auto& entry : std::filesystem::directory_iterator(dir_.path())) {
      bytes += ReadBytes(entry.path());
    }
    ASSERT_THAT(bytes, HasSubstr(keys[1].key().id())) << "the test reads the files that hold keys";
    for (const auto& key : keys) {
      EXPECT_THAT(bytes, Not(HasSubstr(SecretPart(key)))) << "secret of " << key.key().id();
    }
  }
  // Closing checkpoints the log into the main file.
  const std::string bytes = ReadBytes(database());
  ASSERT_THAT(bytes, HasSubstr(keys[1].key().id()));
  for (const auto& key : keys) EXPECT_THAT(bytes, Not(HasSubstr(SecretPart(key))));
}

TEST_F(KeyStoreTest, KeysAndRevocationsPersistAcrossReopening) {
  inferbox::v1::CreateKeyResponse kept;
  inferbox::v1::CreateKeyResponse revoked;
  {
    auto store = OpenOrDie(database(), true);
    inferbox::v1::KeyLimits limits;
    limits.add_models("qwen3-0.6b");
    kept = CreateOrDie(*store, "kept", inferbox::v1::KEY_ROLE_INFERENCE, limits);
    revoked = CreateOrDie(*store, "revoked", inferbox::v1::KEY_ROLE_ADMIN);
    ASSERT_TRUE(store->Revoke(revoked.key().id()).ok());
  }
  auto store = OpenOrDie(database(), true);
  ASSERT_NE(store, nullptr);
  auto caller = store->Authenticate(Bearer(kept));
  ASSERT_TRUE(caller.ok()) << caller.status().ToString();
  EXPECT_EQ(caller->key_id, kept.key().id());
  EXPECT_THAT(caller->models, ::testing::ElementsAre("qwen3-0.6b"));
  EXPECT_EQ(store->Authenticate(Bearer(revoked)).status().code(), StatusCode::kUnauthenticated);
  auto all = store->List(true);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 2u);
}

TEST_F(KeyStoreTest, DatabaseFilesAreReadableByTheOwnerOnly) {
  auto store = OpenOrDie(database(), true);
  CreateOrDie(*store, "k", inferbox::v1::KEY_ROLE_ADMIN);
  EXPECT_EQ(ModeOf(database()), 0600u);
  EXPECT_EQ(ModeOf(dir_.path() / "inferbox.db-wal"), 0600u);
  EXPECT_EQ(ModeOf(dir_.path() / "inferbox.db-shm"), 0600u);
}

TEST_F(KeyStoreTest, ALooserModeOnAnExistingDatabaseIsTightened) {
  std::ofstream(database()).close();
  ASSERT_EQ(::chmod(database().c_str(), 0644), 0);
  auto store = OpenOrDie(database(), true);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(ModeOf(database()), 0600u);
}

TEST_F(KeyStoreTest, AMissingDirectoryIsAClearError) {
  auto store = KeyStore::Open(dir_ / "no-such-dir" / "inferbox.db", true);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(store.status().message(), HasSubstr("no-such-dir/inferbox.db"));
  EXPECT_THAT(store.status().message(), HasSubstr("No such file or directory"));
}

TEST_F(KeyStoreTest, ASchemaFromANewerReleaseIsRefused) {
  { OpenOrDie(database(), true); }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(database().c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "UPDATE schema_versions SET version = 99 WHERE component = 'api_keys'",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);

  auto store = KeyStore::Open(database(), true);
  ASSERT_FALSE(store.ok()) << "a schema this build does not know must not be used";
  EXPECT_EQ(store.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(store.status().message(), HasSubstr("schema version 99, newer than"));
}

TEST_F(KeyStoreTest, ADatabaseSharedWithOtherTablesKeepsThem) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(database().c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db,
                         "CREATE TABLE usage (id INTEGER PRIMARY KEY); PRAGMA user_version = 7; "
                         "INSERT INTO usage VALUES (1)",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);

  auto store = OpenOrDie(database(), true);
  ASSERT_NE(store, nullptr);
  const auto key = CreateOrDie(*store, "k", inferbox::v1::KEY_ROLE_ADMIN);
  EXPECT_TRUE(store->Authenticate(Bearer(key)).ok());

  ASSERT_EQ(sqlite3_open(database().c_str(), &db), SQLITE_OK);
  sqlite3_stmt* statement = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db,
                               "SELECT (SELECT count(*) FROM usage), user_version "
                               "FROM pragma_user_version",
                               -1, &statement, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(statement), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(statement, 0), 1) << "another component's rows are untouched";
  EXPECT_EQ(sqlite3_column_int(statement, 1), 7) << "PRAGMA user_version is not ours to change";
  sqlite3_finalize(statement);
  sqlite3_close(db);
}

TEST_F(KeyStoreTest, IdsAreUnique) {
  auto store = OpenOrDie(database(), true);
  std::set<std::string> ids;
  for (int i = 0; i < 50; ++i) {
    ids.insert(CreateOrDie(*store, "k", inferbox::v1::KEY_ROLE_INFERENCE).key().id());
  }
  EXPECT_EQ(ids.size(), 50u);
}

TEST_F(KeyStoreTest, ConcurrentAuthenticationSeesRevocationsOnceTheyReturn) {
  auto store = OpenOrDie(database(), true);
  const auto stable = CreateOrDie(*store, "stable", inferbox::v1::KEY_ROLE_INFERENCE);
  const auto doomed = CreateOrDie(*store, "doomed", inferbox::v1::KEY_ROLE_INFERENCE);
  std::string forged = stable.secret();
  forged.back() = forged.back() == 'A' ? 'B' : 'A';

  std::atomic<bool> revoked{false};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        if (!store->Authenticate(Bearer(stable)).ok()) ++failures;
        if (store->Authenticate("Bearer " + forged).ok()) ++failures;
        const bool revoked_before = revoked.load();
        if (revoked_before && store->Authenticate(Bearer(doomed)).ok()) ++failures;
      }
    });
  }
  threads.emplace_back([&] {
    for (int i = 0; i < 20; ++i) CreateOrDie(*store, "more", inferbox::v1::KEY_ROLE_INFERENCE);
    EXPECT_TRUE(store->Revoke(doomed.key().id()).ok());
    revoked.store(true);
    EXPECT_TRUE(store->List(true).ok());
  });
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0)
      << "a valid key was refused, a forged one accepted, or a revoked one accepted after "
         "Revoke returned";
}

}  // namespace
}  // namespace inferbox::daemon
