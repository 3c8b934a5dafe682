#include "inferbox/engine/backend/factory.h"

#include <charconv>

#include <fmt/format.h>

#ifdef INFERBOX_HAVE_CUDA
#include "inferbox/engine/cuda/cuda_backend.h"
#endif

namespace inferbox::engine {

Result<std::unique_ptr<Backend>> MakeBackend(std::string_view device) {
  if (device == "cpu") return MakeCpuBackend();
  if (device != "cuda" && !device.starts_with("cuda:")) {
    return InvalidArgumentError(fmt::format("--device {}: expected cpu, cuda or cuda:N", device));
  }
  int index = 0;
  if (device.size() > 4) {
    const std::string_view number = device.substr(5);
    const auto [end, error] = std::from_chars(number.data(), number.data() + number.size(), index);
    if (number.empty() || error != std::errc() || end != number.data() + number.size() ||
        index < 0) {
      return InvalidArgumentError(fmt::format("--device {}: expected cuda:N", device));
    }
  }
#ifdef INFERBOX_HAVE_CUDA
  auto backend = cuda::MakeCudaBackend(index);
  if (!backend.ok()) return backend.status().WithContext(fmt::format("--device {}", device));
  return backend;
#else
  return FailedPreconditionError(
      fmt::format("--device {}: this build has no CUDA backend (built without nvcc)", device));
#endif
}

}  // namespace inferbox::engine
