#include "bpe.h"

#include <queue>

namespace inferbox::engine {

BytePairEncoder::BytePairEncoder(std::unordered_map<std::string, TokenId> vocab, bool ignore_merges)
    : vocab_(std::move(vocab)), ignore_merges_(ignore_merges) {
  for (int byte = 0; byte < 256; ++byte) {
    const auto found = vocab_.find(std::string(1, static_cast<char>(byte)));
    byte_tokens_[byte] = found == vocab_.end() ? -1 : found->second;
  }
}

bool BytePairEncoder::HasAllBytes() const {
  for (const TokenId id : byte_tokens_) {
    if (id < 0) return false;
  }
  return true;
}

bool BytePairEncoder::AddMerge(std::string_view left, std::string_view right) {
  const auto left_id = vocab_.find(std::string(left));
  const auto right_id = vocab_.find(std::string(right));
  const auto result = vocab_.find(std::string(left) + std::string(right));
  if (left_id == vocab_.end() || right_id == vocab_.end() || result == vocab_.end()) return false;
  const auto rank = static_cast<int32_t>(merges_.size());
  // A repeated merge keeps its first (lowest) rank, as the reference's rank map does.
  merges_.emplace(PairKey(left_id->second, right_id->second), Merge{rank, result->second});
  return true;
}

void BytePairEncoder::Encode(std::string_view word, std::vector<TokenId>& out) const {
  if (word.empty()) return;
  if (word.size() == 1) {
    out.push_back(byte_tokens_[static_cast<unsigned char>(word[0])]);
    return;
  }
  if (ignore_merges_) {
    if (const auto found = vocab_.find(std::string(word)); found != vocab_.end()) {
      out.push_back(found->second);
      return;
    }
  }
  if (word.size() > kMaxCachedWordBytes) {
    EncodeUncached(word, out);
    return;
  }
  const std::string key(word);
  {
    std::lock_guard lock(cache_mutex_);
    if (const auto found = cache_.find(key); found != cache_.end()) {
      out.insert(out.end(), found->second.begin(), found->second.end());
      return;
    }
  }
  std::vector<TokenId> ids;
  EncodeUncached(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  std::lock_guard lock(cache_mutex_);
  if (cache_.size() >= kMaxCachedWords) cache_.clear();
  cache_.emplace(key, std::move(ids));
}

void BytePairEncoder::EncodeUncached(std::string_view word, std::vector<TokenId>& out) const {
  struct Symbol {
    TokenId id;
    int prev;
    int next;
  };
  std::vector<Symbol> symbols(word.size());
  for (size_t i = 0; i < word.size(); ++i) {
    symbols[i] = {byte_tokens_[static_cast<unsigned char>(word[i])], static_cast<int>(i) - 1,
                  i + 1 < word.size() ? static_cast<int>(i + 1) : -1};
  }

  // Candidate merges of adjacent symbols; an entry is stale when either side changed since.
  struct Candidate {
    int32_t rank;
    int left;  // Index of the left symbol; the right one is symbols[left].next.
    TokenId left_id;
    TokenId right_id;
    bool operator>(const Candidate& other) const {
      return rank != other.rank ? rank > other.rank : left > other.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto push_pair = [&](int left) {
    if (left < 0 || symbols[left].next < 0) return;
    const TokenId left_id = symbols[left].id;
    const TokenId right_id = symbols[symbols[left].next].id;
    if (const auto merge = merges_.find(PairKey(left_id, right_id)); merge != merges_.end()) {
      queue.push({merge->second.rank, left, left_id, right_id});
    }
  };
  for (int i = 0; i + 1 < static_cast<int>(word.size()); ++i) push_pair(i);

  while (!queue.empty()) {
    const Candidate candidate = queue.top();
    queue.pop();
    Symbol& left = symbols[candidate.left];
    if (left.id != candidate.left_id || left.next < 0 ||
        symbols[left.next].id != candidate.right_id) {
      continue;
    }
    const int right_index = left.next;
    Symbol& right = symbols[right_index];
    left.id = merges_.at(PairKey(candidate.left_id, candidate.right_id)).result;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = candidate.left;
    right.id = -1;  // Marks the right symbol dead, so candidates naming it go stale.
    push_pair(left.prev);
    push_pair(candidate.left);
  }
  for (int i = 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
}

}  // namespace inferbox::engine
