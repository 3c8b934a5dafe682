// inferbox-bundle: makes a model bundle (provisioning/include/inferbox/provisioning/bundle.h)
// from a model folder, for installing on boxes without a network:
//
//   inferbox-bundle create --model DIR --out qwen3-8b.ibx [--zstd] [--sign-key key.pem]
//
// Keys: `openssl genpkey -algorithm ed25519 -out key.pem` makes a signing key, and
// `openssl pkey -in key.pem -pubout -out key.pub.pem` the public key a box trusts.
#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>

#include "inferbox/common/atomic_file.h"
#include "inferbox/provisioning/bundle.h"

namespace {

struct CreateOptions {
  std::string model;
  std::string out;
  std::string name;
  std::string sign_key;
  bool zstd = false;
  bool detached = false;
};

int Create(const CreateOptions& options) {
  inferbox::provisioning::BundleWriteOptions write;
  write.compression = options.zstd ? inferbox::provisioning::BundleCompression::kZstd
                                   : inferbox::provisioning::BundleCompression::kNone;
  write.name = options.name;
  write.detached_signature = options.detached;
  if (!options.sign_key.empty()) {
    auto key = inferbox::ReadFile(options.sign_key);
    if (!key.ok()) {
      std::fprintf(stderr, "inferbox-bundle: %s\n", key.status().ToString().c_str());
      return 1;
    }
    write.signing_key_pem = std::move(key).value();
  }
  auto manifest = inferbox::provisioning::WriteBundle(options.model, options.out, write);
  if (!manifest.ok()) {
    std::fprintf(stderr, "inferbox-bundle: %s\n", manifest.status().ToString().c_str());
    return 1;
  }
  uint64_t bytes = 0;
  for (const auto& file : manifest->files()) bytes += file.size_bytes();
  std::string signing = "unsigned";
  if (!options.sign_key.empty()) {
    signing = options.detached ? "signed (signature also in " + options.out + ".sig)" : "signed";
  }
  std::printf("wrote %s: model \"%s\", %d files, %llu bytes, %s%s\n", options.out.c_str(),
              manifest->name().c_str(), manifest->files_size(),
              static_cast<unsigned long long>(bytes), options.zstd ? "zstd, " : "",
              signing.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Make inferbox model bundles (tar, optionally zstd, optionally ed25519-signed)"};
  app.require_subcommand(1);
  CreateOptions create;
  auto* create_command = app.add_subcommand("create", "Write a bundle of a model folder");
  create_command->add_option("--model", create.model, "Model folder (Hugging Face layout)")
      ->required();
  create_command->add_option("--out", create.out, "Bundle file to write")->required();
  create_command->add_option("--name", create.name,
                             "Suggested model id recorded in the bundle (default: folder name)");
  create_command->add_flag("--zstd", create.zstd, "Compress with zstd");
  create_command->add_option("--sign-key", create.sign_key,
                             "ed25519 private key (PEM) to sign the bundle's manifest with");
  create_command->add_flag("--detached-signature", create.detached,
                           "Also write the signature to <out>.sig");
  CLI11_PARSE(app, argc, argv);
  if (create_command->parsed()) return Create(create);
  return 1;
}
