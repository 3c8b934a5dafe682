// inferbox-bundle: makes a model bundle (provisioning/include/inferbox/provisioning/bundle.h)
// from a model folder, for installing on boxes without a network:
//
//   inferbox-bundle create --model DIR --out qwen3-8b.ibx [--zstd] [--sign-key key.pem]
//
// and a signed update bundle of the box's own packages (update_bundle.h), for
// `inferboxctl update apply`:
//
//   inferbox-bundle update --package inferbox_0.2.0-1_amd64.deb [--package ...]
//       --out inferbox-update_0.2.0-1.ibu --sign-key key.pem
//
// Keys: `openssl genpkey -algorithm ed25519 -out key.pem` makes a signing key, and
// `openssl pkey -in key.pem -pubout -out key.pub.pem` the public key a box trusts.
#include <cstdio>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "inferbox/common/atomic_file.h"
#include "inferbox/provisioning/bundle.h"
#include "inferbox/provisioning/update_bundle.h"
#include "inferbox/provisioning/update_system.h"

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

struct UpdateOptions {
  std::vector<std::string> packages;
  std::string out;
  std::string sign_key;
};

int Update(const UpdateOptions& options) {
  namespace pv = inferbox::provisioning;
  auto fail = [](const inferbox::Status& status) {
    std::fprintf(stderr, "inferbox-bundle: %s\n", status.ToString().c_str());
    return 1;
  };
  const bool rpm = options.packages.front().ends_with(".rpm");
  for (const std::string& file : options.packages) {
    if (file.ends_with(".rpm") != rpm || !(file.ends_with(".rpm") || file.ends_with(".deb"))) {
      return fail(inferbox::InvalidArgumentError(
          "packages must all be .deb files or all .rpm files: " + file));
    }
  }
  auto manager = rpm ? pv::MakeRpmPackageManager() : pv::MakeDebPackageManager();
  std::vector<pv::UpdateBundleInput> inputs;
  for (const std::string& file : options.packages) {
    auto info = manager->Inspect(file);
    if (!info.ok()) return fail(info.status());
    inputs.push_back({file, std::move(info).value()});
  }
  auto key = inferbox::ReadFile(options.sign_key);
  if (!key.ok()) return fail(key.status());
  auto manifest = pv::WriteUpdateBundle(inputs, manager->format(), options.out, *key);
  if (!manifest.ok()) return fail(manifest.status());
  std::printf("wrote %s: update to %s %s (%s, %s), %d packages, signed\n", options.out.c_str(),
              std::string(pv::kMainPackage).c_str(), manifest->version().c_str(),
              manifest->package_format().c_str(), manifest->architecture().c_str(),
              manifest->packages_size());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Make inferbox model bundles (tar, optionally zstd, optionally ed25519-signed) and signed "
      "update bundles"};
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
  UpdateOptions update;
  auto* update_command =
      app.add_subcommand("update", "Write a signed update bundle of the box's packages");
  update_command
      ->add_option("--package", update.packages,
                   "A package file (.deb or .rpm); repeat for each, one must be inferbox")
      ->required();
  update_command->add_option("--out", update.out, "Update bundle file to write")->required();
  update_command
      ->add_option("--sign-key", update.sign_key,
                   "ed25519 private key (PEM) to sign with (updates are always signed)")
      ->required();
  CLI11_PARSE(app, argc, argv);
  if (create_command->parsed()) return Create(create);
  if (update_command->parsed()) return Update(update);
  return 1;
}
