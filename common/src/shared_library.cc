#include "inferbox/common/shared_library.h"

#include <dlfcn.h>

namespace inferbox {

Result<SharedLibrary> SharedLibrary::Open(std::initializer_list<std::string_view> names,
                                          std::string_view why_needed) {
  std::string errors;
  for (const std::string_view name : names) {
    const std::string path(name);
    if (void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL); handle != nullptr) {
      return SharedLibrary(handle);
    }
    const char* error = dlerror();
    errors += (errors.empty() ? "" : "; ") + (error != nullptr ? std::string(error) : path);
  }
  return FailedPreconditionError(std::string(why_needed) + ": " + errors);
}

void* SharedLibrary::Symbol(const char* symbol) {
  void* address = dlsym(handle_, symbol);
  if (address == nullptr) missing_ += (missing_.empty() ? "" : ", ") + std::string(symbol);
  return address;
}

}  // namespace inferbox
