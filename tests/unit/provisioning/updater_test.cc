// Update bundles (signature, digests, manifest checks) and the updater's state machine with
// a fake package manager, service and readiness probe: commit, rollback when the new version
// is not ready, a failing rollback, an interrupted update, a manual rollback, and refusals
// that change nothing.
#include "inferbox/provisioning/updater.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "file_ops.h"
#include "inferbox/common/atomic_file.h"
#include "inferbox/provisioning/update_bundle.h"
#include "model_fixtures.h"
#include "signatures.h"
#include "temp_dir.h"
#include "test_http_server.h"

namespace inferbox::provisioning {
namespace {

namespace fs = std::filesystem;
using inferbox::testing::TempDir;
using testing::GenerateEd25519;
using ::testing::HasSubstr;
using testing::KeyPair;
using testing::ReadBytes;
using testing::TestHttpServer;
using testing::WriteFile;
using testing::WriteTar;
using v1::UpdateOutcome;

// A fake package file holds "name version architecture".
void WriteFakePackage(const fs::path& path, const PackageInfo& info) {
  WriteFile(path, info.name + " " + info.version + " " + info.architecture + "\n");
}

class FakePackageManager final : public PackageManager {
 public:
  std::string format() const override { return "deb"; }
  Result<std::string> Architecture() override { return std::string("amd64"); }
  Result<std::string> InstalledVersion(const std::string& name) override {
    if (!database.ok()) return database;
    const auto found = installed.find(name);
    return found == installed.end() ? std::string() : found->second;
  }
  Result<PackageInfo> Inspect(const fs::path& file) override {
    std::istringstream in(ReadBytes(file));
    PackageInfo info;
    in >> info.name >> info.version >> info.architecture;
    if (info.name.empty()) return InvalidArgumentError(file.string() + " is not a package");
    return info;
  }
  // Plain string order: enough for the versions these tests use.
  Result<int> CompareVersions(const std::string& a, const std::string& b) override {
    return a.compare(b) < 0 ? -1 : (a == b ? 0 : 1);
  }
  Result<fs::path> RebuildInstalled(const std::string& name, const fs::path& dir) override {
    ++num_rebuilds;
    const fs::path out = dir / (name + "_" + installed.at(name) + "_amd64.deb");
    WriteFakePackage(out, {name, installed.at(name), "amd64"});
    return out;
  }
  Status Install(const std::vector<fs::path>& files) override {
    for (const auto& file : files) {
      auto info = Inspect(file);
      if (!info.ok()) return info.status();
      if (failing_versions.contains(info->version)) {
        return FailedPreconditionError("dpkg: error processing " + file.string());
      }
    }
    bool half_failed = false;
    for (const auto& file : files) {
      auto info = Inspect(file);
      installed[info->name] = info->version;
      installs.push_back(info->name + "=" + info->version);
      half_failed = half_failed || half_failing_versions.contains(info->version);
    }
    // As dpkg does when a maintainer script fails after the files were unpacked.
    if (half_failed) return FailedPreconditionError("dpkg: error processing (postinst)");
    return Status::Ok();
  }
  Status Remove(const std::vector<std::string>& names) override {
    for (const auto& name : names) installed.erase(name);
    return Status::Ok();
  }

  std::map<std::string, std::string> installed;
  Status database;  // Not OK: every InstalledVersion fails so (dpkg half-installed, say).
  // Refused before anything changes (dpkg's lock held), or failing once installed.
  std::set<std::string> failing_versions;
  std::set<std::string> half_failing_versions;
  std::vector<std::string> installs;
  int num_rebuilds = 0;
};

// The "daemon" runs what the package manager installed once restarted; versions in
// `broken_versions` never become ready.
class FakeBox final : public ServiceControl, public ReadinessProbe {
 public:
  explicit FakeBox(FakePackageManager& packages) : packages_(packages) {}

