// Mirror installs against a real HTTP server on loopback (port 0) started by the test:
// interrupted transfers resume with a Range request, the allow-list is checked before any
// connection, corrupt files and redirects are refused, signatures are checked.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "inferbox/provisioning/bundle.h"
#include "inferbox/provisioning/model_store.h"
#include "model_files.h"
#include "model_fixtures.h"
#include "signatures.h"
#include "temp_dir.h"
#include "test_http_server.h"

namespace inferbox::provisioning {
namespace {

namespace fs = std::filesystem;
using testing::Entries;
using ::testing::HasSubstr;
using testing::ReadBytes;
using testing::Snapshot;
using testing::TestHttpServer;

constexpr std::string_view kWeightsPath = "/models/tiny/model/model.safetensors";

class MirrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteFakeModel(source_dir());
    Publish();
    options_.mirror.allowed_url_prefixes = {server_.url() + "models/"};
    options_.mirror.connect_timeout = std::chrono::seconds(5);
    options_.mirror.stall_timeout = std::chrono::seconds(5);
  }

  fs::path models_dir() const { return dir_ / "models"; }
  fs::path source_dir() const { return dir_ / "source"; }
  fs::path mirror_dir() const { return dir_ / "www" / "models" / "tiny"; }
  fs::path downloads_dir() const { return models_dir() / ".staging" / "downloads"; }
  std::string model_url() const { return server_.url() + "models/tiny"; }

  // Lays the model out as a mirror serves it: a bundle's members, unpacked.
  void Publish(const std::string& signing_key_pem = "") {
    auto manifest = WriteBundle(source_dir(), dir_ / "scratch.tar");
    ASSERT_TRUE(manifest.ok()) << manifest.status().ToString();
    const std::string json = ToJson(*manifest);
    testing::WriteFile(mirror_dir() / kBundleManifestName, json);
    if (!signing_key_pem.empty()) {
      testing::WriteFile(mirror_dir() / kBundleSignatureName, *SignEd25519(json, signing_key_pem));
    }
    for (const auto& file : manifest->files()) {
      testing::WriteFile(mirror_dir() / "model" / file.path(),
                         ReadBytes(source_dir() / file.path()));
    }
  }

  std::unique_ptr<ModelStore> OpenStore() {
    auto store = ModelStore::Open(models_dir(), options_);
    EXPECT_TRUE(store.ok()) << store.status().ToString();
    return store.ok() ? std::move(store).value() : nullptr;
  }

  std::vector<TestHttpServer::Request> RequestsFor(std::string_view path) const {
    std::vector<TestHttpServer::Request> found;
    for (const auto& request : server_.requests()) {
      if (request.path == path) found.push_back(request);
    }
    return found;
  }

  inferbox::testing::TempDir dir_;
  TestHttpServer server_{dir_ / "www"};
  ModelStoreOptions options_;
};

TEST_F(MirrorTest, AnInterruptedDownloadFailsCleanlyAndTheRetryResumesWithARange) {
  auto store = OpenStore();
  const auto before = Snapshot(models_dir());
  server_.CutNextResponse(std::string(kWeightsPath), 50);

  auto interrupted = store->Install("tiny", MirrorSource{model_url()});
  EXPECT_EQ(interrupted.status().code(), StatusCode::kUnavailable)
      << interrupted.status().ToString();
  EXPECT_THAT(interrupted.status().message(), HasSubstr("installing again resumes"));
  EXPECT_THAT(interrupted.status().message(), HasSubstr("50 of"));
  EXPECT_EQ(Snapshot(models_dir()), before) << "an interrupted install changed the store";
  EXPECT_FALSE(fs::exists(fs::symlink_status(models_dir() / "tiny")));
  const auto kept = Entries(downloads_dir());
  EXPECT_EQ(kept.size(), 3u) << "two finished files and the partial one are kept for the retry";

  std::vector<InstallProgress> reports;
  InstallOptions options;
  options.progress = [&](const InstallProgress& progress) {
    reports.push_back(progress);
    return true;
  };
  auto resumed = store->Install("tiny", MirrorSource{model_url()}, options);
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();

  const auto weights = RequestsFor(kWeightsPath);
  ASSERT_EQ(weights.size(), 2u);
  EXPECT_FALSE(weights[0].range_start.has_value()) << "the first transfer starts from the top";
  ASSERT_TRUE(weights[1].range_start.has_value()) << "the retry did not send a Range request";
  EXPECT_EQ(*weights[1].range_start, 50u) << "the retry must resume where the cut left off";
  EXPECT_EQ(RequestsFor("/models/tiny/model/config.json").size(), 1u)
      << "a file finished before the cut was downloaded again";

  EXPECT_THAT(resumed->source(), HasSubstr("mirror:" + model_url()));
  for (const auto& file : resumed->files()) {
    EXPECT_EQ(ReadBytes(store->ModelPath("tiny") / file.path()),
              ReadBytes(source_dir() / file.path()));
  }
  EXPECT_EQ(reports.back().phase, InstallPhase::kDone);
  EXPECT_EQ(reports.back().done_bytes, resumed->size_bytes());
  EXPECT_TRUE(Entries(downloads_dir()).empty()) << "parts outlived the install";
}

