// Byte-level BPE over raw bytes: the vocabulary and merges of tokenizer.json are converted
// from the byte-to-unicode alphabet back to bytes at load, so encoding never maps
// characters. Merges apply lowest rank first (leftmost on ties) through a heap over a
// linked list of symbols: O(n log n) in the word length, never quadratic.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "inferbox/engine/tokenizer/tokenizer.h"

namespace inferbox::engine {

class BytePairEncoder {
 public:
  // `vocab` maps each token's bytes to its id; it must hold all 256 single bytes
  // (HasAllBytes). Merges are then added in rank order.
  explicit BytePairEncoder(std::unordered_map<std::string, TokenId> vocab, bool ignore_merges);

  // Adds the next merge (left + right -> their concatenation). False when a part or the
  // result is not in the vocabulary.
  bool AddMerge(std::string_view left, std::string_view right);
  // False when some byte has no single-byte token (not a byte-level vocabulary).
  bool HasAllBytes() const;

  // Appends the ids of one pre-token (raw bytes). Thread-safe (the cache has a mutex).
  void Encode(std::string_view word, std::vector<TokenId>& out) const;

 private:
  void EncodeUncached(std::string_view word, std::vector<TokenId>& out) const;

  struct Merge {
    int32_t rank;
    TokenId result;
  };
  static uint64_t PairKey(TokenId left, TokenId right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  std::unordered_map<std::string, TokenId> vocab_;
  std::unordered_map<uint64_t, Merge> merges_;
  TokenId byte_tokens_[256];
  bool ignore_merges_;

  // Words seen recently and their ids; bounded, cleared when full.
  static constexpr size_t kMaxCachedWords = 1 << 16;
  static constexpr size_t kMaxCachedWordBytes = 128;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<TokenId>> cache_;  // Guarded by cache_mutex_.
};

}  // namespace inferbox::engine
