// Replica choice: prefix affinity keeps requests that share a prompt prefix on one replica
// (its prefix cache has the prefix), until that replica is loaded well beyond the least
// loaded one.
#include "inferbox/daemon/router.h"

#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace inferbox::daemon {
namespace {

TEST(Router, ASharedPrefixAlwaysPicksTheSameReplicaUnderEvenLoad) {
  const std::vector<int64_t> load = {100, 120, 90, 110};
  const uint64_t affinity = PromptAffinity("You are a helpful assistant for the risk team.");
  const size_t first = PickReplica(load, affinity);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(PickReplica(load, affinity), first);
  // Only the first 256 bytes count: the user's question after a long system prompt does not.
  const std::string system(300, 's');
  EXPECT_EQ(PromptAffinity(system + "question one"), PromptAffinity(system + "question two"));
}

TEST(Router, DifferentPrefixesSpreadOverTheReplicas) {
  const std::vector<int64_t> load = {0, 0, 0, 0};
  std::set<size_t> used;
  for (int i = 0; i < 64; ++i)
    used.insert(PickReplica(load, PromptAffinity("prefix " + std::to_string(i))));
  EXPECT_EQ(used.size(), 4u);
}

TEST(Router, LoadWinsOverAffinityBeyondTheSlack) {
  const uint64_t affinity = 2;  // Affine replica: index 2 of 3.
  EXPECT_EQ(PickReplica(std::vector<int64_t>{0, 0, 4096}, affinity, 4096), 2u);
  EXPECT_EQ(PickReplica(std::vector<int64_t>{0, 10, 4097}, affinity, 4096), 0u);
  EXPECT_EQ(PickReplica(std::vector<int64_t>{500, 7, 9000}, affinity, 4096), 1u);
  EXPECT_EQ(PickReplica(std::vector<int64_t>{123}, affinity, 4096), 0u);
}

}  // namespace
}  // namespace inferbox::daemon
