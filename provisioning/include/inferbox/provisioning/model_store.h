// The verified model store: installs models from a folder, a bundle or an HTTP(S) mirror into
// the state directory, so that a power cut at any moment leaves either the old state or the
// new one visible, never a half-installed model.
//
// Layout under the models folder (<state_dir>/models):
//
//   <id> -> store/versions/<id>/<hex>/files     the served view: a relative symlink to a
//                                                folder in Hugging Face layout, what the
//                                                daemon's [[models]] path names and the engine
//                                                loads. Swapped atomically (rename over it).
//   store/blobs/sha256/<sha256>                  file contents by digest, read-only (0444),
//                                                shared by every version that has them.
//   store/versions/<id>/<hex>/manifest.json      ModelManifest (manifest.proto) of version <hex>
//                                                (the model digest's hex) of model <id>.
//   store/versions/<id>/<hex>/files/<path>       hard links to the blobs, in the model's layout.
//   store/lock                                   flock(2)ed by every change (other processes too).
//   .staging/<random>/                           installs in progress; cleaned when the store
//                                                opens (an install's flock marks it live).
//   .staging/downloads/<sha256>.part             partial mirror downloads, kept for resuming.
//
// Anything else in the models folder (a hand-made model folder such as the demo model) is
// left alone: it is not listed, and an install under its name is refused. "store" is
// therefore not a model id the store accepts.
//
// An install stages every file under .staging, verifies each digest against the source's
// manifest, validates what the engine will read (config.json and every JSON file parse, every
// safetensors header fits its file), fsyncs, then under the store lock links the files into
// the blob store, renames the staged version into store/versions and, last, renames the new
// symlink over <id>: that rename is the commit point. Leftovers of a crash before it (staging
// folders, versions no symlink names) are removed when the store opens; blobs no manifest
// references are removed by CollectGarbage().
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/provisioning/mirror.h"
#include "inferbox/provisioning/v1/manifest.pb.h"

namespace inferbox::provisioning {

using ModelManifest = inferbox::provisioning::v1::ModelManifest;

// Bounds on what a source may bring (R6.12): checked against manifests before any transfer
// and against the bytes as they arrive.
struct StoreLimits {
  uint64_t max_files = 10'000;
  uint64_t max_file_bytes = uint64_t{512} << 30;      // 512 GiB
  uint64_t max_model_bytes = uint64_t{4} << 40;       // 4 TiB
  uint64_t max_manifest_bytes = uint64_t{16} << 20;   // 16 MiB
  uint64_t max_json_file_bytes = uint64_t{64} << 20;  // config.json, tokenizer.json, ...
  size_t max_path_bytes = 512;
  size_t max_path_depth = 8;
};

struct ModelStoreOptions {
  // Public keys (PEM, "-----BEGIN PUBLIC KEY-----", ed25519) whose bundle signatures the box
  // trusts. A signature that verifies with none of them is refused.
  std::vector<std::string> trusted_public_keys_pem;
  // Refuse every install without a valid signature from a trusted key (so folders too).
  bool require_signatures = false;
  MirrorOptions mirror;
  StoreLimits limits;