  Status CheckUsable() override { return usable; }
  Status Restart() override {
    ++num_restarts;
    if (on_restart) on_restart();
    running = UpstreamVersion(packages_.installed.at(std::string(kMainPackage)));
    return Status::Ok();
  }
  Status WaitReady(std::string_view expected_version, std::chrono::system_clock::time_point,
                   std::chrono::milliseconds) override {
    if (broken_versions.contains(running)) {
      return Status(
          StatusCode::kDeadlineExceeded,
          "inferboxd " + running + " was not ready within 30 s: /health/ready answers 503");
    }
    if (running != expected_version) {
      return Status(StatusCode::kDeadlineExceeded, "the new daemon reports version " + running);
    }
    return Status::Ok();
  }
  Result<std::string> RunningVersion() override {
    if (!reachable.ok()) return reachable;
    return running;
  }

  Status usable;
  Status reachable;
  std::string running;
  std::set<std::string> broken_versions;
  std::function<void()> on_restart;
  int num_restarts = 0;

 private:
  FakePackageManager& packages_;
};

class UpdaterTest : public ::testing::Test {
 protected:
  UpdaterTest() : box_(packages_) {
    packages_.installed = {{"inferbox", "0.1.0-1"}, {"inferbox-tools", "0.1.0-1"}};
    box_.running = "0.1.0";
    auto keys = TrustedKeys::Load({signer_.public_pem});
    EXPECT_TRUE(keys.ok());
    keys_ = std::move(keys).value();
  }

  // A bundle of inferbox and inferbox-tools at `version`, signed with `key` (default: the
  // trusted signer's).
  fs::path MakeBundle(const std::string& version, const std::string& key = {}) {
    const std::string name = (key.empty() ? "inferbox-update_" : "foreign-update_") + version;
    const fs::path dir = temp_.path() / ("build-" + version);
    std::vector<UpdateBundleInput> inputs;
    for (const std::string package : {"inferbox", "inferbox-tools"}) {
      const PackageInfo info{package, version, "amd64"};
      const fs::path file = dir / (package + "_" + version + "_amd64.deb");
      WriteFakePackage(file, info);
      inputs.push_back({file, info});
    }
    const fs::path out = temp_.path() / (name + ".ibu");
    auto written = WriteUpdateBundle(inputs, "deb", out, key.empty() ? signer_.private_pem : key);
    EXPECT_TRUE(written.ok()) << written.status().ToString();
    return out;
  }

  Updater MakeUpdater(bool allow_downgrade = false) {
    UpdaterOptions options;
    options.allow_downgrade = allow_downgrade;
    if (free_bytes_) options.free_space = [this](const fs::path&) { return *free_bytes_; };
    options.state_dir = state_dir_;
    options.ready_deadline = std::chrono::seconds(30);
    return Updater(
        options,
        UpdateSystem{
            .packages = packages_, .service = box_, .readiness = box_, .keys = keys_.get()});
  }

  bool Pending() const { return fs::exists(state_dir_ / "current.json"); }

