// Bundles: written by WriteBundle (plain and zstd, signed or not) and installed; signature
// policy; and hand-made hostile or corrupt bundles, each refused with the store unchanged.
#include "inferbox/provisioning/bundle.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "file_ops.h"
#include "inferbox/provisioning/model_store.h"
#include "model_files.h"
#include "model_fixtures.h"
#include "signatures.h"
#include "temp_dir.h"

namespace inferbox::provisioning {
namespace {

namespace fs = std::filesystem;
using testing::Entries;
using ::testing::HasSubstr;
using testing::ReadBytes;
using testing::Snapshot;
using testing::TarMember;
using testing::WriteTar;

class BundleTest : public ::testing::Test {
 protected:
  void SetUp() override { testing::WriteFakeModel(source_dir()); }

  fs::path models_dir() const { return dir_ / "models"; }
  fs::path source_dir() const { return dir_ / "source"; }
  fs::path blobs_dir() const { return models_dir() / "store" / "blobs" / "sha256"; }

  std::unique_ptr<ModelStore> OpenStore(ModelStoreOptions options = {}) {
    auto store = ModelStore::Open(models_dir(), std::move(options));
    EXPECT_TRUE(store.ok()) << store.status().ToString();
    return store.ok() ? std::move(store).value() : nullptr;
  }

  fs::path Bundle(const std::string& name, BundleWriteOptions options = {}) {
    const fs::path path = dir_ / name;
    auto written = WriteBundle(source_dir(), path, options);
    EXPECT_TRUE(written.ok()) << written.status().ToString();
    return path;
  }

  // Members of a bundle of `files` (path -> contents) whose manifest lists `listed` (the
  // files themselves when empty), for tests that then spoil something.
  static std::vector<TarMember> Members(const std::map<std::string, std::string>& files,
                                        std::map<std::string, std::string> listed = {}) {
    if (listed.empty()) listed = files;
    BundleManifest manifest;
    manifest.set_format_version(kBundleFormatVersion);
    for (const auto& [path, contents] : listed) {
      ModelFile* file = manifest.add_files();
      file->set_path(path);
      file->set_size_bytes(contents.size());
      file->set_sha256(Sha256Hex(contents));
    }
    std::vector<TarMember> members = {
        {.name = std::string(kBundleManifestName), .contents = ToJson(manifest)}};
    for (const auto& [path, contents] : files) {
      members.push_back({.name = "model/" + path, .contents = contents});
    }
    return members;
  }

  // The fake model's files, for hand-made bundles.
  std::map<std::string, std::string> ModelFiles() const {
    std::map<std::string, std::string> files;
    for (const char* path : {"config.json", "model.safetensors", "tokenizer.json"}) {
      files[path] = ReadBytes(source_dir() / path);
    }
    return files;
  }

  // Installs the bundle at `path` and expects it refused with `code` and `why`, the store
  // unchanged and its staging empty.
  void ExpectRefused(ModelStore& store, const fs::path& path, StatusCode code,
                     const std::string& why, const InstallOptions& options = {}) {
    const auto before = Snapshot(models_dir());
    auto refused = store.Install("m", BundleSource{path}, options);
    EXPECT_EQ(refused.status().code(), code) << refused.status().ToString();
    EXPECT_THAT(refused.status().message(), HasSubstr(why));
    EXPECT_EQ(Snapshot(models_dir()), before) << "a refused bundle changed the store";
    EXPECT_EQ(Entries(models_dir() / ".staging"), std::vector<std::string>{"downloads"});
  }

