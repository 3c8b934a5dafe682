// Libraries opened at run time (dlopen) rather than linked, so that a binary starts on a box
// without them and says what is missing only when a feature needs one (NVIDIA's cuBLASLt and
// NCCL for the engine on a GPU). A library opened here is never closed: its functions may be
// called until the process ends.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>

#include "inferbox/common/status.h"

namespace inferbox {

class SharedLibrary {
 public:
  // The first of `names` (sonames or paths) that the dynamic loader opens. Otherwise
  // FAILED_PRECONDITION: `why_needed` followed by the loader's reason for each name.
  static Result<SharedLibrary> Open(std::initializer_list<std::string_view> names,
                                    std::string_view why_needed);

  // Points `slot` at `symbol`; when the library lacks it, `slot` is null and the name is
  // added to missing().
  template <typename Function>
  void Resolve(Function*& slot, const char* symbol) {
    slot = reinterpret_cast<Function*>(Symbol(symbol));
  }

  // "a, b": the symbols Resolve did not find; empty when it found every one.
  const std::string& missing() const { return missing_; }

 private:
  explicit SharedLibrary(void* handle) : handle_(handle) {}
  void* Symbol(const char* symbol);

  void* handle_;
  std::string missing_;
};

}  // namespace inferbox