  TempDir temp_;
  const fs::path state_dir_ = temp_.path() / "state";
  KeyPair signer_ = GenerateEd25519();
  std::unique_ptr<TrustedKeys> keys_;
  FakePackageManager packages_;
  FakeBox box_;
  std::optional<uint64_t> free_bytes_;  // Unset: the real disk's.
};

TEST(UpdateVersionTest, UpstreamVersionDropsEpochAndRevision) {
  EXPECT_EQ(UpstreamVersion("0.2.0-1"), "0.2.0");
  EXPECT_EQ(UpstreamVersion("1:0.2.0-1+upd2"), "0.2.0");
  EXPECT_EQ(UpstreamVersion("0.2.0-rc1-3"), "0.2.0-rc1");
  EXPECT_EQ(UpstreamVersion("0.2.0"), "0.2.0");
  EXPECT_TRUE(IsPackageVersion("1:0.2.0-1+upd2~rc"));
  EXPECT_FALSE(IsPackageVersion("../0.2.0")) << "a version names a folder: no '/'";
  EXPECT_FALSE(IsPackageVersion(""));
}

TEST(UpdateManifestTest, RefusesWhatDoesNotFitTheBox) {
  UpdateManifest manifest;
  manifest.set_format_version(kUpdateFormatVersion);
  manifest.set_kind(std::string(kUpdateKind));
  manifest.set_version("0.2.0-1");
  manifest.set_architecture("amd64");
  manifest.set_package_format("deb");
  UpdatePackage& package = *manifest.add_packages();
  package.set_file_name("inferbox_0.2.0-1_amd64.deb");
  package.set_name("inferbox");
  package.set_version("0.2.0-1");
  package.set_size_bytes(3);
  package.set_sha256(std::string(64, 'a'));
  const UpdateTarget box{"deb", "amd64"};
  EXPECT_TRUE(ValidateUpdateManifest(manifest, box).ok());

  auto refused = [&](auto change, std::string_view why) {
    UpdateManifest changed = manifest;
    change(changed);
    const Status status = ValidateUpdateManifest(changed, box);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << "expected a refusal: " << why;
    return status.message();
  };
  EXPECT_THAT(refused([](auto& m) { m.set_architecture("arm64"); }, "another architecture"),
              HasSubstr("arm64"));
  EXPECT_THAT(refused([](auto& m) { m.set_package_format("rpm"); }, "rpm on a deb box"),
              HasSubstr("rpm"));
  refused([](auto& m) { m.set_kind("model"); }, "not an update");
  refused([](auto& m) { m.set_version("0.3.0-1"); }, "manifest and package versions differ");
  refused([](auto& m) { m.mutable_packages(0)->set_file_name("../../etc/passwd"); },
          "a file name leaving the staging folder");
  refused([](auto& m) { m.mutable_packages(0)->set_sha256("abc"); }, "a malformed digest");
  refused([](auto& m) { m.mutable_packages(0)->set_name("inferbox-tools"); },
          "no package inferbox");
  refused([](auto& m) { *m.add_packages() = m.packages(0); }, "a package listed twice");
}

TEST_F(UpdaterTest, BundleRoundTripVerifiesSignatureAndDigests) {
  const fs::path bundle = MakeBundle("0.2.0-1");
  auto update = ReadUpdateBundle(bundle, *keys_, {"deb", "amd64"}, temp_.path() / "staging");
  ASSERT_TRUE(update.ok()) << update.status().ToString();
  EXPECT_EQ(update->manifest.version(), "0.2.0-1");
  EXPECT_THAT(update->signed_by, HasSubstr("ed25519:"));
  ASSERT_EQ(update->files.size(), 2u);
  EXPECT_EQ(ReadBytes(update->files[0]), "inferbox 0.2.0-1 amd64\n");
}

TEST_F(UpdaterTest, TamperedOrForeignBundlesAreRefusedAndLeaveNothing) {
  const fs::path staging = temp_.path() / "staging";
  const fs::path foreign = MakeBundle("0.2.0-1", GenerateEd25519().private_pem);
  auto refused = ReadUpdateBundle(foreign, *keys_, {"deb", "amd64"}, staging);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument)
      << "a bundle signed by an untrusted key must be refused";
  EXPECT_THAT(refused.status().message(), HasSubstr("signature"));
  EXPECT_FALSE(fs::exists(staging)) << "a refused bundle must leave no staging folder";

  // Same manifest and signature, one package byte changed: the digest catches it.
  const fs::path good = MakeBundle("0.2.0-1");
  std::string bytes = ReadBytes(good);
  const auto at = bytes.find("inferbox-tools 0.2.0-1 amd64");
  ASSERT_NE(at, std::string::npos);
  bytes[at] = 'X';
  const fs::path tampered = temp_.path() / "tampered.ibu";
  WriteFile(tampered, bytes);
  refused = ReadUpdateBundle(tampered, *keys_, {"deb", "amd64"}, staging);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("SHA-256"));
  EXPECT_FALSE(fs::exists(staging));

  // The manifest changed after signing.
  bytes = ReadBytes(good);
  const auto version = bytes.find("\"version\": \"0.2.0-1\"");
  ASSERT_NE(version, std::string::npos);
  bytes[version + 14] = '9';
  WriteFile(tampered, bytes);
  refused = ReadUpdateBundle(tampered, *keys_, {"deb", "amd64"}, staging);
  EXPECT_THAT(refused.status().message(), HasSubstr("signature"));

