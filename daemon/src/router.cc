#include "inferbox/daemon/router.h"

#include <algorithm>

#include "inferbox/common/status.h"

namespace inferbox::daemon {
namespace {

// splitmix64's finalizer: every bit of the input moves about half the output bits.
uint64_t Mix(uint64_t value) {
  value ^= value >> 30;
  value *= 0xbf58476d1ce4e5b9ull;
  value ^= value >> 27;
  value *= 0x94d049bb133111ebull;
  return value ^ (value >> 31);
}

}  // namespace

size_t AffineReplica(std::span<const uint32_t> replica_ids, uint64_t affinity) {
  INFERBOX_CHECK(!replica_ids.empty());
  size_t best = 0;
  uint64_t best_score = 0;
  for (size_t i = 0; i < replica_ids.size(); ++i) {
    const uint64_t score = Mix(affinity ^ Mix(uint64_t{replica_ids[i]} + 1));
    if (i == 0 || score > best_score) {
      best = i;
      best_score = score;
    }
  }
  return best;
}

size_t PickReplica(std::span<const int64_t> outstanding_tokens,
                   std::span<const uint32_t> replica_ids, uint64_t affinity, int64_t slack_tokens) {
  INFERBOX_CHECK(!outstanding_tokens.empty() && outstanding_tokens.size() == replica_ids.size());
  const size_t least =
      static_cast<size_t>(std::min_element(outstanding_tokens.begin(), outstanding_tokens.end()) -
                          outstanding_tokens.begin());
  const size_t affine = AffineReplica(replica_ids, affinity);
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
