// The model store with folder sources: layout, manifests, listing, replacing, removing,
// garbage collection, free-space and validation refusals, and crash safety (a child process
// killed mid-install leaves nothing visible; the next open cleans up).
#include "inferbox/provisioning/model_store.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include <gmock/gmock.h>
#include <google/protobuf/util/time_util.h>
#include <gtest/gtest.h>

#include "inferbox/engine/model/safetensors.h"
#include "model_fixtures.h"
#include "temp_dir.h"

namespace inferbox::provisioning {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using testing::Entries;
using ::testing::HasSubstr;
using testing::ReadBytes;
using testing::Snapshot;
using testing::WriteFakeModel;
using testing::WriteFile;

// 2026-01-01T00:00:00Z.
constexpr int64_t kInstallTime = 1767225600;

class ModelStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteFakeModel(source_dir());
    options_.clock = [] {
      return std::chrono::system_clock::time_point(std::chrono::seconds(kInstallTime));
    };
  }

  fs::path models_dir() const { return dir_ / "state" / "models"; }
  fs::path source_dir() const { return dir_ / "source"; }
  fs::path blobs_dir() const { return models_dir() / "store" / "blobs" / "sha256"; }
  fs::path staging_dir() const { return models_dir() / ".staging"; }

  std::unique_ptr<ModelStore> OpenStore() {
    auto store = ModelStore::Open(models_dir(), options_);
    EXPECT_TRUE(store.ok()) << store.status().ToString();
    return store.ok() ? std::move(store).value() : nullptr;
  }

  ModelManifest InstallOrDie(ModelStore& store, const std::string& id, const fs::path& from,
                             InstallOptions options = {}) {
    auto installed = store.Install(id, DirectorySource{from}, options);
    EXPECT_TRUE(installed.ok()) << installed.status().ToString();
    return installed.ok() ? std::move(installed).value() : ModelManifest();
  }

  inferbox::testing::TempDir dir_;
  ModelStoreOptions options_;
};

TEST_F(ModelStoreTest, FolderInstallServesAnEngineLoadableFolderAndRecordsTheManifest) {
  auto store = OpenStore();
  const ModelManifest manifest = InstallOrDie(*store, "qwen3-tiny", source_dir());

  EXPECT_EQ(manifest.id(), "qwen3-tiny");
  EXPECT_EQ(manifest.architecture(), "Qwen3ForCausalLM");
  EXPECT_EQ(manifest.num_parameters(), testing::kFakeModelParameters);
  EXPECT_EQ(manifest.dtype(), "BF16") << "the dtype holding most parameters";
  EXPECT_EQ(manifest.recommended_profile().tensor_parallel(), 1u);
  EXPECT_GT(manifest.recommended_profile().kv_cache_memory_fraction(), 0.0);
  EXPECT_EQ(google::protobuf::util::TimeUtil::TimestampToSeconds(manifest.installed_at()),
            kInstallTime);
  EXPECT_THAT(manifest.source(), HasSubstr("directory:"));
  EXPECT_EQ(manifest.signed_by(), "");
  EXPECT_THAT(manifest.digest(), ::testing::MatchesRegex("sha256:[0-9a-f]{64}"));
  std::vector<std::string> paths;
  uint64_t total = 0;
  for (const auto& file : manifest.files()) {
    paths.push_back(file.path());
    total += file.size_bytes();
  }
  EXPECT_THAT(paths, ElementsAre("config.json", "generation_config.json", "model.safetensors",
                                 "original/params.txt", "tokenizer.json"));
  EXPECT_EQ(manifest.size_bytes(), total);

  // The served view: models/<id>, a symlink to a folder of read-only hard links to the blobs.
  const fs::path view = store->ModelPath("qwen3-tiny");
  EXPECT_EQ(view, models_dir() / "qwen3-tiny");
  EXPECT_TRUE(fs::is_symlink(view));
  EXPECT_EQ(fs::read_symlink(view).string(),
            "store/versions/qwen3-tiny/" + manifest.digest().substr(7) + "/files")
      << "a relative link, so the state directory can move";
  for (const auto& file : manifest.files()) {
    EXPECT_EQ(ReadBytes(view / file.path()), ReadBytes(source_dir() / file.path())) << file.path();
    struct stat served {};
    struct stat blob {};
    ASSERT_EQ(::stat((view / file.path()).c_str(), &served), 0);
    ASSERT_EQ(::stat((blobs_dir() / file.sha256()).c_str(), &blob), 0)
        << "no blob for " << file.path();
    EXPECT_EQ(served.st_ino, blob.st_ino) << file.path() << " is not the blob itself";
    EXPECT_EQ(blob.st_mode & 0777, 0444u);
  }
  auto weights = engine::WeightStore::OpenModelDirectory(view);
  EXPECT_TRUE(weights.ok()) << weights.status().ToString();
  EXPECT_EQ(Entries(staging_dir()), std::vector<std::string>{"downloads"})
      << "staging was not cleaned";

  auto listed = store->List();
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].SerializeAsString(), manifest.SerializeAsString());
  auto got = store->Get("qwen3-tiny");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->digest(), manifest.digest());
  EXPECT_EQ(store->Get("other").status().code(), StatusCode::kNotFound);

  // A second store object (another process, a restart) sees the same.
  store.reset();
  auto reopened = OpenStore();
  EXPECT_EQ(reopened->List()->size(), 1u);
}