  // No signature at all.
  WriteTar(tampered, {{std::string(kUpdateManifestName), "{}"}});
  refused = ReadUpdateBundle(tampered, *keys_, {"deb", "amd64"}, staging);
  EXPECT_THAT(refused.status().message(), HasSubstr("not signed"));
  EXPECT_FALSE(fs::exists(staging));
}

TEST_F(UpdaterTest, GoodUpdateCommitsAndKeepsThePreviousVersion) {
  Updater updater = MakeUpdater();
  auto record = updater.Apply(MakeBundle("0.2.0-1"));
  ASSERT_TRUE(record.ok()) << record.status().ToString();
  EXPECT_EQ(record->outcome(), v1::UPDATE_OUTCOME_COMMITTED) << record->reason();
  EXPECT_EQ(packages_.installed["inferbox"], "0.2.0-1");
  EXPECT_EQ(packages_.installed["inferbox-tools"], "0.2.0-1");
  EXPECT_EQ(box_.running, "0.2.0");
  EXPECT_EQ(packages_.num_rebuilds, 2) << "the hand-installed 0.1.0-1 is rebuilt for a rollback";
  EXPECT_TRUE(fs::exists(state_dir_ / "packages/0.1.0-1/inferbox_0.1.0-1_amd64.deb"));
  EXPECT_TRUE(fs::exists(state_dir_ / "packages/0.2.0-1/inferbox_0.2.0-1_amd64.deb"));
  EXPECT_FALSE(Pending()) << "a committed update leaves no current.json";
  EXPECT_FALSE(fs::exists(state_dir_ / "staging/") && !fs::is_empty(state_dir_ / "staging"));

  auto history = updater.History();
  ASSERT_TRUE(history.ok());
  ASSERT_EQ(history->records_size(), 1);
  EXPECT_EQ(history->records(0).outcome(), v1::UPDATE_OUTCOME_COMMITTED);
  EXPECT_EQ(history->records(0).from_version(), "0.1.0-1");

  auto again = updater.Apply(MakeBundle("0.2.0-1"));
  EXPECT_EQ(again.status().code(), StatusCode::kFailedPrecondition)
      << "the installed version again is refused";
}

TEST_F(UpdaterTest, NotReadyRollsBackAndTheOldVersionServes) {
  box_.broken_versions = {"0.2.0"};
  Updater updater = MakeUpdater();
  auto record = updater.Apply(MakeBundle("0.2.0-1"));
  ASSERT_TRUE(record.ok()) << record.status().ToString();
  EXPECT_EQ(record->outcome(), v1::UPDATE_OUTCOME_ROLLED_BACK);
  EXPECT_THAT(record->reason(), HasSubstr("not ready"));
  EXPECT_EQ(packages_.installed["inferbox"], "0.1.0-1") << "the previous version is reinstalled";
  EXPECT_EQ(packages_.installed["inferbox-tools"], "0.1.0-1");
  EXPECT_EQ(box_.running, "0.1.0");
  EXPECT_EQ(box_.num_restarts, 2);
  EXPECT_FALSE(Pending());
  EXPECT_FALSE(fs::exists(state_dir_ / "packages/0.2.0-1")) << "a failed version is not kept";

  // A later good update still works, from the stored copy.
  box_.broken_versions.clear();
  auto next = updater.Apply(MakeBundle("0.3.0-1"));
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->outcome(), v1::UPDATE_OUTCOME_COMMITTED);
  EXPECT_EQ(packages_.num_rebuilds, 2) << "0.1.0-1 was kept already: no second rebuild";
}

TEST_F(UpdaterTest, InstallFailureRollsBack) {
  packages_.half_failing_versions = {"0.2.0-1"};
  auto record = MakeUpdater().Apply(MakeBundle("0.2.0-1"));
  ASSERT_TRUE(record.ok());
  EXPECT_EQ(record->outcome(), v1::UPDATE_OUTCOME_ROLLED_BACK);
  EXPECT_THAT(record->reason(), HasSubstr("dpkg: error"));
  EXPECT_EQ(packages_.installed["inferbox"], "0.1.0-1");
}

