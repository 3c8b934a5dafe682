// The store's pure checks: which paths a model may contain, file lists from outside, the
// model digest, the mirror allow-list and ed25519 signatures.
#include "model_files.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "file_ops.h"
#include "inferbox/provisioning/bundle.h"
#include "inferbox/provisioning/mirror.h"
#include "model_fixtures.h"
#include "signatures.h"
#include "temp_dir.h"

namespace inferbox::provisioning {
namespace {

using ::testing::HasSubstr;

ModelFile File(std::string path, uint64_t size, std::string sha256 = std::string(64, 'a')) {
  ModelFile file;
  file.set_path(std::move(path));
  file.set_size_bytes(size);
  file.set_sha256(std::move(sha256));
  return file;
}

TEST(ModelPaths, PlainRelativePathsAreAccepted) {
  const StoreLimits limits;
  for (const char* path : {"config.json", "model-00001-of-00002.safetensors",
                           "original/params.json", "a/b/c/d.bin", "名前.txt", "with space.txt"}) {
    EXPECT_TRUE(ValidateModelPath(path, limits).ok()) << path;
  }
}

TEST(ModelPaths, PathsThatLeaveTheModelOrHideAreRefused) {
  const StoreLimits limits;
  const std::pair<std::string, std::string> cases[] = {
      {"", "empty"},
      {"../etc/passwd", "leaves the model folder"},
      {"a/../../b", "leaves the model folder"},
      {"a/..", "leaves the model folder"},
      {"/etc/passwd", "absolute"},
      {"./config.json", "starting with '.'"},
      {".git/config", "starting with '.'"},
      {"a//b", "empty part"},
      {"a/", "empty part"},
      {"a\\..\\b", "backslash"},
      {std::string("a\nb"), "control character"},
      {std::string("a\0b", 3), "control character"},
      {std::string(600, 'x'), "longer than 512 bytes"},
      {"1/2/3/4/5/6/7/8/9", "more than 8 folders deep"},
  };
  for (const auto& [path, why] : cases) {
    const Status status = ValidateModelPath(path, limits);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << "accepted: " << path;
    EXPECT_THAT(status.message(), HasSubstr(why)) << path;
  }
}

TEST(ModelFileLists, DuplicatesFileFolderClashesAndBoundsAreRefused) {
  StoreLimits limits;
  limits.max_files = 3;
  limits.max_file_bytes = 100;
  limits.max_model_bytes = 150;
  EXPECT_TRUE(ValidateFileList({File("a", 1), File("a-b", 1), File("b/c", 1)}, limits, true).ok());
  EXPECT_THAT(ValidateFileList({}, limits, true).message(), HasSubstr("no files"));
  EXPECT_THAT(ValidateFileList({File("a", 1), File("a", 2)}, limits, true).message(),
              HasSubstr("listed twice"));
  EXPECT_THAT(
      ValidateFileList({File("a", 1), File("a.b", 1), File("a/b", 1)}, limits, true).message(),
      HasSubstr("both a file and a folder"));
  EXPECT_THAT(
      ValidateFileList({File("a", 1), File("b", 1), File("c", 1), File("d", 1)}, limits, true)
          .message(),
      HasSubstr("4 files; at most 3"));
  EXPECT_THAT(ValidateFileList({File("a", 101)}, limits, true).message(),
              HasSubstr("at most 100 bytes"));
  EXPECT_THAT(ValidateFileList({File("a", 100), File("b", 100)}, limits, true).message(),
              HasSubstr("add up to more than"));
  EXPECT_THAT(ValidateFileList({File("a", 1, "ABC")}, limits, true).message(),
              HasSubstr("no sha256"));
  EXPECT_TRUE(ValidateFileList({File("a", 1, "")}, limits, /*require_digests=*/false).ok());
}

TEST(ModelDigest, IsSha256OfTheSortedSha256sumListing) {
  const std::string a(64, 'a');
  const std::string b(64, 'b');
  const std::string listing = b + "  config.json\n" + a + "  model.safetensors\n";
  const std::string expected = "sha256:" + Sha256Hex(listing);
  EXPECT_EQ(ModelDigest({File("model.safetensors", 5, a), File("config.json", 3, b)}), expected);
  EXPECT_EQ(ModelDigest({File("config.json", 3, b), File("model.safetensors", 5, a)}), expected)
      << "the digest must not depend on the order of the list";
  EXPECT_NE(ModelDigest({File("config.json", 3, a), File("model.safetensors", 5, b)}), expected);
  EXPECT_EQ(DigestHex(expected), expected.substr(7));
}

TEST(ModelFolders, ListingSkipsHiddenFollowsFileSymlinksAndRefusesSpecialFiles) {
  inferbox::testing::TempDir dir;
  testing::WriteFakeModel(dir / "m");
  testing::WriteFile(dir / "m" / ".git" / "HEAD", "ref");
  testing::WriteFile(dir / "m" / ".gitattributes", "*");
  testing::WriteFile(dir / "blob", "linked");
  std::filesystem::create_symlink(dir / "blob", dir / "m" / "linked.txt");
  auto files = ListModelFolder(dir / "m", StoreLimits{});
  ASSERT_TRUE(files.ok()) << files.status().ToString();
  std::vector<std::string> paths;
  for (const ModelFile& file : *files) paths.push_back(file.path());
  EXPECT_EQ(paths, (std::vector<std::string>{"config.json", "generation_config.json", "linked.txt",
                                             "model.safetensors", "original/params.txt",
                                             "tokenizer.json"}));
  EXPECT_EQ((*files)[2].size_bytes(), 6u);

  std::filesystem::create_directory_symlink(dir / "m" / "original", dir / "m" / "elsewhere");
  auto refused = ListModelFolder(dir / "m", StoreLimits{});
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("elsewhere"));
  EXPECT_EQ(ListModelFolder(dir / "missing", StoreLimits{}).status().code(), StatusCode::kNotFound);
}

TEST(BundleManifests, VersionAndDigestsAreChecked) {
  const StoreLimits limits;
  BundleManifest manifest;
  manifest.set_format_version(kBundleFormatVersion);
  *manifest.add_files() = File("config.json", 2);
  EXPECT_TRUE(ParseBundleManifest(ToJson(manifest), limits).ok());
  EXPECT_TRUE(ParseBundleManifest(R"({"format_version": 1, "future_field": 3,
      "files": [{"path": "a", "size_bytes": "2", "sha256": ")" +
                                      std::string(64, 'c') + R"("}]})",
                                  limits)
                  .ok())
      << "unknown fields from a newer writer must be ignored";
  manifest.set_format_version(2);
  EXPECT_THAT(ParseBundleManifest(ToJson(manifest), limits).status().message(),
              HasSubstr("format_version 2"));
  EXPECT_THAT(ParseBundleManifest("{not json", limits).status().message(), HasSubstr("not valid"));
  manifest.set_format_version(1);
  manifest.mutable_files(0)->set_path("../x");
  EXPECT_THAT(ParseBundleManifest(ToJson(manifest), limits).status().message(),
              HasSubstr("leaves the model folder"));
}

