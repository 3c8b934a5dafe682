// The paged KV cache's bookkeeping: fixed-size blocks, a block table per sequence, a free
// list, and prefix caching by chained hashes over full blocks. Pure logic (no tensors): the
// scheduler asks before it acts (CanAllocate/Allocate, CanAppend/Append) and is the only
// caller. Owned by the engine loop thread; not thread-safe.
//
// Prefix caching: a full block is identified by the hash of (previous block's hash, its
// token ids). Once its KV has been computed (Commit), the block is findable by that hash;
// a later prompt with the same prefix takes the block instead of recomputing it. Freed
// blocks keep their contents and stay findable until the free list hands them out again,
// least recently freed first.
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

namespace inferbox::engine {

// One sequence's blocks. Filled by Allocate, grown by Append, released by Free.
struct KvAllocation {
  std::vector<int32_t> block_table;
  // Prompt tokens whose KV came from the prefix cache (a multiple of the block size).
  int64_t num_cached_tokens = 0;
  // Blocks of block_table registered in the prefix cache (by this or an earlier sequence).
  int64_t num_hashed_blocks = 0;
  // Hash of block num_hashed_blocks - 1 (0 before the first).
  uint64_t last_hash = 0;
};

class BlockManager {
 public:
  BlockManager(int32_t num_blocks, int32_t block_size);

  int32_t block_size() const { return block_size_; }
  int32_t num_blocks() const { return static_cast<int32_t>(blocks_.size()); }
  int32_t num_free_blocks() const { return static_cast<int32_t>(free_list_.size()); }
  // Share of blocks in use by a sequence, 0..1.
  double usage() const { return 1.0 - static_cast<double>(num_free_blocks()) / num_blocks(); }
  // Prompt tokens looked up in the prefix cache, and those found, since construction.
  int64_t num_prefix_queried_tokens() const { return prefix_queried_tokens_; }
  int64_t num_prefix_hit_tokens() const { return prefix_hit_tokens_; }

  // Whether `prompt` can get blocks for all its tokens now (cached prefix blocks count).
  bool CanAllocate(std::span<const int32_t> prompt) const;
  // Blocks for the whole prompt, reusing cached prefix blocks. Requires CanAllocate. At least
  // the last prompt token is always left to compute (its logits are needed).
  KvAllocation Allocate(std::span<const int32_t> prompt);

  // Whether the sequence can grow to `num_tokens` tokens.
  bool CanAppend(const KvAllocation& allocation, int64_t num_tokens) const;
  // Grows the block table to hold `num_tokens` tokens. Requires CanAppend.
  void Append(KvAllocation& allocation, int64_t num_tokens);

  // The KV of tokens[0, num_computed) is now in the cache: full blocks among them become
  // findable by later prompts.
  void Commit(KvAllocation& allocation, std::span<const int32_t> tokens, int64_t num_computed);

  // Releases the sequence's blocks (cached ones stay findable until reused).
  void Free(KvAllocation& allocation);

 private:
  struct Block {
    int32_t ref_count = 0;
    uint64_t hash = 0;               // 0: not in the prefix cache.
    std::vector<int32_t> token_ids;  // The block's tokens while hashed (guards collisions).
    std::list<int32_t>::iterator free_position;
    bool is_free = true;
  };

  uint64_t BlockHash(uint64_t previous, std::span<const int32_t> tokens) const;
  // The cached block holding exactly `tokens` after `previous`, or -1.
  int32_t FindCached(uint64_t hash, std::span<const int32_t> tokens) const;
  // Number of leading full prompt blocks found in the cache (capped so one token is left).
  int64_t CountCachedBlocks(std::span<const int32_t> prompt, std::vector<int32_t>* found,
                            std::vector<uint64_t>* hashes) const;
  int32_t TakeFreeBlock();
  void Reference(int32_t block);

  int32_t block_size_;
  std::vector<Block> blocks_;
  std::list<int32_t> free_list_;  // Least recently freed first.
  std::unordered_map<uint64_t, int32_t> cached_;
  int64_t prefix_queried_tokens_ = 0;
  int64_t prefix_hit_tokens_ = 0;
};

}  // namespace inferbox::engine