  // Bytes free for the store's files; unset: statvfs(2) of the models folder (f_bavail).
  std::function<Result<uint64_t>(const std::filesystem::path&)> free_space;
  // Installed-at times; unset: the system clock.
  std::function<std::chrono::system_clock::time_point()> clock;
  // Tests only: called at named points of an install ("transfer-done": every file staged;
  // "before-commit": under the store lock, the version in place, the symlink not yet) so a
  // test can kill the process there.
  std::function<void(std::string_view point)> fault_hook;
};

// Where an install takes the model from; maps onto InstallModelRequest's `source`.
struct DirectorySource {
  // A folder in Hugging Face layout. Files and folders whose names start with '.' (.git,
  // .cache) are skipped; symlinks to regular files are followed (local Hugging Face caches).
  std::filesystem::path path;
};
struct BundleSource {
  std::filesystem::path path;
  // A detached signature; unset: "<path>.sig" when that file exists.
  std::optional<std::filesystem::path> signature_path;
};
struct MirrorSource {
  // The model's folder on a mirror, under one of MirrorOptions::allowed_url_prefixes; it
  // serves a bundle's contents unpacked (see mirror.h).
  std::string url;
};
using InstallSource = std::variant<DirectorySource, BundleSource, MirrorSource>;

enum class InstallPhase {
  kPreparing,     // Reading the source's manifest, checking its signature and the free space.
  kTransferring,  // Copying, unpacking or downloading files into staging, verifying digests.
  kValidating,    // Checking config.json and the safetensors headers.
  kCommitting,    // Linking blobs, syncing, renaming into place.
  kDone,          // Installed (the last report).
};
std::string_view InstallPhaseName(InstallPhase phase);

struct InstallProgress {
  InstallPhase phase = InstallPhase::kPreparing;
  // Bytes transferred and verified so far (files already in the store count as done), and
  // the model's total. total_bytes is 0 until the source's file list is known.
  uint64_t done_bytes = 0;
  uint64_t total_bytes = 0;
  // The file being transferred, relative to the model folder; empty outside kTransferring.
  std::string current_file;
};

// Called on the installing thread at each phase, at the start and end of every file and
// every few MiB. Returning false cancels the install (CANCELLED; nothing becomes visible).
using ProgressCallback = std::function<bool(const InstallProgress&)>;

struct InstallOptions {
  // On top of the store's require_signatures: a request can tighten the policy, never loosen.
  bool require_signature = false;
  // Install over a model of the same id with other contents (a new version). Without it that
  // is ALREADY_EXISTS; the same contents again are never an error.
  bool replace = false;
  ProgressCallback progress;
};

struct GarbageStats {
  uint64_t num_blobs_removed = 0;
  uint64_t bytes_freed = 0;
  uint64_t num_partial_downloads_removed = 0;
};

// Thread-safe: every method may be called from any thread, and installs run concurrently
// (each on its caller's thread, which also runs its progress callback). Changes to the
// store's folders are serialised by the store lock, so several processes may open one store.
class ModelStore {
 public:
  // Opens the store in `models_dir` (creating its folders), cleans staging and versions no
  // model names, and loads the trusted keys. INVALID_ARGUMENT for a key that is not an
  // ed25519 public key in PEM, or for require_signatures without keys.
  static Result<std::unique_ptr<ModelStore>> Open(const std::filesystem::path& models_dir,
                                                  ModelStoreOptions options = {});
  ~ModelStore();
  ModelStore(const ModelStore&) = delete;
  ModelStore& operator=(const ModelStore&) = delete;

  // Installs `source` as model `id` and returns its manifest. Errors:
  //   INVALID_ARGUMENT     bad id; a malformed, corrupt or hostile source (digest mismatch,
  //                        path traversal, a tar symlink, an oversized file, bad config.json
  //                        or safetensors header); a bad signature.
  //   PERMISSION_DENIED    a mirror URL outside the allow-list (nothing was fetched); a
  //                        signature required but missing.
  //   ALREADY_EXISTS       another model of that id without `replace`, or a folder the
  //                        store does not manage at models/<id>.
  //   RESOURCE_EXHAUSTED   not enough free disk (the message has needed and free bytes).
  //   UNAVAILABLE          the mirror failed mid-way; partial files are kept and a retry
  //                        resumes them. Also: the same file is being downloaded by another
  //                        install.
  //   NOT_FOUND            the source folder, bundle or mirror manifest does not exist.
  //   CANCELLED            the progress callback returned false.
  // On any error the store's visible state is unchanged.
  Result<ModelManifest> Install(std::string_view id, const InstallSource& source,
                                const InstallOptions& options = {});

  // Removes model `id` (its symlink, then its version). FAILED_PRECONDITION while
  // `is_loaded(id)` is true (called under the store lock: the caller serialises loading and
  // removal of one model); NOT_FOUND when the store has no such model. The blobs stay until
  // CollectGarbage().
  Status Remove(std::string_view id, const std::function<bool(std::string_view id)>& is_loaded);

  // Installed models, sorted by id.
  Result<std::vector<ModelManifest>> List() const;
  // NOT_FOUND when `id` is not installed.
  Result<ModelManifest> Get(std::string_view id) const;

  // Removes blobs that no installed version references, and partial downloads no install is
  // using (a later install of those files downloads them again).
  Result<GarbageStats> CollectGarbage();

  // <models_dir>/<id>: the folder to serve (a symlink to the installed version's files).
  std::filesystem::path ModelPath(std::string_view id) const;
  const std::filesystem::path& models_dir() const;

 private:
  class Impl;
  explicit ModelStore(std::unique_ptr<Impl> impl);

  const std::unique_ptr<Impl> impl_;
};

}  // namespace inferbox::provisioning
