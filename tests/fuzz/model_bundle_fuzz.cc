// A model bundle from an untrusted file (R6.12: offline installs) installed into a model
// store. It is refused, leaving the store as it was, or installed as regular files inside the
// store; never a crash, and never a file written outside the store (path traversal through
// member names, links or the manifest).
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <spdlog/spdlog.h>

#include "fuzz_input.h"
#include "inferbox/provisioning/model_store.h"
#include "temp_dir.h"

namespace {

namespace fs = std::filesystem;
using inferbox::provisioning::BundleSource;
using inferbox::provisioning::ModelStore;

// A scratch folder per process (removed at exit, after the store): the store in models/, the
// bundle beside it; nothing else may appear in it.
struct Scratch {
  Scratch() {
    spdlog::set_level(spdlog::level::warn);  // Not a line per garbage collection.
    auto opened = ModelStore::Open(dir / "models");
    if (!opened.ok()) inferbox::fuzz::Fail("the model store does not open");
    store = std::move(opened).value();
  }
  const inferbox::testing::TempDir dir;
  std::unique_ptr<ModelStore> store;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace inferbox;
  static Scratch scratch;
  const fs::path bundle = scratch.dir / "in.bundle";
  std::ofstream(bundle, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  auto installed = scratch.store->Install("fuzz", BundleSource{.path = bundle});
  fuzz::FailUnlessOnly(scratch.dir.path(), {"models", "in.bundle"});
  if (!installed.ok()) {
    fuzz::Reached(installed.status().message());
    if (scratch.store->Get("fuzz").ok()) fuzz::Fail("a refused bundle left a model behind");
    return 0;
  }
  fuzz::Reached("installed");
  const fs::path model = scratch.store->ModelPath("fuzz");
  const fs::path models = fs::weakly_canonical(scratch.dir / "models");
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
