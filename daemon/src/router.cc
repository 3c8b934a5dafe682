#include "inferbox/daemon/router.h"

#include <algorithm>

namespace inferbox::daemon {

size_t PickReplica(std::span<const int64_t> outstanding_tokens, uint64_t affinity,
                   int64_t slack_tokens) {
  const size_t least =
      static_cast<size_t>(std::min_element(outstanding_tokens.begin(), outstanding_tokens.end()) -
                          outstanding_tokens.begin());
  const size_t affine = static_cast<size_t>(affinity % outstanding_tokens.size());
  if (outstanding_tokens[affine] - outstanding_tokens[least] <= slack_tokens) return affine;
  return least;
}

uint64_t PromptAffinity(std::string_view prompt_prefix) {
  // FNV-1a over at most 256 bytes: stable across runs and processes.
  constexpr size_t kPrefixBytes = 256;
  uint64_t hash = 14695981039346656037ull;
  for (const char c : prompt_prefix.substr(0, kPrefixBytes)) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 1099511628211ull;
  }
  return hash;
}

}  // namespace inferbox::daemon