TEST_F(ModelStoreTest, ProgressGoesThroughEveryPhaseAndNamesEveryFile) {
  auto store = OpenStore();
  std::vector<InstallProgress> reports;
  InstallOptions options;
  options.progress = [&](const InstallProgress& progress) {
    reports.push_back(progress);
    return true;
  };
  const ModelManifest manifest = InstallOrDie(*store, "m", source_dir(), options);
  ASSERT_FALSE(reports.empty());
  EXPECT_EQ(reports.front().phase, InstallPhase::kPreparing);
  EXPECT_EQ(reports.back().phase, InstallPhase::kDone);
  EXPECT_EQ(reports.back().done_bytes, manifest.size_bytes());
  EXPECT_EQ(reports.back().total_bytes, manifest.size_bytes());
  std::set<std::string> named;
  std::vector<InstallPhase> phases;
  uint64_t last_done = 0;
  for (const auto& report : reports) {
    if (!report.current_file.empty()) named.insert(report.current_file);
    if (phases.empty() || phases.back() != report.phase) phases.push_back(report.phase);
    EXPECT_GE(report.done_bytes, last_done) << "progress went backwards";
    last_done = report.done_bytes;
  }
  EXPECT_THAT(phases, ElementsAre(InstallPhase::kPreparing, InstallPhase::kTransferring,
                                  InstallPhase::kValidating, InstallPhase::kCommitting,
                                  InstallPhase::kDone));
  EXPECT_EQ(named.size(), 5u);
  EXPECT_EQ(InstallPhaseName(InstallPhase::kTransferring), "transferring");
}

TEST_F(ModelStoreTest, SameContentsAgainIsANoOpAndOtherContentsNeedReplace) {
  auto store = OpenStore();
  const ModelManifest first = InstallOrDie(*store, "m", source_dir());
  const ModelManifest again = InstallOrDie(*store, "m", source_dir());
  EXPECT_EQ(again.SerializeAsString(), first.SerializeAsString()) << "the first install stays";

  WriteFakeModel(dir_ / "v2", /*variant=*/1);
  const auto snapshot = Snapshot(models_dir());
  auto refused = store->Install("m", DirectorySource{dir_ / "v2"});
  EXPECT_EQ(refused.status().code(), StatusCode::kAlreadyExists);
  EXPECT_THAT(refused.status().message(), HasSubstr("replace"));
  EXPECT_EQ(Snapshot(models_dir()), snapshot);

  InstallOptions replace;
  replace.replace = true;
  const ModelManifest second = InstallOrDie(*store, "m", dir_ / "v2", replace);
  EXPECT_NE(second.digest(), first.digest());
  EXPECT_EQ(store->Get("m")->digest(), second.digest());
  EXPECT_EQ(ReadBytes(store->ModelPath("m") / "model.safetensors"),
            ReadBytes(dir_ / "v2" / "model.safetensors"));
  EXPECT_EQ(Entries(models_dir() / "store" / "versions" / "m"),
            std::vector<std::string>{second.digest().substr(7)})
      << "the replaced version was not removed";
}