TEST_F(UpdaterTest, AnInstallThatChangedNothingIsARefusalNotARollback) {
  packages_.failing_versions = {"0.2.0-1"};
  Updater updater = MakeUpdater();
  auto refused = updater.Apply(MakeBundle("0.2.0-1"));
  ASSERT_FALSE(refused.ok()) << "nothing was installed, so nothing is rolled back";
  EXPECT_THAT(refused.status().message(), HasSubstr("no package was changed"));
  EXPECT_EQ(packages_.installed["inferbox"], "0.1.0-1");
  EXPECT_EQ(box_.num_restarts, 0);
  EXPECT_FALSE(Pending()) << "a refusal leaves no unfinished update behind";
  packages_.failing_versions.clear();
  auto record = updater.Apply(MakeBundle("0.2.0-1"));
  ASSERT_TRUE(record.ok()) << "the next try is not blocked: " << record.status().ToString();
  EXPECT_EQ(record->outcome(), v1::UPDATE_OUTCOME_COMMITTED);
}

TEST_F(UpdaterTest, AHistoryLineTornByACrashDoesNotSwallowTheNextRecord) {
  ASSERT_TRUE(MakeUpdater().Apply(MakeBundle("0.2.0-1")).ok());
  {
    std::ofstream torn(state_dir_ / "history.jsonl", std::ios::app);
    torn << "{\"id\": \"torn";
  }
  auto record = MakeUpdater().Apply(MakeBundle("0.3.0-1"));
  ASSERT_TRUE(record.ok()) << record.status().ToString();
  auto history = MakeUpdater().History();
  ASSERT_TRUE(history.ok()) << history.status().ToString();
  ASSERT_EQ(history->records_size(), 2) << "the torn line is skipped, the records around it kept";
  EXPECT_EQ(history->records(1).to_version(), "0.3.0-1");
  EXPECT_TRUE(fs::exists(state_dir_ / "packages/0.2.0-1"))
      << "the version 0.3.0-1 replaced stays for a rollback";
}

TEST_F(UpdaterTest, FailingRollbackIsRecordedAndBlocksFurtherUpdates) {
  box_.broken_versions = {"0.2.0", "0.1.0"};
  Updater updater = MakeUpdater();
  auto record = updater.Apply(MakeBundle("0.2.0-1"));
  ASSERT_TRUE(record.ok());
  EXPECT_EQ(record->outcome(), v1::UPDATE_OUTCOME_ROLLBACK_FAILED);
  EXPECT_THAT(record->reason(), HasSubstr("going back to 0.1.0-1 failed too"));
  EXPECT_TRUE(Pending()) << "a failed rollback stays in current.json for status and rollback";

  auto status = updater.ReadStatus();
  ASSERT_TRUE(status.ok());
  EXPECT_TRUE(status->has_pending());
  EXPECT_FALSE(status->pending_active());
  EXPECT_EQ(status->pending().outcome(), v1::UPDATE_OUTCOME_ROLLBACK_FAILED);

  auto refused = updater.Apply(MakeBundle("0.3.0-1"));
  EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("update rollback"));

  // A rollback that fails again keeps the way back for the next try.
  auto again = updater.Rollback();
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->outcome(), v1::UPDATE_OUTCOME_ROLLBACK_FAILED);
  EXPECT_TRUE(Pending());

  // Once 0.1.0 can start again (a person fixed the GPU, say), rollback finishes the job.
  box_.broken_versions.clear();
  auto rollback = updater.Rollback();
  ASSERT_TRUE(rollback.ok()) << rollback.status().ToString();
  EXPECT_EQ(rollback->outcome(), v1::UPDATE_OUTCOME_COMMITTED);
  EXPECT_EQ(packages_.installed["inferbox"], "0.1.0-1");
  EXPECT_FALSE(Pending());
}

