// Crash-safe file replacement: readers see the old contents or the new, never a mix, and
// a power cut never leaves a half-written file under the final name.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string_view>

#include "inferbox/common/status.h"

namespace inferbox {

// Writes `contents` to a temporary file beside `path`, fsyncs it, renames it over `path`
// and fsyncs the directory. On failure `path` is untouched and the temporary is removed.
Status WriteFileAtomically(const std::filesystem::path& path, std::string_view contents,
                           mode_t mode = 0644);

// Reads a whole file. NOT_FOUND when it does not exist.
Result<std::string> ReadFile(const std::filesystem::path& path);

}  // namespace inferbox
