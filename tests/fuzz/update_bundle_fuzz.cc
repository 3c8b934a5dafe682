// An update bundle from an untrusted file (R6.8, R6.12): updates run as root, so everything
// read before the signature is checked is parsed from an attacker's bytes. ReadUpdateBundle
// must refuse the bundle and remove its staging folder, or accept it only with a valid
// signature of the trusted key, with every package a regular file inside the staging folder;
// never crash, never write outside.
//
// The trusted key is this target's test key (MakeTestKey), which signs the seed bundle:
// FUZZ_WRITE_SEED=<file> build/tests/fuzz/update_bundle_fuzz <any file> writes a valid one.
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdlib.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "fuzz_input.h"
#include "inferbox/provisioning/update_bundle.h"
#include "temp_dir.h"

namespace {

namespace fs = std::filesystem;
using namespace inferbox::provisioning;

// The target's test key: ed25519 from a fixed seed, so that the seed bundle in the corpus
// stays signed by it. Made at run time: no key material sits in the sources as PEM.
struct TestKey {
  std::string private_pem;
  std::string public_pem;
};

TestKey MakeTestKey() {
  unsigned char seed[32];
  for (unsigned i = 0; i < sizeof(seed); ++i) seed[i] = static_cast<unsigned char>(i * 7 + 1);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, seed, sizeof(seed)), &EVP_PKEY_free);
  if (key == nullptr) inferbox::fuzz::Fail("OpenSSL cannot make an ed25519 key");
  auto pem = [&](bool is_private) {
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), &BIO_free);
    const int written = is_private ? PEM_write_bio_PrivateKey(bio.get(), key.get(), nullptr,
                                                              nullptr, 0, nullptr, nullptr)
                                   : PEM_write_bio_PUBKEY(bio.get(), key.get());
    if (written != 1) inferbox::fuzz::Fail("OpenSSL cannot write a PEM key");
    char* data = nullptr;
    const long size = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, static_cast<size_t>(size));
  };
  return {.private_pem = pem(true), .public_pem = pem(false)};
}

struct Scratch {
  Scratch() {
    fs::create_directory(root / "keys");
    std::ofstream(root / "keys" / "test.pem") << key.public_pem;
    auto loaded = LoadUpdateKeys(root / "keys");
    if (!loaded.ok()) inferbox::fuzz::Fail("the test key does not load");
    keys = std::move(loaded).value();
    if (const char* seed = std::getenv("FUZZ_WRITE_SEED")) WriteSeed(seed);
  }
  void WriteSeed(const fs::path& out) const {
    const fs::path package = root / "inferbox_0.1.0-1_amd64.deb";
    std::ofstream(package) << "not really a deb";
    auto written = WriteUpdateBundle(
        {{.file = package,
          .info = {.name = "inferbox", .version = "0.1.0-1", .architecture = "amd64"}}},
        "deb", out, key.private_pem);
    if (!written.ok()) inferbox::fuzz::Fail("the seed bundle could not be written");
    fs::remove(package);
  }
  const TestKey key = MakeTestKey();
  const inferbox::testing::TempDir dir;  // Removed at exit.
  const fs::path& root = dir.path();
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
  fuzz::FailUnlessOnly(scratch.root, {"keys", "in.ibu", "staging"});
  if (!read.ok()) {
    fuzz::Reached(read.status().message());
    if (fs::exists(staging)) fuzz::Fail("a refused bundle left its staging folder");
    return 0;
  }
  fuzz::Reached("verified");
  if (read->signed_by.empty()) fuzz::Fail("a bundle was accepted without a signature");
  const fs::path inside = fs::weakly_canonical(staging);
  for (const fs::path& file : read->files) {
    if (fs::is_symlink(file) || !fs::is_regular_file(file)) fuzz::Fail("a package is not a file");
    const fs::path relative = fs::weakly_canonical(file).lexically_relative(inside);
    if (relative.empty() || *relative.begin() == "..")
      fuzz::Fail("a package was unpacked outside the staging folder");
  }
  fs::remove_all(staging);
  return 0;
}