TEST_F(MirrorTest, UrlsOutsideTheAllowListAreRefusedWithoutAConnection) {
  auto store = OpenStore();
  const auto before = Snapshot(models_dir());
  for (const std::string& url : std::vector<std::string>{
           server_.url() + "private/tiny", "http://localhost:1/models/tiny",
           server_.url() + "models/../private", "http://169.254.169.254/latest/meta-data/",
           "file://" + mirror_dir().string()}) {
    auto refused = store->Install("tiny", MirrorSource{url});
    EXPECT_TRUE(refused.status().code() == StatusCode::kPermissionDenied ||
                refused.status().code() == StatusCode::kInvalidArgument)
        << url << ": " << refused.status().ToString();
  }
  EXPECT_EQ(server_.num_connections(), 0u) << "a refused URL was fetched";
  EXPECT_EQ(Snapshot(models_dir()), before);

  options_.mirror.allowed_url_prefixes.clear();
  store = OpenStore();
  EXPECT_THAT(store->Install("tiny", MirrorSource{model_url()}).status().message(),
              HasSubstr("none is configured"));
  EXPECT_EQ(server_.num_connections(), 0u);
}

// A finished part is hard-linked into the staged model of the install that downloaded it,
// which may not have committed yet; a second install whose manifest gives the same digest
// another size must not write to that file (before: it truncated the shared part, emptying
// the first install's verified file, which then went into the store as the blob of that
// digest).
TEST_F(MirrorTest, AnotherInstallNeverWritesToAPartStagedByOne) {
  auto store = OpenStore();
  server_.CutNextResponse(std::string(kWeightsPath), 50);
  ASSERT_FALSE(store->Install("tiny", MirrorSource{model_url()}).ok());  // Parts kept.
  const std::string config = ReadBytes(source_dir() / "config.json");
  fs::path part;
  for (const auto& entry : fs::directory_iterator(downloads_dir())) {
    if (ReadBytes(entry.path()) == config) part = entry.path();
  }
  ASSERT_FALSE(part.empty()) << "config.json's finished part was not kept";
  // Another install's staged link to it.
  const fs::path staged = dir_ / "staged-config.json";
  fs::create_hard_link(part, staged);

  // The mirror's manifest now says config.json is a byte shorter (same digest).
  const fs::path manifest_path = mirror_dir() / kBundleManifestName;
  std::string manifest = ReadBytes(manifest_path);
  const std::string size = std::to_string(config.size());
  const size_t at = manifest.find("\"" + size + "\"");
  ASSERT_NE(at, std::string::npos) << manifest;
  manifest.replace(at + 1, size.size(), std::to_string(config.size() - 1));
  testing::WriteFile(manifest_path, manifest);
  const auto refused = store->Install("other", MirrorSource{model_url()});
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument) << refused.status().ToString();
  EXPECT_THAT(refused.status().message(), HasSubstr("but a verified file of sha256"));
  EXPECT_EQ(ReadBytes(staged), config) << "the staged file changed under its install";
}