TEST_F(UpdaterTest, InterruptedUpdateIsFoundAndRolledBack) {
  // Capture current.json as it is when the service restarts, then bring it back after the
  // update: the state a crash (power cut) at the restart leaves behind.
  std::string journal;
  box_.on_restart = [&] {
    if (journal.empty()) journal = ReadBytes(state_dir_ / "current.json");
  };
  Updater updater = MakeUpdater();
  auto record = updater.Apply(MakeBundle("0.2.0-1"));
  ASSERT_TRUE(record.ok());
  ASSERT_THAT(journal, HasSubstr("UPDATE_OUTCOME_IN_PROGRESS"))
      << "the update must be recorded before the restart";
  ASSERT_TRUE(WriteFileAtomically(state_dir_ / "current.json", journal).ok());

  auto status = updater.ReadStatus();
  ASSERT_TRUE(status.ok());
  EXPECT_TRUE(status->has_pending());
  EXPECT_FALSE(status->pending_active()) << "no updater holds the lock: interrupted";
  EXPECT_EQ(updater.Apply(MakeBundle("0.3.0-1")).status().code(), StatusCode::kFailedPrecondition);

  // A crash inside dpkg leaves a package half-installed: status still shows the update.
  packages_.database = FailedPreconditionError("package inferbox is half-installed");
  status = updater.ReadStatus();
  ASSERT_TRUE(status.ok()) << status.status().ToString();
  EXPECT_TRUE(status->has_pending());
  EXPECT_THAT(status->installed_error(), HasSubstr("half-installed"));
  packages_.database = Status::Ok();

  auto rollback = updater.Rollback();
  ASSERT_TRUE(rollback.ok()) << rollback.status().ToString();
  EXPECT_EQ(rollback->outcome(), v1::UPDATE_OUTCOME_COMMITTED);
  EXPECT_EQ(rollback->to_version(), "0.1.0-1");
  EXPECT_EQ(packages_.installed["inferbox"], "0.1.0-1");
  EXPECT_FALSE(Pending());
}

TEST_F(UpdaterTest, ManualRollbackGoesToThePreviousVersion) {
  Updater updater = MakeUpdater();
  EXPECT_EQ(updater.Rollback().status().code(), StatusCode::kFailedPrecondition)
      << "nothing recorded: nothing to roll back to";
  ASSERT_EQ(updater.Apply(MakeBundle("0.2.0-1"))->outcome(), v1::UPDATE_OUTCOME_COMMITTED);
  box_.broken_versions = {"0.3.0"};
  ASSERT_EQ(updater.Apply(MakeBundle("0.3.0-1"))->outcome(), v1::UPDATE_OUTCOME_ROLLED_BACK);

  auto rollback = updater.Rollback();
  ASSERT_TRUE(rollback.ok()) << rollback.status().ToString();
  EXPECT_EQ(rollback->action(), "rollback");
  EXPECT_EQ(rollback->outcome(), v1::UPDATE_OUTCOME_COMMITTED);
  EXPECT_EQ(rollback->from_version(), "0.2.0-1");
  EXPECT_EQ(rollback->to_version(), "0.1.0-1");
  EXPECT_EQ(packages_.installed["inferbox"], "0.1.0-1");
  EXPECT_EQ(box_.running, "0.1.0");
  auto history = updater.History();
  ASSERT_TRUE(history.ok());
  EXPECT_EQ(history->records_size(), 3);
}