TEST(MirrorAllowList, UrlsUnderAPrefixAreAllowed) {
  const std::vector<std::string> prefixes = {"https://models.corp.example/inferbox",
                                             "http://10.0.0.5:8080/m/"};
  for (const char* url :
       {"https://models.corp.example/inferbox/qwen3-8b",
        "https://models.corp.example/inferbox/qwen3-8b/",
        "https://MODELS.corp.example/inferbox/a/b", "https://models.corp.example:443/inferbox/x",
        "https://models.corp.example/inferbox", "http://10.0.0.5:8080/m/x"}) {
    EXPECT_TRUE(CheckMirrorUrl(url, prefixes).ok())
        << url << ": " << CheckMirrorUrl(url, prefixes).ToString();
  }
}

TEST(MirrorAllowList, EverythingElseIsRefusedFromTheTextAlone) {
  const std::vector<std::string> prefixes = {"https://models.corp.example/inferbox/"};
  const std::pair<const char*, StatusCode> cases[] = {
      {"https://models.corp.example.evil.com/inferbox/x", StatusCode::kPermissionDenied},
      {"https://evil.com/inferbox/x", StatusCode::kPermissionDenied},
      {"http://models.corp.example/inferbox/x", StatusCode::kPermissionDenied},
      {"https://models.corp.example:8443/inferbox/x", StatusCode::kPermissionDenied},
      {"https://models.corp.example/inferbox-other/x", StatusCode::kPermissionDenied},
      {"https://models.corp.example/", StatusCode::kPermissionDenied},
      {"https://models.corp.example/inferbox/../admin", StatusCode::kInvalidArgument},
      {"https://models.corp.example/inferbox/%2e%2e/admin", StatusCode::kInvalidArgument},
      {"https://models.corp.example/inferbox/a%2f..%2fb", StatusCode::kInvalidArgument},
      {"https://models.corp.example/inferbox/./x", StatusCode::kInvalidArgument},
      {"https://user:pw@models.corp.example/inferbox/x", StatusCode::kInvalidArgument},
      {"https://models.corp.example/inferbox/x?next=http://evil", StatusCode::kInvalidArgument},
      {"https://models.corp.example/inferbox/x#frag", StatusCode::kInvalidArgument},
      {"file:///etc/passwd", StatusCode::kInvalidArgument},
      {"ftp://models.corp.example/inferbox/x", StatusCode::kInvalidArgument},
      {"models.corp.example/inferbox/x", StatusCode::kInvalidArgument},
      {"https://models.corp.example/inferbox/x y", StatusCode::kInvalidArgument},
  };
  for (const auto& [url, code] : cases) {
    EXPECT_EQ(CheckMirrorUrl(url, prefixes).code(), code) << url;
  }
  EXPECT_EQ(CheckMirrorUrl("https://models.corp.example/inferbox/x", {}).code(),
            StatusCode::kPermissionDenied);
  EXPECT_THAT(CheckMirrorUrl("https://evil.com/x", prefixes).message(), HasSubstr("allow-listed"));
}

