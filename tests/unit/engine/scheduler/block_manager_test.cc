#include "inferbox/engine/scheduler/block_manager.h"

#include <numeric>
#include <set>

#include <gtest/gtest.h>

namespace inferbox::engine {
namespace {

std::vector<int32_t> Tokens(int32_t first, int32_t count) {
  std::vector<int32_t> tokens(static_cast<size_t>(count));
  std::iota(tokens.begin(), tokens.end(), first);
  return tokens;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(BlockManager, AllocatesWhatThePromptNeedsAndFreesItAll) {
  BlockManager manager(8, 4);
  const auto prompt = Tokens(100, 9);  // 3 blocks of 4.
  ASSERT_TRUE(manager.CanAllocate(prompt));
  KvAllocation allocation = manager.Allocate(prompt);
  EXPECT_EQ(allocation.block_table.size(), 3u);
  EXPECT_EQ(allocation.num_cached_tokens, 0);
  EXPECT_EQ(manager.num_free_blocks(), 5);
  EXPECT_NEAR(manager.usage(), 3.0 / 8.0, 1e-12);
  manager.Free(allocation);
  EXPECT_EQ(manager.num_free_blocks(), 8) << "every block must return to the free list";
  EXPECT_TRUE(allocation.block_table.empty());
}

TEST(BlockManager, RefusesWhatDoesNotFit) {
  BlockManager manager(2, 4);
  EXPECT_FALSE(manager.CanAllocate(Tokens(0, 9)));
  EXPECT_TRUE(manager.CanAllocate(Tokens(0, 8)));
  EXPECT_FALSE(manager.CanAllocate({})) << "an empty prompt has nothing to compute";
}

TEST(BlockManager, GrowsOneBlockAtEachBoundary) {
  BlockManager manager(3, 4);
  KvAllocation allocation = manager.Allocate(Tokens(0, 4));
  EXPECT_EQ(allocation.block_table.size(), 1u);
  ASSERT_TRUE(manager.CanAppend(allocation, 5));
  manager.Append(allocation, 5);
  EXPECT_EQ(allocation.block_table.size(), 2u);
  manager.Append(allocation, 8);
  EXPECT_EQ(allocation.block_table.size(), 2u) << "positions 5..7 fit the second block";
  EXPECT_TRUE(manager.CanAppend(allocation, 12));
  EXPECT_FALSE(manager.CanAppend(allocation, 13));
}

TEST(BlockManager, SharedPrefixReusesComputedBlocksOnly) {
  BlockManager manager(16, 4);
  const auto system_prompt = Tokens(1000, 8);  // Two full blocks.
  const auto first = Concat(system_prompt, Tokens(1, 3));
  const auto second = Concat(system_prompt, Tokens(50, 5));

  KvAllocation a = manager.Allocate(first);
  // Before the first prompt's KV is computed, nothing is shareable.
  KvAllocation early = manager.Allocate(second);
  EXPECT_EQ(early.num_cached_tokens, 0);
  manager.Free(early);
  manager.Commit(a, first, static_cast<int64_t>(first.size()));

  KvAllocation b = manager.Allocate(second);
  EXPECT_EQ(b.num_cached_tokens, 8);
  EXPECT_EQ(b.block_table[0], a.block_table[0]);
  EXPECT_EQ(b.block_table[1], a.block_table[1]);
  EXPECT_NE(b.block_table[2], a.block_table[2]) << "the differing tail gets its own block";
  EXPECT_EQ(manager.num_prefix_hit_tokens(), 8);
}

TEST(BlockManager, ABlockMatchesOnlyAfterTheSamePrefix) {
  BlockManager manager(16, 4);
  const auto a_x =
      Concat(Concat(Tokens(0, 4), Tokens(500, 4)), Tokens(900, 1));  // Blocks A, X, tail.
  const auto c_y =
      Concat(Concat(Tokens(40, 4), Tokens(600, 4)), Tokens(900, 1));  // Blocks C, Y, tail.
  const auto c_x =
      Concat(Concat(Tokens(40, 4), Tokens(500, 4)), Tokens(900, 1));  // Blocks C, X, tail.
  KvAllocation first = manager.Allocate(a_x);
  manager.Commit(first, a_x, 9);
  KvAllocation second = manager.Allocate(c_y);
  manager.Commit(second, c_y, 9);
  KvAllocation third = manager.Allocate(c_x);
  EXPECT_EQ(third.num_cached_tokens, 4)
      << "C is shared; X's KV was computed after A, not C, so it is not";
}

TEST(BlockManager, FreedBlocksStayFindableUntilReused) {
  BlockManager manager(6, 4);
  const auto prompt = Tokens(7, 9);
  KvAllocation a = manager.Allocate(prompt);
  manager.Commit(a, prompt, 9);
  const std::vector<int32_t> blocks = a.block_table;
  manager.Free(a);
  EXPECT_EQ(manager.num_free_blocks(), 6);

  KvAllocation again = manager.Allocate(prompt);
  EXPECT_EQ(again.num_cached_tokens, 8) << "a freed prefix is still in the cache";
  EXPECT_EQ(again.block_table[0], blocks[0]);
  EXPECT_EQ(again.block_table[1], blocks[1]);
  EXPECT_EQ(manager.num_free_blocks(), 3);
}

TEST(BlockManager, EvictsTheLeastRecentlyFreedFirst) {
  BlockManager manager(4, 4);
  const auto old_prompt = Tokens(100, 5);  // Blocks: 1 full + 1 partial.
  const auto young_prompt = Tokens(200, 5);
  KvAllocation old_allocation = manager.Allocate(old_prompt);
  manager.Commit(old_allocation, old_prompt, 5);
  manager.Free(old_allocation);
  KvAllocation young_allocation = manager.Allocate(young_prompt);
  manager.Commit(young_allocation, young_prompt, 5);
  manager.Free(young_allocation);

  // Needs two fresh blocks: the two freed longest ago (the old prompt's) go first.
  KvAllocation other = manager.Allocate(Tokens(300, 8));
  KvAllocation young_again = manager.Allocate(young_prompt);
  EXPECT_EQ(young_again.num_cached_tokens, 4) << "the younger prefix survived";
  manager.Free(other);
  manager.Free(young_again);
  EXPECT_EQ(manager.Allocate(old_prompt).num_cached_tokens, 0) << "the older prefix was evicted";
}

TEST(BlockManager, AFullyCachedPromptStillComputesItsLastToken) {
  BlockManager manager(8, 4);
  const auto prompt = Tokens(0, 8);
  KvAllocation a = manager.Allocate(prompt);
  manager.Commit(a, prompt, 8);
  KvAllocation b = manager.Allocate(prompt);
  EXPECT_EQ(b.num_cached_tokens, 4) << "the last block is recomputed so that logits exist";
  EXPECT_EQ(b.block_table.size(), 2u);
}

TEST(BlockManager, CachedBlocksInTheFreeListCountAgainstCapacity) {
  BlockManager manager(3, 4);
  const auto prompt = Tokens(0, 9);
  KvAllocation a = manager.Allocate(prompt);
  manager.Commit(a, prompt, 9);
  manager.Free(a);
  // Two cached blocks are free; the prompt needs them plus one more: exactly fits.
  ASSERT_TRUE(manager.CanAllocate(prompt));
  KvAllocation b = manager.Allocate(prompt);
  EXPECT_EQ(b.num_cached_tokens, 8);
  EXPECT_EQ(manager.num_free_blocks(), 0);
  EXPECT_FALSE(manager.CanAllocate(Tokens(50, 1)));
}

TEST(BlockManager, ManySequencesNeverShareAMutableBlock) {
  BlockManager manager(64, 4);
  const auto shared = Tokens(5000, 12);
  std::vector<KvAllocation> allocations;
  std::vector<std::vector<int32_t>> prompts;
  for (int32_t i = 0; i < 10; ++i) {
    prompts.push_back(Concat(shared, Tokens(i * 10, 3)));
    allocations.push_back(manager.Allocate(prompts.back()));
    manager.Commit(allocations.back(), prompts.back(), static_cast<int64_t>(prompts.back().size()));
  }
  // The last (partial, writable) block of every sequence is its own.
  std::set<int32_t> tails;
  for (const auto& allocation : allocations) tails.insert(allocation.block_table.back());
  EXPECT_EQ(tails.size(), allocations.size());
  for (auto& allocation : allocations) manager.Free(allocation);
  EXPECT_EQ(manager.num_free_blocks(), 64);
}

}  // namespace
}  // namespace inferbox::engine
