#include "inferbox/engine/scheduler/block_manager.h"

#include <algorithm>

#include "inferbox/common/status.h"

namespace inferbox::engine {

BlockManager::BlockManager(int32_t num_blocks, int32_t block_size)
    : block_size_(block_size), blocks_(static_cast<size_t>(num_blocks)) {
  INFERBOX_CHECK(num_blocks > 0 && block_size > 0);
  for (int32_t i = 0; i < num_blocks; ++i) {
    blocks_[static_cast<size_t>(i)].free_position = free_list_.insert(free_list_.end(), i);
  }
}

uint64_t BlockManager::BlockHash(uint64_t previous, std::span<const int32_t> tokens) const {
  // FNV-1a over the previous hash and the token ids, then a SplitMix64 finaliser; 0 is
  // reserved for "no hash".
  uint64_t hash = 0xcbf29ce484222325ull ^ previous;
  auto mix = [&hash](uint64_t value) {
    for (int byte = 0; byte < 8; ++byte) {
      hash ^= (value >> (8 * byte)) & 0xFF;
      hash *= 0x100000001b3ull;
    }
  };
  mix(previous);
  for (const int32_t token : tokens) mix(static_cast<uint32_t>(token));
  hash ^= hash >> 30;
  hash *= 0xbf58476d1ce4e5b9ull;
  hash ^= hash >> 27;
  hash *= 0x94d049bb133111ebull;
  hash ^= hash >> 31;
  return hash == 0 ? 1 : hash;
}

int32_t BlockManager::FindCached(uint64_t hash, std::span<const int32_t> tokens) const {
  const auto found = cached_.find(hash);
  if (found == cached_.end()) return -1;
  const Block& block = blocks_[static_cast<size_t>(found->second)];
  if (!std::equal(block.token_ids.begin(), block.token_ids.end(), tokens.begin(), tokens.end()))
    return -1;
  return found->second;
}

int64_t BlockManager::CountCachedBlocks(std::span<const int32_t> prompt,
                                        std::vector<int32_t>* found,
                                        std::vector<uint64_t>* hashes) const {
  // Leave at least one token to compute: a prompt that is all cached full blocks recomputes
  // its last block.
  const auto prompt_size = static_cast<int64_t>(prompt.size());
  const int64_t max_blocks = (prompt_size - 1) / block_size_;
  uint64_t previous = 0;
  int64_t count = 0;
  for (; count < max_blocks; ++count) {
    const auto tokens =
        prompt.subspan(static_cast<size_t>(count * block_size_), static_cast<size_t>(block_size_));
    const uint64_t hash = BlockHash(previous, tokens);
    const int32_t block = FindCached(hash, tokens);
    if (block < 0) break;
    if (found != nullptr) found->push_back(block);
    if (hashes != nullptr) hashes->push_back(hash);
    previous = hash;
  }
  return count;
}

bool BlockManager::CanAllocate(std::span<const int32_t> prompt) const {
  if (prompt.empty()) return false;
  std::vector<int32_t> cached;
  CountCachedBlocks(prompt, &cached, nullptr);
  const auto needed = static_cast<int64_t>((prompt.size() + static_cast<size_t>(block_size_) - 1) /
                                           static_cast<size_t>(block_size_));
  // Cached blocks sitting in the free list are taken from it too.
  int64_t cached_but_free = 0;
  for (const int32_t block : cached)
    cached_but_free += blocks_[static_cast<size_t>(block)].is_free ? 1 : 0;
  return needed - static_cast<int64_t>(cached.size()) + cached_but_free <= num_free_blocks();
}

int32_t BlockManager::TakeFreeBlock() {
  INFERBOX_CHECK(!free_list_.empty());
  const int32_t id = free_list_.front();
  Block& block = blocks_[static_cast<size_t>(id)];
  if (block.hash != 0) {  // Evict its cached contents.
    cached_.erase(block.hash);
    block.hash = 0;
    block.token_ids.clear();
  }
  free_list_.pop_front();
  block.is_free = false;
  block.ref_count = 1;
  return id;
}

void BlockManager::Reference(int32_t id) {
  Block& block = blocks_[static_cast<size_t>(id)];
  if (block.is_free) {
    free_list_.erase(block.free_position);
    block.is_free = false;
  }
  ++block.ref_count;
}

KvAllocation BlockManager::Allocate(std::span<const int32_t> prompt) {
  INFERBOX_CHECK(CanAllocate(prompt));
  KvAllocation allocation;
  std::vector<int32_t> cached;
  std::vector<uint64_t> hashes;
  const int64_t num_cached_blocks = CountCachedBlocks(prompt, &cached, &hashes);
  for (const int32_t block : cached) {
    Reference(block);
    allocation.block_table.push_back(block);
  }
  allocation.num_cached_tokens = num_cached_blocks * block_size_;
  allocation.num_hashed_blocks = num_cached_blocks;
  allocation.last_hash = hashes.empty() ? 0 : hashes.back();
  prefix_queried_tokens_ += static_cast<int64_t>(prompt.size());
  prefix_hit_tokens_ += allocation.num_cached_tokens;
  Append(allocation, static_cast<int64_t>(prompt.size()));
  return allocation;
}

bool BlockManager::CanAppend(const KvAllocation& allocation, int64_t num_tokens) const {
  const int64_t needed = (num_tokens + block_size_ - 1) / block_size_;
  return needed - static_cast<int64_t>(allocation.block_table.size()) <= num_free_blocks();
}

void BlockManager::Append(KvAllocation& allocation, int64_t num_tokens) {
  INFERBOX_CHECK(CanAppend(allocation, num_tokens));
  while (static_cast<int64_t>(allocation.block_table.size()) * block_size_ < num_tokens) {
    allocation.block_table.push_back(TakeFreeBlock());
  }
}

void BlockManager::Commit(KvAllocation& allocation, std::span<const int32_t> tokens,
                          int64_t num_computed) {
  const int64_t full_blocks =
      std::min<int64_t>(num_computed, static_cast<int64_t>(tokens.size())) / block_size_;
  for (int64_t i = allocation.num_hashed_blocks; i < full_blocks; ++i) {
    const auto block_tokens =
        tokens.subspan(static_cast<size_t>(i * block_size_), static_cast<size_t>(block_size_));
    const uint64_t hash = BlockHash(allocation.last_hash, block_tokens);
    const int32_t id = allocation.block_table[static_cast<size_t>(i)];
    // Another sequence may have computed and cached the same block first: keep that one.
    if (!cached_.contains(hash)) {
      Block& block = blocks_[static_cast<size_t>(id)];
      block.hash = hash;
      block.token_ids.assign(block_tokens.begin(), block_tokens.end());
      cached_[hash] = id;
    }
    allocation.last_hash = hash;
    allocation.num_hashed_blocks = i + 1;
  }
}

void BlockManager::Free(KvAllocation& allocation) {
  // Last block first, so that a prefix's head outlives its tail in the LRU order.
  for (auto it = allocation.block_table.rbegin(); it != allocation.block_table.rend(); ++it) {
    Block& block = blocks_[static_cast<size_t>(*it)];
    INFERBOX_CHECK(block.ref_count > 0);
    if (--block.ref_count == 0) {
      block.is_free = true;
      block.free_position = free_list_.insert(free_list_.end(), *it);
    }
  }
  allocation = KvAllocation{};
}

}  // namespace inferbox::engine
