// An update bundle from an untrusted file (R6.8, R6.12): updates run as root, so everything
// read before the signature is checked is parsed from an attacker's bytes. ReadUpdateBundle
// must refuse the bundle and remove its staging folder, or accept it only with a valid
// signature of the trusted key, with every package a regular file inside the staging folder;
// never crash, never write outside.
//
// The trusted key is a test key made for this target (its private half below signs the seed):
// FUZZ_WRITE_SEED=<file> build/tests/fuzz/update_bundle_fuzz <any file> writes a valid bundle.
#include <stdlib.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "fuzz_input.h"
#include "inferbox/provisioning/update_bundle.h"

namespace {

namespace fs = std::filesystem;
using namespace inferbox::provisioning;

constexpr char kTestPublicKey[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VwAyEA6bwptD2M7Q+P0+7TcZSY28bPL29NlmSzTLoqesnej5M=\n"
    "-----END PUBLIC KEY-----\n";
constexpr char kTestPrivateKey[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MC4CAQAwBQYDK2VwBCIEIKNuEiNeos+7YuKQWrqPJt1bNf41co8ff0aRxOUGWDfc\n"
    "-----END PRIVATE KEY-----\n";

struct Scratch {
  Scratch() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/update-fuzz-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) inferbox::fuzz::Fail("mkdtemp failed");
    root = pattern;
    fs::create_directory(root / "keys");
    std::ofstream(root / "keys" / "test.pem") << kTestPublicKey;
    auto loaded = LoadUpdateKeys(root / "keys");
    if (!loaded.ok()) inferbox::fuzz::Fail("the test key does not load");
    keys = std::move(loaded).value();
    if (const char* seed = std::getenv("FUZZ_WRITE_SEED")) WriteSeed(seed);
  }
  ~Scratch() {
    std::error_code ignored;
    fs::remove_all(root, ignored);
  }
  void WriteSeed(const fs::path& out) const {
    const fs::path package = root / "inferbox_0.1.0-1_amd64.deb";
    std::ofstream(package) << "not really a deb";
    auto written = WriteUpdateBundle(
        {{.file = package, .info = {.name = "inferbox", .version = "0.1.0-1", .architecture = "amd64"}}},
        "deb", out, kTestPrivateKey);
    if (!written.ok()) inferbox::fuzz::Fail("the seed bundle could not be written");
    fs::remove(package);
  }
  fs::path root;
  std::shared_ptr<const TrustedKeys> keys;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace inferbox;
  static Scratch scratch;
  const fs::path bundle = scratch.root / "in.ibu";
  const fs::path staging = scratch.root / "staging";
  std::ofstream(bundle, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  auto read = ReadUpdateBundle(bundle, *scratch.keys,
                               {.package_format = "deb", .architecture = "amd64"}, staging);
  for (const auto& entry : fs::directory_iterator(scratch.root)) {
    const std::string name = entry.path().filename().string();
    if (name != "keys" && name != "in.ibu" && name != "staging") fuzz::Fail("a file outside");
  }
  if (!read.ok()) {
    fuzz::Reached(read.status().message());
    if (fs::exists(staging)) fuzz::Fail("a refused bundle left its staging folder");
    return 0;
  }
  fuzz::Reached("verified");
  if (read->signed_by.empty()) fuzz::Fail("a bundle was accepted without a signature");
  for (const fs::path& file : read->files) {
    if (fs::is_symlink(file) || !fs::is_regular_file(file)) fuzz::Fail("a package is not a file");
    if (file.parent_path().string().find(staging.string()) != 0)
      fuzz::Fail("a package was unpacked outside the staging folder");
  }
  fs::remove_all(staging);
  return 0;
}
