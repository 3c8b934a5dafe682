// Replica choice: prefix affinity keeps requests that share a prompt prefix on one replica
// (its prefix cache has the prefix), until that replica is loaded well beyond the least
// loaded one; a replica that leaves moves only its own prefixes.
#include "inferbox/daemon/router.h"

#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace inferbox::daemon {
namespace {

const std::vector<uint32_t> kFourIds = {0, 1, 2, 3};

TEST(Router, ASharedPrefixAlwaysPicksTheSameReplicaUnderEvenLoad) {
  const std::vector<int64_t> load = {100, 120, 90, 110};
  const uint64_t affinity = PromptAffinity("You are a helpful assistant for the risk team.");
  const size_t first = PickReplica(load, kFourIds, affinity);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(PickReplica(load, kFourIds, affinity), first);
  // Only the first 256 bytes count: the user's question after a long system prompt does not.
  const std::string system(300, 's');
  EXPECT_EQ(PromptAffinity(system + "question one"), PromptAffinity(system + "question two"));
}

TEST(Router, DifferentPrefixesSpreadOverTheReplicas) {
  const std::vector<int64_t> load = {0, 0, 0, 0};
  std::vector<int> per_replica(4, 0);
  for (int i = 0; i < 400; ++i)
    ++per_replica[PickReplica(load, kFourIds, PromptAffinity("prefix " + std::to_string(i)))];
  for (int r = 0; r < 4; ++r)
    EXPECT_GT(per_replica[r], 50) << "replica " << r << " got too few of 400 prefixes";
}

TEST(Router, AReplicaThatLeavesMovesOnlyItsOwnPrefixes) {
  const std::vector<uint32_t> without_two = {0, 1, 3};
  int moved = 0;
  for (int i = 0; i < 200; ++i) {
    const uint64_t affinity = PromptAffinity("system prompt " + std::to_string(i));
    const uint32_t before = kFourIds[AffineReplica(kFourIds, affinity)];
    const uint32_t after = without_two[AffineReplica(without_two, affinity)];
    if (before == 2) {
      ++moved;
    } else {
      EXPECT_EQ(after, before) << "prefix " << i << " left a replica that is still there";
    }
  }
  EXPECT_GT(moved, 0);
}

TEST(Router, LoadWinsOverAffinityBeyondTheSlack) {
  const std::vector<uint32_t> ids = {0, 1, 2};
  const uint64_t affinity = PromptAffinity("a prompt");
  const size_t affine = AffineReplica(ids, affinity);
  const size_t other = (affine + 1) % 3;
  std::vector<int64_t> load = {0, 0, 0};
  load[affine] = 4096;
  EXPECT_EQ(PickReplica(load, ids, affinity, 4096), affine) << "within the slack";
  load[affine] = 4097;
  load[(affine + 2) % 3] = 10;
  EXPECT_EQ(PickReplica(load, ids, affinity, 4096), other) << "beyond it: the least loaded";
  EXPECT_EQ(PickReplica(std::vector<int64_t>{123}, std::vector<uint32_t>{7}, affinity, 4096), 0u);
}

}  // namespace
}  // namespace inferbox::daemon