  inferbox::testing::TempDir dir_;
};

TEST_F(BundleTest, PlainAndZstdBundlesInstallTheSameModelAsTheFolder) {
  const fs::path plain = Bundle("m.tar");
  BundleWriteOptions zstd_options;
  zstd_options.compression = BundleCompression::kZstd;
  const fs::path zstd = Bundle("m.tar.zst", zstd_options);
  EXPECT_EQ(ReadBytes(zstd).substr(0, 4), std::string("\x28\xb5\x2f\xfd")) << "not zstd";
  EXPECT_NE(ReadBytes(plain).substr(0, 4), std::string("\x28\xb5\x2f\xfd"));

  auto store = OpenStore();
  auto from_folder = store->Install("folder", DirectorySource{source_dir()});
  auto from_plain = store->Install("plain", BundleSource{plain});
  auto from_zstd = store->Install("zstd", BundleSource{zstd});
  ASSERT_TRUE(from_folder.ok()) << from_folder.status().ToString();
  ASSERT_TRUE(from_plain.ok()) << from_plain.status().ToString();
  ASSERT_TRUE(from_zstd.ok()) << from_zstd.status().ToString();
  EXPECT_EQ(from_plain->digest(), from_folder->digest()) << "same files, same digest";
  EXPECT_EQ(from_zstd->digest(), from_folder->digest());
  EXPECT_THAT(from_zstd->source(), HasSubstr("bundle:"));
  EXPECT_EQ(from_zstd->num_parameters(), testing::kFakeModelParameters);
  for (const auto& file : from_zstd->files()) {
    EXPECT_EQ(ReadBytes(store->ModelPath("zstd") / file.path()),
              ReadBytes(source_dir() / file.path()));
  }
  EXPECT_EQ(Entries(blobs_dir()).size(), 5u) << "three installs of one model share its blobs";
}

TEST_F(BundleTest, ABundleOfAnInstalledModelIsNotUnpackedAgain) {
  const fs::path bundle = Bundle("m.tar");
  auto store = OpenStore();
  ASSERT_TRUE(store->Install("m", BundleSource{bundle}).ok());
  std::vector<InstallProgress> reports;
  InstallOptions options;
  options.progress = [&](const InstallProgress& progress) {
    reports.push_back(progress);
    return true;
  };
  ASSERT_TRUE(store->Install("m", BundleSource{bundle}, options).ok());
  ASSERT_EQ(reports.size(), 2u) << "preparing, then done: nothing transferred";
  EXPECT_EQ(reports.back().phase, InstallPhase::kDone);
}

TEST_F(BundleTest, SignedBundlesVerifyAgainstTrustedKeys) {
  const auto key = testing::GenerateEd25519();
  BundleWriteOptions signing;
  signing.signing_key_pem = key.private_pem;
  const fs::path bundle = Bundle("signed.tar", signing);
  EXPECT_FALSE(fs::exists(bundle.string() + ".sig")) << "detached only when asked";

  ModelStoreOptions options;
  options.trusted_public_keys_pem = {testing::GenerateEd25519().public_pem, key.public_pem};
  options.require_signatures = true;
  auto store = OpenStore(options);
  auto installed = store->Install("m", BundleSource{bundle});
  ASSERT_TRUE(installed.ok()) << installed.status().ToString();
  EXPECT_EQ(installed->signed_by(), *PublicKeyFingerprint(key.public_pem));
}

TEST_F(BundleTest, ADetachedSignatureBesideTheBundleCounts) {
  const auto key = testing::GenerateEd25519();
  BundleWriteOptions signing;
  signing.signing_key_pem = key.private_pem;
  signing.detached_signature = true;
  const fs::path signed_bundle = Bundle("signed.tar", signing);
  ASSERT_TRUE(fs::exists(signed_bundle.string() + ".sig"));

  // An unsigned bundle plus a detached signature over its manifest.
  const fs::path bundle = dir_ / "unsigned.tar";
  auto manifest = WriteBundle(source_dir(), bundle);
  ASSERT_TRUE(manifest.ok());
  testing::WriteFile(dir_ / "elsewhere.sig", *SignEd25519(ToJson(*manifest), key.private_pem));

  ModelStoreOptions options;
  options.trusted_public_keys_pem = {key.public_pem};
  options.require_signatures = true;
  auto store = OpenStore(options);
  ExpectRefused(*store, bundle, StatusCode::kPermissionDenied, "not signed");
  auto installed = store->Install("m", BundleSource{bundle, dir_ / "elsewhere.sig"});
  ASSERT_TRUE(installed.ok()) << installed.status().ToString();
  EXPECT_FALSE(installed->signed_by().empty());
  fs::copy_file(dir_ / "elsewhere.sig", bundle.string() + ".sig");
  ASSERT_TRUE(store->Remove("m", {}).ok());
  EXPECT_TRUE(store->Install("m", BundleSource{bundle}).ok()) << "<bundle>.sig is found by name";
}

TEST_F(BundleTest, BadSignaturesAreRejectedAndTheStoreIsUnchanged) {
  const auto trusted = testing::GenerateEd25519();
  const auto stranger = testing::GenerateEd25519();
  ModelStoreOptions options;
  options.trusted_public_keys_pem = {trusted.public_pem};
  auto store = OpenStore(options);

  BundleWriteOptions by_stranger;
  by_stranger.signing_key_pem = stranger.private_pem;
  ExpectRefused(*store, Bundle("stranger.tar", by_stranger), StatusCode::kInvalidArgument,
                "verifies with none of the box's 1 trusted keys");

  // A manifest changed after signing: the signature is the trusted key's, over other bytes.
  auto members = Members(ModelFiles());
  const std::string signature = *SignEd25519(members[0].contents, trusted.private_pem);
  members[0].contents.insert(members[0].contents.size() - 2, " ");
  members.insert(members.begin() + 1,
                 TarMember{.name = std::string(kBundleSignatureName), .contents = signature});
  WriteTar(dir_ / "tampered.tar", members);
  ExpectRefused(*store, dir_ / "tampered.tar", StatusCode::kInvalidArgument,
                "changed after signing");

  testing::WriteFile(dir_ / "garbage.tar.sig", "not base64 at all");
  fs::copy_file(Bundle("plain.tar"), dir_ / "garbage.tar");
  ExpectRefused(*store, dir_ / "garbage.tar", StatusCode::kInvalidArgument, "not 64 bytes");
  EXPECT_TRUE(Entries(blobs_dir()).empty());
}

TEST_F(BundleTest, UnsignedBundlesAreRejectedWhenSignaturesAreRequired) {
  const fs::path bundle = Bundle("unsigned.tar");
  ModelStoreOptions options;
  options.trusted_public_keys_pem = {testing::GenerateEd25519().public_pem};
  auto optional_store = OpenStore(options);
  InstallOptions require;
  require.require_signature = true;
  ExpectRefused(*optional_store, bundle, StatusCode::kPermissionDenied, "not signed", require);
  optional_store.reset();

  options.require_signatures = true;
  auto store = OpenStore(options);
  ExpectRefused(*store, bundle, StatusCode::kPermissionDenied, "requires a signature");

  ModelStoreOptions no_keys;
  auto keyless = OpenStore(no_keys);
  ExpectRefused(*keyless, bundle, StatusCode::kFailedPrecondition, "no trusted keys", require);
  EXPECT_TRUE(keyless->Install("m", BundleSource{bundle}).ok()) << "unsigned is fine when optional";
}

TEST_F(BundleTest, PathTraversalAndLinksInTheArchiveAreRefused) {
  auto store = OpenStore();
  const auto files = ModelFiles();
  struct Case {
    std::string name;
    std::vector<TarMember> members;
    std::string why;
  };
  std::vector<Case> cases;
  {
    auto members = Members(files);
    members.push_back({.name = "model/../../escaped.txt", .contents = "owned"});
    cases.push_back({"dotdot", members, "leaves the model folder"});
  }
  {
    auto members = Members(files);
    members.push_back({.name = "/tmp/absolute.txt", .contents = "owned"});
    cases.push_back({"absolute", members, "unexpected member"});
  }
  {
    auto members = Members(files);
    members.push_back(
        {.name = "model/link", .type = TarMember::Type::kSymlink, .link_target = "/etc/passwd"});
    cases.push_back({"symlink", members, "is a symlink"});
  }
  {
    auto members = Members(files);
    members.push_back({.name = "model/hard",
                       .type = TarMember::Type::kHardlink,
                       .link_target = "model/config.json"});
    cases.push_back({"hardlink", members, "is a hard link"});
  }
  {
    auto listed = files;
    listed["../../escaped.txt"] = "owned";
    cases.push_back({"manifest-dotdot", Members(files, listed), "leaves the model folder"});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const fs::path path = dir_ / (c.name + ".tar");
    WriteTar(path, c.members);
    ExpectRefused(*store, path, StatusCode::kInvalidArgument, c.why);
  }
  EXPECT_FALSE(fs::exists(dir_ / "escaped.txt"));
  EXPECT_FALSE(fs::exists(models_dir() / "escaped.txt"));
  EXPECT_FALSE(fs::exists("/tmp/absolute.txt"));
}

TEST_F(BundleTest, CorruptOrIncompleteBundlesAreRefused) {
  auto store = OpenStore();
  const auto files = ModelFiles();
  {
    auto corrupted = files;
    corrupted["model.safetensors"][20] ^= 0x01;
    auto members = Members(corrupted, files);
    WriteTar(dir_ / "corrupt.tar", members);
    ExpectRefused(*store, dir_ / "corrupt.tar", StatusCode::kInvalidArgument,
                  "model.safetensors: sha256 is");
  }
  {
    auto missing = files;
    missing.erase("tokenizer.json");
    WriteTar(dir_ / "missing.tar", Members(missing, files));
    ExpectRefused(*store, dir_ / "missing.tar", StatusCode::kInvalidArgument,
                  "lacks model/tokenizer.json");
  }
  {
    auto extra = files;
    extra["extra.bin"] = "unlisted";
    WriteTar(dir_ / "extra.tar", Members(extra, files));
    ExpectRefused(*store, dir_ / "extra.tar", StatusCode::kInvalidArgument, "not in its manifest");
  }
  {
    auto members = Members(files);
    members.push_back(members[1]);
    WriteTar(dir_ / "twice.tar", members);
    ExpectRefused(*store, dir_ / "twice.tar", StatusCode::kInvalidArgument, "appears twice");
  }
  {
    auto listed = files;
    listed["config.json"] += " ";
    WriteTar(dir_ / "size.tar", Members(files, listed));
    ExpectRefused(*store, dir_ / "size.tar", StatusCode::kInvalidArgument, "its manifest says");
  }
  {
    auto members = Members(files);
    std::swap(members[0], members[1]);
    WriteTar(dir_ / "order.tar", members);
    ExpectRefused(*store, dir_ / "order.tar", StatusCode::kInvalidArgument,
                  "is not a model bundle");
  }
  {
    const std::string zstd =
        ReadBytes(Bundle("good.tar.zst", {.compression = BundleCompression::kZstd}));
    testing::WriteFile(dir_ / "truncated.tar.zst", zstd.substr(0, zstd.size() / 2));
    ExpectRefused(*store, dir_ / "truncated.tar.zst", StatusCode::kInvalidArgument, "damaged");
  }
  testing::WriteFile(dir_ / "noise.tar", std::string(4096, 'x'));
  ExpectRefused(*store, dir_ / "noise.tar", StatusCode::kInvalidArgument, "damaged");
  EXPECT_EQ(store->Install("m", BundleSource{dir_ / "absent.tar"}).status().code(),
            StatusCode::kNotFound);
  EXPECT_TRUE(Entries(blobs_dir()).empty());
}

TEST_F(BundleTest, OversizedMembersAreRefusedBeforeTheyAreRead) {
  ModelStoreOptions options;
  options.limits.max_manifest_bytes = 64;
  auto store = OpenStore(options);
  ExpectRefused(*store, Bundle("m.tar"), StatusCode::kInvalidArgument, "larger than the 64 bytes");

  ModelStoreOptions small_files;
  small_files.limits.max_file_bytes = 100;
  store = OpenStore(small_files);
  ExpectRefused(*store, dir_ / "m.tar", StatusCode::kInvalidArgument, "at most 100 bytes");
}

}  // namespace
}  // namespace inferbox::provisioning