TEST(MirrorAllowList, PrefixesMustBeHttpUrlsWithAHost) {
  EXPECT_TRUE(CheckMirrorPrefix("https://models.corp.example").ok());
  EXPECT_FALSE(CheckMirrorPrefix("models.corp.example").ok());
  EXPECT_FALSE(CheckMirrorPrefix("file:///srv/models/").ok());
  EXPECT_FALSE(CheckMirrorPrefix("https://user:pw@models.corp.example/").ok());
}

TEST(Signatures, VerifyWithTheTrustedKeyThatSigned) {
  const auto signer = testing::GenerateEd25519();
  const auto other = testing::GenerateEd25519();
  auto signature = SignEd25519("manifest bytes", signer.private_pem);
  ASSERT_TRUE(signature.ok()) << signature.status().ToString();
  auto keys = TrustedKeys::Load({other.public_pem, signer.public_pem});
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  auto verified = (*keys)->Verify("manifest bytes", *signature + "\n");
  ASSERT_TRUE(verified.ok()) << verified.status().ToString();
  EXPECT_EQ(*verified, *PublicKeyFingerprint(signer.public_pem));
  EXPECT_THAT(*verified, ::testing::StartsWith("ed25519:"));

  EXPECT_EQ((*keys)->Verify("manifest bytes!", *signature).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ((*keys)->Verify("manifest bytes", "bm90IGEgc2lnbmF0dXJl").status().code(),
            StatusCode::kInvalidArgument);
  auto only_other = TrustedKeys::Load({other.public_pem});
  EXPECT_THAT((*only_other)->Verify("manifest bytes", *signature).status().message(),
              HasSubstr("verifies with none"));
}

TEST(Signatures, PolicyForUnsignedAndUnverifiableManifests) {
  const auto signer = testing::GenerateEd25519();
  auto keys = TrustedKeys::Load({signer.public_pem});
  auto none = TrustedKeys::Load({});
  const std::string signature = *SignEd25519("m", signer.private_pem);
  EXPECT_EQ(*CheckManifestSignatures(**keys, "m", {}, /*required=*/false), "");
  EXPECT_EQ(CheckManifestSignatures(**keys, "m", {}, true).status().code(),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckManifestSignatures(**none, "m", {signature}, true).status().code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(*CheckManifestSignatures(**none, "m", {signature}, false), "")
      << "a box without keys installs signed models as unsigned";
  EXPECT_EQ(CheckManifestSignatures(**keys, "tampered", {signature}, false).status().code(),
            StatusCode::kInvalidArgument)
      << "a bad signature is refused even when signatures are optional";
  EXPECT_TRUE(CheckManifestSignatures(**keys, "m", {"garbage", signature}, true).ok())
      << "one good signature among several is enough";
}

TEST(Signatures, KeysMustBeEd25519Pem) {
  EXPECT_THAT(TrustedKeys::Load({"not a key"}).status().message(), HasSubstr("trusted key 1"));
  const auto pair = testing::GenerateEd25519();
  EXPECT_EQ(TrustedKeys::Load({pair.private_pem}).status().code(), StatusCode::kInvalidArgument)
      << "a private key is not a public key";
  EXPECT_EQ(SignEd25519("m", pair.public_pem).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace inferbox::provisioning
