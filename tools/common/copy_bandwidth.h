// The machine's memory copy bandwidth, the denominator of the decode floors the benchmark
// tools print (every weight is read once per decode step).
#pragma once

#include <chrono>
#include <cstring>
#include <vector>

namespace inferbox::tools {

// Bytes per second moved by copying 512 MiB four times; a copy reads and writes each byte,
// so both count.
inline double MeasureCopyBandwidth() {
  std::vector<char> source(size_t{512} << 20, 1), target(source.size());
  constexpr int kCopies = 4;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kCopies; ++i) std::memcpy(target.data(), source.data(), source.size());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return 2.0 * kCopies * static_cast<double>(source.size()) / seconds;
}

}  // namespace inferbox::tools