TEST_F(ModelStoreTest, FoldersTheStoreDidNotMakeAreLeftAlone) {
  WriteFakeModel(models_dir() / "inferbox-demo");
  auto store = OpenStore();
  EXPECT_TRUE(store->List()->empty());
  auto refused = store->Install("inferbox-demo", DirectorySource{source_dir()});
  EXPECT_EQ(refused.status().code(), StatusCode::kAlreadyExists);
  EXPECT_THAT(refused.status().message(), HasSubstr("not installed through the model store"));
  EXPECT_EQ(store->Remove("inferbox-demo", {}).code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(fs::exists(models_dir() / "inferbox-demo" / "config.json"));
}

TEST_F(ModelStoreTest, BadIdsAreRefused) {
  auto store = OpenStore();
  for (const std::string& id :
       std::vector<std::string>{"", "Upper", "-dash", "a/b", "..", "store", std::string(65, 'a')}) {
    EXPECT_EQ(store->Install(id, DirectorySource{source_dir()}).status().code(),
              StatusCode::kInvalidArgument)
        << id;
  }
  EXPECT_THAT(store->Install("store", DirectorySource{source_dir()}).status().message(),
              HasSubstr("reserved"));
}

TEST_F(ModelStoreTest, RemoveRefusesWhileLoadedThenRemovesAtomically) {
  auto store = OpenStore();
  const ModelManifest manifest = InstallOrDie(*store, "m", source_dir());
  std::vector<std::string> asked;
  auto loaded = [&](std::string_view id) {
    asked.emplace_back(id);
    return true;
  };
  const Status refused = store->Remove("m", loaded);
  EXPECT_EQ(refused.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.message(), HasSubstr("loaded"));
  EXPECT_THAT(asked, ElementsAre("m"));
  EXPECT_TRUE(fs::exists(store->ModelPath("m") / "config.json"));

  ASSERT_TRUE(store->Remove("m", [](std::string_view) { return false; }).ok());
  EXPECT_FALSE(fs::exists(fs::symlink_status(store->ModelPath("m"))));
  EXPECT_TRUE(store->List()->empty());
  EXPECT_FALSE(fs::exists(models_dir() / "store" / "versions" / "m"));
  EXPECT_EQ(store->Remove("m", {}).code(), StatusCode::kNotFound);
  EXPECT_EQ(Entries(blobs_dir()).size(), 5u) << "blobs stay until garbage collection";
}

TEST_F(ModelStoreTest, GarbageCollectionRemovesOnlyUnreferencedBlobs) {
  auto store = OpenStore();
  WriteFakeModel(dir_ / "v2", /*variant=*/1);
  const ModelManifest kept = InstallOrDie(*store, "kept", source_dir());
  const ModelManifest removed = InstallOrDie(*store, "removed", dir_ / "v2");
  EXPECT_EQ(Entries(blobs_dir()).size(), 6u) << "two models sharing four files make six blobs";
  WriteFile(blobs_dir() / std::string(64, 'f'), "stray");

  ASSERT_TRUE(store->Remove("removed", {}).ok());
  auto stats = store->CollectGarbage();
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->num_blobs_removed, 2u);
  std::vector<std::string> expected;
  for (const auto& file : kept.files()) expected.push_back(file.sha256());
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(Entries(blobs_dir()), expected);
  for (const auto& file : kept.files()) {
    EXPECT_EQ(ReadBytes(store->ModelPath("kept") / file.path()),
              ReadBytes(source_dir() / file.path()));
  }
  EXPECT_EQ(store->CollectGarbage()->num_blobs_removed, 0u);
}

TEST_F(ModelStoreTest, NotEnoughDiskIsAClearErrorBeforeAnythingIsWritten) {
  options_.free_space = [](const fs::path&) -> Result<uint64_t> { return uint64_t{100}; };
  auto store = OpenStore();
  const auto snapshot = Snapshot(models_dir());
  auto refused = store->Install("m", DirectorySource{source_dir()});
  EXPECT_EQ(refused.status().code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.status().message(), HasSubstr("not enough disk space"));
  EXPECT_THAT(refused.status().message(), HasSubstr("100 bytes is free"));
  EXPECT_THAT(refused.status().message(), ::testing::MatchesRegex(".*needs [0-9]+ bytes.*"));
  EXPECT_EQ(Snapshot(models_dir()), snapshot);
  EXPECT_EQ(Entries(staging_dir()), std::vector<std::string>{"downloads"});
}

