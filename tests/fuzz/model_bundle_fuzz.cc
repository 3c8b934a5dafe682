// A model bundle from an untrusted file (R6.12: offline installs) installed into a model
// store. It is refused, leaving the store as it was, or installed as regular files inside the
// store; never a crash, and never a file written outside the store (path traversal through
// member names, links or the manifest).
#include <stdlib.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <spdlog/spdlog.h>

#include "fuzz_input.h"
#include "inferbox/provisioning/model_store.h"

namespace {

namespace fs = std::filesystem;
using inferbox::provisioning::BundleSource;
using inferbox::provisioning::ModelStore;

// A scratch folder per process (removed at exit): the store in models/, the bundle beside it;
// nothing else may appear in it.
struct Scratch {
  Scratch() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/bundle-fuzz-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) inferbox::fuzz::Fail("mkdtemp failed");
    root = pattern;
    spdlog::set_level(spdlog::level::warn);  // Not a line per garbage collection.
    auto opened = ModelStore::Open(root / "models");
    if (!opened.ok()) inferbox::fuzz::Fail("the model store does not open");
    store = std::move(opened).value();
  }
  ~Scratch() {
    store.reset();
    std::error_code ignored;
    fs::remove_all(root, ignored);
  }
  fs::path root;
  std::unique_ptr<ModelStore> store;
};

// Everything under the scratch folder must be the bundle or inside the store.
void CheckNothingOutsideTheStore(const Scratch& scratch) {
  for (const auto& entry : fs::directory_iterator(scratch.root)) {
    const std::string name = entry.path().filename().string();
    if (name != "models" && name != "in.bundle") inferbox::fuzz::Fail("a file outside the store");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace inferbox;
  static Scratch scratch;
  const fs::path bundle = scratch.root / "in.bundle";
  std::ofstream(bundle, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  auto installed = scratch.store->Install("fuzz", BundleSource{.path = bundle});
  CheckNothingOutsideTheStore(scratch);
  if (!installed.ok()) {
    fuzz::Reached(installed.status().message());
    if (scratch.store->Get("fuzz").ok()) fuzz::Fail("a refused bundle left a model behind");
    return 0;
  }
  fuzz::Reached("installed");
  const fs::path model = scratch.store->ModelPath("fuzz");
  const fs::path models = fs::weakly_canonical(scratch.root / "models");
  for (const auto& entry : fs::recursive_directory_iterator(model)) {
    if (entry.is_symlink()) fuzz::Fail("an installed model holds a symlink");
    if (!entry.is_regular_file() && !entry.is_directory()) fuzz::Fail("a special file installed");
    const std::string real = fs::weakly_canonical(entry.path()).string();
    if (!real.starts_with(models.string() + "/")) fuzz::Fail("an installed file is outside");
  }
  if (!scratch.store->Remove("fuzz", [](std::string_view) { return false; }).ok())
    fuzz::Fail("an installed model cannot be removed");
  (void)scratch.store->CollectGarbage();
  return 0;
}
