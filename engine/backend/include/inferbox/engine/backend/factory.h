// Chooses a backend by the name operators and tools pass as --device.
#pragma once

#include <memory>
#include <string_view>

#include "inferbox/common/status.h"
#include "inferbox/engine/backend/backend.h"

namespace inferbox::engine {

// "cpu", "cuda" (device 0 of those visible) or "cuda:N". INVALID_ARGUMENT for another name;
// FAILED_PRECONDITION for cuda in a build without the CUDA backend, or where the device or
// its driver is missing. Messages start with "--device NAME".
Result<std::unique_ptr<Backend>> MakeBackend(std::string_view device);

}  // namespace inferbox::engine