TEST_F(ModelStoreTest, ModelsTheEngineCouldNotReadAreRefused) {
  auto store = OpenStore();
  const auto snapshot = Snapshot(models_dir());
  auto expect_refused = [&](const std::string& why) {
    auto refused = store->Install("m", DirectorySource{source_dir()});
    EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument) << why;
    EXPECT_THAT(refused.status().message(), HasSubstr(why));
    EXPECT_EQ(Snapshot(models_dir()), snapshot) << why;
    WriteFakeModel(source_dir());
  };
  WriteFile(source_dir() / "config.json", "{\"architectures\": [");
  expect_refused("config.json is not valid JSON");
  WriteFile(source_dir() / "config.json", "{\"model_type\": \"qwen3\"}");
  expect_refused("no \"architectures\"");
  fs::remove(source_dir() / "config.json");
  expect_refused("no config.json");
  const std::string weights = ReadBytes(source_dir() / "model.safetensors");
  WriteFile(source_dir() / "model.safetensors", weights.substr(0, weights.size() - 3));
  expect_refused("model.safetensors: tensor");
  fs::remove(source_dir() / "model.safetensors");
  expect_refused("no *.safetensors");
  WriteFile(source_dir() / "model.safetensors.index.json",
            R"({"weight_map": {"model.norm.weight": "model-00002.safetensors"}})");
  expect_refused("model-00002.safetensors");
  fs::remove(source_dir() / "model.safetensors.index.json");
  WriteFile(source_dir() / "tokenizer.json", "{");
  expect_refused("tokenizer.json is not valid JSON");
}

TEST_F(ModelStoreTest, ACancelledInstallLeavesNothing) {
  auto store = OpenStore();
  const auto snapshot = Snapshot(models_dir());
  InstallOptions options;
  options.progress = [](const InstallProgress& progress) {
    return progress.phase != InstallPhase::kValidating;
  };
  EXPECT_EQ(store->Install("m", DirectorySource{source_dir()}, options).status().code(),
            StatusCode::kCancelled);
  EXPECT_EQ(Snapshot(models_dir()), snapshot);
  EXPECT_EQ(Entries(staging_dir()), std::vector<std::string>{"downloads"});
}

TEST_F(ModelStoreTest, ConcurrentInstallsOfDifferentModelsBothLand) {
  auto store = OpenStore();
  WriteFakeModel(dir_ / "v2", /*variant=*/1);
  Status first;
  Status second;
  std::thread a([&] { first = store->Install("a", DirectorySource{source_dir()}).status(); });
  std::thread b([&] { second = store->Install("b", DirectorySource{dir_ / "v2"}).status(); });
  a.join();
  b.join();
  EXPECT_TRUE(first.ok()) << first.ToString();
  EXPECT_TRUE(second.ok()) << second.ToString();
  EXPECT_EQ(store->List()->size(), 2u);
  EXPECT_EQ(Entries(blobs_dir()).size(), 6u);
}

TEST_F(ModelStoreTest, OpeningRequiresKeysWhenSignaturesAreRequired) {
  options_.require_signatures = true;
  EXPECT_EQ(ModelStore::Open(models_dir(), options_).status().code(), StatusCode::kInvalidArgument);
  options_.trusted_public_keys_pem = {testing::GenerateEd25519().public_pem};
  auto store = OpenStore();
  auto refused = store->Install("m", DirectorySource{source_dir()});
  EXPECT_EQ(refused.status().code(), StatusCode::kPermissionDenied);
  EXPECT_THAT(refused.status().message(), HasSubstr("signed bundle"));
}