TEST_F(MirrorTest, ACorruptFileOnTheMirrorIsRejectedAndNotKept) {
  auto store = OpenStore();
  const auto before = Snapshot(models_dir());
  std::string weights = ReadBytes(mirror_dir() / "model" / "model.safetensors");
  weights[weights.size() - 1] ^= 0x40;
  testing::WriteFile(mirror_dir() / "model" / "model.safetensors", weights);

  auto refused = store->Install("tiny", MirrorSource{model_url()});
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument) << refused.status().ToString();
  EXPECT_THAT(refused.status().message(), HasSubstr("sha256 is"));
  EXPECT_EQ(Snapshot(models_dir()), before);
  const auto manifest = store->Install("x", DirectorySource{source_dir()});  // For the digest.
  ASSERT_TRUE(manifest.ok());
  for (const auto& file : manifest->files()) {
    if (file.path() == "model.safetensors") {
      EXPECT_FALSE(fs::exists(downloads_dir() / (file.sha256() + ".part")))
          << "a corrupt download was kept for resuming";
    }
  }
}

TEST_F(MirrorTest, MissingFilesAndRedirectsAreErrors) {
  auto store = OpenStore();
  EXPECT_EQ(store->Install("tiny", MirrorSource{server_.url() + "models/absent"}).status().code(),
            StatusCode::kNotFound);
  fs::remove(mirror_dir() / "model" / "tokenizer.json");
  auto missing = store->Install("tiny", MirrorSource{model_url()});
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("lacks"));

  server_.Redirect("/models/moved/inferbox-bundle.json", "http://169.254.169.254/");
  auto redirected = store->Install("tiny", MirrorSource{server_.url() + "models/moved"});
  EXPECT_EQ(redirected.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(redirected.status().message(), HasSubstr("redirects are not followed"));
  EXPECT_FALSE(fs::exists(fs::symlink_status(models_dir() / "tiny")));
}

TEST_F(MirrorTest, SignaturesOnTheMirrorAreChecked) {
  const auto key = testing::GenerateEd25519();
  options_.trusted_public_keys_pem = {key.public_pem};
  options_.require_signatures = true;
  auto store = OpenStore();
  auto unsigned_install = store->Install("tiny", MirrorSource{model_url()});
  EXPECT_EQ(unsigned_install.status().code(), StatusCode::kPermissionDenied);
  EXPECT_TRUE(RequestsFor(kWeightsPath).empty()) << "files were fetched before the signature check";

  Publish(testing::GenerateEd25519().private_pem);
  EXPECT_EQ(store->Install("tiny", MirrorSource{model_url()}).status().code(),
            StatusCode::kInvalidArgument);

  Publish(key.private_pem);
  auto installed = store->Install("tiny", MirrorSource{model_url()});
  ASSERT_TRUE(installed.ok()) << installed.status().ToString();
  EXPECT_EQ(installed->signed_by(), *PublicKeyFingerprint(key.public_pem));
}

TEST_F(MirrorTest, FilesTheStoreAlreadyHasAreNotDownloaded) {
  auto store = OpenStore();
  ASSERT_TRUE(store->Install("local", DirectorySource{source_dir()}).ok());
  auto installed = store->Install("tiny", MirrorSource{model_url() + "/"});
  ASSERT_TRUE(installed.ok()) << installed.status().ToString();
  for (const auto& request : server_.requests()) {
    EXPECT_FALSE(request.path.starts_with("/models/tiny/model/")) << request.path << " was fetched";
  }
}

TEST_F(MirrorTest, GarbageCollectionDropsAbandonedPartialDownloads) {
  auto store = OpenStore();
  server_.CutNextResponse(std::string(kWeightsPath), 10);
  ASSERT_FALSE(store->Install("tiny", MirrorSource{model_url()}).ok());
  ASSERT_FALSE(Entries(downloads_dir()).empty());
  store.reset();
  store = OpenStore();
  EXPECT_FALSE(Entries(downloads_dir()).empty()) << "opening the store must keep partial downloads";
  auto stats = store->CollectGarbage();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->num_partial_downloads_removed, 3u);
  EXPECT_TRUE(Entries(downloads_dir()).empty());
}

}  // namespace
}  // namespace inferbox::provisioning