TEST_F(UpdaterTest, RefusalsChangeNothing) {
  const fs::path foreign = MakeBundle("0.2.0-1", GenerateEd25519().private_pem);
  box_.usable = FailedPreconditionError("systemd is not running here");
  Updater updater = MakeUpdater();
  EXPECT_EQ(updater.Apply(MakeBundle("0.2.0-1")).status().code(), StatusCode::kFailedPrecondition)
      << "no way to restart: refused before anything";
  box_.usable = Status::Ok();
  box_.reachable = UnavailableError("no daemon is running");
  auto unreachable = updater.Apply(MakeBundle("0.2.0-1"));
  EXPECT_EQ(unreachable.status().code(), StatusCode::kFailedPrecondition)
      << "no daemon to judge the update by: refused before anything";
  EXPECT_THAT(unreachable.status().message(), HasSubstr("cannot reach the running inferboxd"));
  box_.reachable = Status::Ok();
  EXPECT_EQ(updater.Apply(foreign).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(updater.Apply(temp_.path() / "missing.ibu").status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(packages_.installs.empty()) << "nothing may be installed for a refused bundle";
  EXPECT_EQ(box_.num_restarts, 0);
  EXPECT_EQ(packages_.num_rebuilds, 0);
  EXPECT_FALSE(fs::exists(state_dir_ / "history.jsonl"));
  EXPECT_FALSE(fs::exists(state_dir_ / "packages"));
}

TEST_F(UpdaterTest, ABundleThatDoesNotFitOnTheDiskIsRefusedBeforeUnpacking) {
  const fs::path bundle = MakeBundle("0.2.0-1");
  const uint64_t needed = 2 * fs::file_size(bundle) + (uint64_t{64} << 20);
  free_bytes_ = needed - 1;
  Updater updater = MakeUpdater();
  auto refused = updater.Apply(bundle);
  ASSERT_EQ(refused.status().code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.status().message(), HasSubstr("not enough disk space"));
  EXPECT_THAT(refused.status().message(), HasSubstr("nothing was changed"));
  EXPECT_TRUE(packages_.installs.empty());
  EXPECT_EQ(box_.num_restarts, 0);
  EXPECT_EQ(packages_.num_rebuilds, 0);
  EXPECT_FALSE(Pending());
  EXPECT_FALSE(fs::exists(state_dir_ / "history.jsonl"));
  EXPECT_FALSE(fs::exists(state_dir_ / "packages"));
  EXPECT_FALSE(fs::exists(state_dir_ / "staging")) << "nothing unpacked";

  free_bytes_ = needed;  // Just enough: the same bundle goes through.
  auto applied = MakeUpdater().Apply(bundle);
  ASSERT_TRUE(applied.ok()) << applied.status().ToString();
  EXPECT_EQ(applied->outcome(), v1::UPDATE_OUTCOME_COMMITTED);
}

TEST_F(UpdaterTest, AnOlderBundleIsRefusedUnlessADowngradeIsAskedFor) {
  const fs::path older = MakeBundle("0.0.9-1");
  auto refused = MakeUpdater().Apply(older);
  EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition)
      << "a replayed old bundle must not downgrade the box";
  EXPECT_THAT(refused.status().message(), HasSubstr("older than the installed 0.1.0-1"));
  EXPECT_TRUE(packages_.installs.empty());
  EXPECT_FALSE(fs::exists(state_dir_ / "history.jsonl"));

  auto record = MakeUpdater(/*allow_downgrade=*/true).Apply(older);
  ASSERT_TRUE(record.ok()) << record.status().ToString();
  EXPECT_EQ(record->outcome(), v1::UPDATE_OUTCOME_COMMITTED);
  EXPECT_EQ(packages_.installed["inferbox"], "0.0.9-1");
}

TEST(DebPackageManagerTest, ComparesVersionsAsDpkgDoes) {
  if (!fs::exists("/usr/bin/dpkg")) GTEST_SKIP() << "no dpkg on this machine";
  auto dpkg = MakeDebPackageManager();
  auto compare = [&](const std::string& a, const std::string& b) {
    auto order = dpkg->CompareVersions(a, b);
    EXPECT_TRUE(order.ok()) << order.status().ToString();
    return order.ok() ? *order : 99;
  };
  EXPECT_LT(compare("0.1.0-1", "0.1.0-1+upd1"), 0);
  EXPECT_LT(compare("0.2.0~rc1-1", "0.2.0-1"), 0) << "a tilde sorts before the release";
  EXPECT_GT(compare("1:0.1.0-1", "0.9.0-1"), 0) << "the epoch counts first";
  EXPECT_GT(compare("0.10.0-1", "0.9.0-1"), 0) << "numbers compare as numbers";
  EXPECT_EQ(compare("0.1.0-1", "0.1.0-1"), 0);
  EXPECT_EQ(dpkg->CompareVersions("0.1; rm -rf /", "0.1").status().code(),
            StatusCode::kInvalidArgument);
}

TEST_F(UpdaterTest, OneUpdateAtATime) {
  fs::create_directories(state_dir_);
  auto held = FileLock::TryAcquire(state_dir_);
  ASSERT_TRUE(held.ok());
  Updater updater = MakeUpdater();
  auto refused = updater.Apply(MakeBundle("0.2.0-1"));
  EXPECT_EQ(refused.status().code(), StatusCode::kUnavailable)
      << "a second updater must wait its turn, not interleave with the first";
  EXPECT_EQ(updater.Rollback().status().code(), StatusCode::kUnavailable);
  EXPECT_TRUE(packages_.installs.empty());
}

// The real probe against a static HTTP server standing in for inferboxd's metrics listener.
TEST(HttpReadinessProbeTest, OnlyANewReadyDaemonOfTheExpectedVersionPasses) {
  TempDir temp;
  const fs::path site = temp.path() / "site";
  WriteFile(site / "metrics",
            "# TYPE inferbox_build_info gauge\n"
            "inferbox_build_info{commit=\"abc\",version=\"0.2.0\"} 1\n");
  TestHttpServer server(site);
  std::string address = server.url().substr(std::string_view("http://").size());
  address.pop_back();  // The trailing '/'.
  const fs::path run = temp.path() / "run";
  auto probe = MakeHttpReadinessProbe(run);
  const auto deadline = std::chrono::milliseconds(300);
  const auto restarted_at = std::chrono::system_clock::now();

  Status seen = probe->WaitReady("0.2.0", restarted_at, deadline);
  EXPECT_EQ(seen.code(), StatusCode::kDeadlineExceeded);
  EXPECT_THAT(seen.message(), HasSubstr("no daemon is running"));

  WriteFile(run / "listeners.toml", "grpc = \"\"\nmetrics = \"" + address + "\"\n");
  seen =
      probe->WaitReady("0.2.0", std::chrono::system_clock::now() + std::chrono::hours(1), deadline);
  EXPECT_THAT(seen.message(), HasSubstr("started before the restart"))
      << "a daemon older than the restart (the old version still answering) must not pass";

  seen = probe->WaitReady("0.2.0", restarted_at, deadline);
  EXPECT_THAT(seen.message(), HasSubstr("/health/ready answers 404"));

  WriteFile(site / "health" / "ready", "{\"status\":\"ready\"}");
  EXPECT_TRUE(probe->WaitReady("0.2.0", restarted_at, deadline).ok());
  seen = probe->WaitReady("0.3.0", restarted_at, deadline);
  EXPECT_THAT(seen.message(), HasSubstr("reports version 0.2.0, not 0.3.0"));
  auto running = probe->RunningVersion();
  ASSERT_TRUE(running.ok()) << running.status().ToString();
  EXPECT_EQ(*running, "0.2.0");

  // The models ready before the update must all be ready again: a new version that serves
  // one of two is not ready, even though /health/ready answers 200 for a box that serves any.
  const std::string both = R"({"status":"ready","models":[{"name":"a","ready":true},)"
                           R"({"name":"b","ready":true}]})";
  WriteFile(site / "health" / "ready", both);
  probe->NoteBaseline();
  WriteFile(site / "health" / "ready",
            R"({"status":"degraded","models":[{"name":"a","ready":true},)"
            R"({"name":"b","ready":false}]})");
  seen = probe->WaitReady("0.2.0", restarted_at, deadline);
  EXPECT_THAT(seen.message(), HasSubstr("model b, ready before the update, is not ready"));
  WriteFile(site / "health" / "ready", both);
  EXPECT_TRUE(probe->WaitReady("0.2.0", restarted_at, deadline).ok());

  // A box that had no model ready (none installed yet) needs only a live new daemon.
  WriteFile(site / "health" / "ready", R"({"status":"not_ready","models":[]})");
  probe->NoteBaseline();
  seen = probe->WaitReady("0.2.0", restarted_at, deadline);
  EXPECT_THAT(seen.message(), HasSubstr("/health/live answers 404"));
  WriteFile(site / "health" / "live", "{}");
  EXPECT_TRUE(probe->WaitReady("0.2.0", restarted_at, deadline).ok());
  seen = probe->WaitReady("0.3.0", restarted_at, deadline);
  EXPECT_THAT(seen.message(), HasSubstr("not 0.3.0")) << "the version still counts";
}

}  // namespace
}  // namespace inferbox::provisioning