// Crash safety: a child installs and stops at a point the parent chooses; the parent kills it
// with SIGKILL there, as a power cut or kill -9 would.
class ModelStoreCrashTest : public ModelStoreTest {
 protected:
  // Runs an install in a child that writes a byte to a pipe and stops when `stop_here`
  // returns true, and kills the child there.
  void KillInstallWhen(
      const std::function<bool(const InstallProgress*, std::string_view)>& stop_here) {
    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      ::close(ready[0]);
      auto stop = [&] {
        const char byte = 1;
        if (::write(ready[1], &byte, 1) != 1) ::_exit(3);
        for (;;) ::pause();
      };
      ModelStoreOptions options = options_;
      options.fault_hook = [&](std::string_view point) {
        if (stop_here(nullptr, point)) stop();
      };
      auto store = ModelStore::Open(models_dir(), options);
      if (!store.ok()) ::_exit(1);
      InstallOptions install;
      install.progress = [&](const InstallProgress& progress) {
        if (stop_here(&progress, {})) stop();
        return true;
      };
      (void)(*store)->Install("m", DirectorySource{source_dir()}, install);
      ::_exit(2);  // Finished without reaching the point: the parent reports it.
    }
    ::close(ready[1]);
    char byte = 0;
    const ssize_t got = ::read(ready[0], &byte, 1);
    ::close(ready[0]);
    ASSERT_EQ(::kill(child, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_EQ(got, 1) << "the child exited (status " << status << ") before the kill point";
    ASSERT_TRUE(WIFSIGNALED(status));
  }
};

TEST_F(ModelStoreCrashTest, KilledWhileCopyingLeavesNoModelAndTheNextOpenCleansStaging) {
  OpenStore();  // Creates the folders.
  const auto snapshot = Snapshot(models_dir());
  ASSERT_NO_FATAL_FAILURE(KillInstallWhen([](const InstallProgress* progress, std::string_view) {
    return progress != nullptr && progress->phase == InstallPhase::kTransferring &&
           progress->done_bytes > 0;
  }));
  EXPECT_FALSE(fs::exists(fs::symlink_status(models_dir() / "m")));
  EXPECT_EQ(Snapshot(models_dir()), snapshot) << "the killed install changed the visible store";
  EXPECT_EQ(Entries(staging_dir()).size(), 2u)
      << "the killed install's staging folder should remain";

  auto store = OpenStore();
  EXPECT_EQ(Entries(staging_dir()), std::vector<std::string>{"downloads"});
  EXPECT_TRUE(store->List()->empty());
  InstallOrDie(*store, "m", source_dir());
}

TEST_F(ModelStoreCrashTest, KilledJustBeforeTheCommitPointLeavesNoModelAndNoOrphans) {
  OpenStore();
  ASSERT_NO_FATAL_FAILURE(KillInstallWhen(
      [](const InstallProgress*, std::string_view point) { return point == "before-commit"; }));
  EXPECT_FALSE(fs::exists(fs::symlink_status(models_dir() / "m")));
  EXPECT_FALSE(Entries(models_dir() / "store" / "versions" / "m").empty())
      << "the version should have been in place when the child was killed";

  auto store = OpenStore();
  EXPECT_TRUE(store->List()->empty());
  EXPECT_TRUE(Entries(models_dir() / "store" / "versions").empty()) << "the orphan version stayed";
  auto stats = store->CollectGarbage();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->num_blobs_removed, 5u);
  EXPECT_TRUE(Entries(blobs_dir()).empty());
  InstallOrDie(*store, "m", source_dir());
}

TEST_F(ModelStoreCrashTest, OpeningLeavesALiveInstallAlone) {
  auto store = OpenStore();
  std::atomic<bool> opened{false};
  InstallOptions options;
  // While this install is copying, another store object opens the same folder (a second
  // process would do the same): the live staging folder must survive it.
  options.progress = [&](const InstallProgress& progress) {
    if (progress.phase == InstallPhase::kTransferring && !opened.exchange(true)) {
      auto other = ModelStore::Open(models_dir(), options_);
      EXPECT_TRUE(other.ok());
    }
    return true;
  };
  InstallOrDie(*store, "m", source_dir(), options);
  EXPECT_TRUE(opened.load());
  EXPECT_EQ(store->List()->size(), 1u);
}

}  // namespace
}  // namespace inferbox::provisioning
