// Helpers of the fuzz targets (tests/fuzz): the input as text, split into parts.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

namespace inferbox::fuzz {

inline std::string_view AsText(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// The input cut at each NUL byte into at most `max_parts` parts (the last keeps any further
// NULs): one input carries several files, or a file and what to do with it.
inline std::vector<std::string_view> SplitParts(std::string_view input, size_t max_parts) {
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    const size_t nul = input.find('\0');
    if (nul == std::string_view::npos) break;
    parts.push_back(input.substr(0, nul));
    input.remove_prefix(nul + 1);
  }
  parts.push_back(input);
  parts.resize(max_parts);
  return parts;
}

// Marks how deep an input got, printed when FUZZ_TRACE is set: a new seed should reach the
// stage it was written for (FUZZ_TRACE=1 build/tests/fuzz/<target> --mutations=0 <seed>).
inline void Reached(std::string_view stage) {
  static const bool trace = std::getenv("FUZZ_TRACE") != nullptr;
  if (trace)
    std::fprintf(stderr, "fuzz target: reached %.*s\n", static_cast<int>(stage.size()),
                 stage.data());
}

// A broken invariant: report it and abort, which both the replay runner and libFuzzer treat
// as a crash (and save the input).
[[noreturn]] inline void Fail(const char* what) {
  std::fprintf(stderr, "fuzz target: invariant broken: %s\n", what);
  std::abort();
}

// Fails unless `dir` holds only entries named in `names` (a loader wrote nothing beside them).
inline void FailUnlessOnly(const std::filesystem::path& dir,
                           std::initializer_list<std::string_view> names) {
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    bool named = false;
    for (const std::string_view allowed : names) named = named || name == allowed;
    if (!named) Fail("a file was written outside the folder it belongs in");
  }
}

// An anonymous in-memory file holding `bytes`, for loaders that take a path; the path is
// /proc/self/fd/N. Closed when destroyed.
class MemoryFile {
 public:
  MemoryFile(const char* name, std::string_view bytes) : fd_(::memfd_create(name, MFD_CLOEXEC)) {
    if (fd_ < 0) Fail("memfd_create failed");
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
      if (n <= 0) Fail("write to memfd failed");
      done += static_cast<size_t>(n);
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemoryFile() { ::close(fd_); }
  MemoryFile(const MemoryFile&) = delete;
  MemoryFile& operator=(const MemoryFile&) = delete;

  const std::string& path() const { return path_; }

 private:
  int fd_;
  std::string path_;
};

}  // namespace inferbox::fuzz
