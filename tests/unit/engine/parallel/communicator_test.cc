// The in-process communicator with 1 to 4 ranks, each on its own thread as in a tensor-
// parallel group: every collective, repeated, at sizes from 0 up to odd lengths that do not
// split evenly among the ranks. The all-reduce must give every rank the same bits as adding
// the ranks' values in rank order.
#include "inferbox/engine/parallel/communicator.h"

#include <atomic>
#include <cstring>
#include <functional>
#include <random>
#include <thread>

#include <gtest/gtest.h>

namespace inferbox::engine {
namespace {

// Runs body(communicator) for every rank of a fresh group, each on its own thread.
void RunRanks(int32_t world_size, const std::function<void(Communicator&)>& body) {
  auto communicators = MakeLocalCommunicators(world_size);
  std::vector<std::thread> threads;
  for (auto& communicator : communicators)
    threads.emplace_back([&body, &communicator] { body(*communicator); });
  for (auto& thread : threads) thread.join();
}

// A value that differs by rank, element and round, with magnitudes far apart so that the
// order of addition shows in the rounding.
float Value(int32_t rank, size_t index, int round) {
  const float magnitude = (index + static_cast<size_t>(rank)) % 3 == 0 ? 1e8f : 1.0f;
  return magnitude * static_cast<float>((rank * 7 + static_cast<int>(index) * 13 + round) % 11 - 5);
}

class CommunicatorTest : public ::testing::TestWithParam<int32_t> {};

TEST_P(CommunicatorTest, RanksKnowWhoTheyAre) {
  const int32_t world_size = GetParam();
  const auto communicators = MakeLocalCommunicators(world_size);
  ASSERT_EQ(communicators.size(), static_cast<size_t>(world_size));
  for (int32_t r = 0; r < world_size; ++r) {
    EXPECT_EQ(communicators[static_cast<size_t>(r)]->rank(), r);
    EXPECT_EQ(communicators[static_cast<size_t>(r)]->world_size(), world_size);
    EXPECT_EQ(communicators[static_cast<size_t>(r)]->memory(), CommunicatorMemory::kHost);
  }
}

TEST_P(CommunicatorTest, AllReduceSumsInRankOrderOnEveryRank) {
  const int32_t world_size = GetParam();
  const std::vector<size_t> sizes = {0, 1, 2, 3, 7, 64, 1001, 4099};
  constexpr int kRounds = 5;
  std::vector<std::vector<std::vector<float>>> results(static_cast<size_t>(world_size));
  RunRanks(world_size, [&](Communicator& communicator) {
    for (int round = 0; round < kRounds; ++round) {
      for (const size_t size : sizes) {
        std::vector<float> data(size);
        for (size_t i = 0; i < size; ++i) data[i] = Value(communicator.rank(), i, round);
        communicator.AllReduceSum(data);
        results[static_cast<size_t>(communicator.rank())].push_back(std::move(data));
      }
    }
  });
  size_t call = 0;
  for (int round = 0; round < kRounds; ++round) {
    for (const size_t size : sizes) {
      std::vector<float> expected(size);
      for (size_t i = 0; i < size; ++i) {
        float sum = Value(0, i, round);
        for (int32_t r = 1; r < world_size; ++r) sum += Value(r, i, round);
        expected[i] = sum;
      }
      for (int32_t r = 0; r < world_size; ++r) {
        const std::vector<float>& got = results[static_cast<size_t>(r)][call];
        ASSERT_EQ(got.size(), size);
        EXPECT_EQ(std::memcmp(got.data(), expected.data(), size * sizeof(float)), 0)
            << "rank " << r << " of " << world_size << ", round " << round << ", " << size
            << " floats: not the rank-order sum, bit for bit";
      }
      ++call;
    }
  }
}

TEST_P(CommunicatorTest, AllGatherConcatenatesInRankOrder) {
  const int32_t world_size = GetParam();
  const std::vector<size_t> sizes = {0, 1, 5, 333, 4096};
  constexpr int kRounds = 4;
  std::atomic<int> failures = 0;
  RunRanks(world_size, [&](Communicator& communicator) {
    auto byte = [](int32_t rank, size_t i, int round) {
      return static_cast<std::byte>((rank * 31 + static_cast<int>(i) * 7 + round) & 0xFF);
    };
    for (int round = 0; round < kRounds; ++round) {
      for (const size_t size : sizes) {
        std::vector<std::byte> sent(size);
        for (size_t i = 0; i < size; ++i) sent[i] = byte(communicator.rank(), i, round);
        std::vector<std::byte> received(size * static_cast<size_t>(world_size), std::byte{0xEE});
        communicator.AllGather(sent, received);
        // In place: this rank's part of the output is its input.
        std::vector<std::byte> in_place(received.size());
        std::copy(sent.begin(), sent.end(),
                  in_place.begin() + static_cast<int64_t>(size) * communicator.rank());
        communicator.AllGather(
            std::span<const std::byte>(in_place).subspan(size * communicator.rank(), size),
            in_place);
        for (int32_t r = 0; r < world_size; ++r) {
          for (size_t i = 0; i < size; ++i) {
            const size_t at = static_cast<size_t>(r) * size + i;
            if (received[at] != byte(r, i, round) || in_place[at] != byte(r, i, round)) ++failures;
          }
        }
      }
    }
  });
  EXPECT_EQ(failures.load(), 0) << "bytes out of place after all-gathers among " << world_size
                                << " ranks";
}

TEST_P(CommunicatorTest, BroadcastCopiesTheRootsDataToEveryRank) {
  const int32_t world_size = GetParam();
  const std::vector<size_t> sizes = {0, 3, 1000};
  std::atomic<int> failures = 0;
  RunRanks(world_size, [&](Communicator& communicator) {
    for (int round = 0; round < 3; ++round) {
      for (int32_t root = 0; root < world_size; ++root) {
        for (const size_t size : sizes) {
          std::vector<std::byte> data(size);
          for (size_t i = 0; i < size; ++i) {
            data[i] = static_cast<std::byte>(
                (communicator.rank() * 17 + static_cast<int>(i) + round) & 0xFF);
          }
          communicator.Broadcast(data, root);
          for (size_t i = 0; i < size; ++i) {
            if (data[i] != static_cast<std::byte>((root * 17 + static_cast<int>(i) + round) & 0xFF))
              ++failures;
          }
        }
      }
    }
  });
  EXPECT_EQ(failures.load(), 0) << "bytes differ from the root's after broadcasts among "
                                << world_size << " ranks";
}

TEST_P(CommunicatorTest, BarrierHoldsEveryRankUntilAllArrive) {
  const int32_t world_size = GetParam();
  constexpr int kRounds = 200;
  std::vector<std::atomic<int>> reached(static_cast<size_t>(world_size));
  std::atomic<int> early = 0;
  RunRanks(world_size, [&](Communicator& communicator) {
    for (int round = 1; round <= kRounds; ++round) {
      reached[static_cast<size_t>(communicator.rank())].store(round);
      communicator.Barrier();
      for (const auto& other : reached) {
        if (other.load() < round) ++early;
      }
    }
  });
  EXPECT_EQ(early.load(), 0) << "a rank left a barrier before every rank had reached it";
}

TEST_P(CommunicatorTest, MixedCollectivesKeepInStep) {
  const int32_t world_size = GetParam();
  std::atomic<int> failures = 0;
  RunRanks(world_size, [&](Communicator& communicator) {
    std::mt19937 sizes(7);  // The same sequence of sizes on every rank.
    for (int round = 0; round < 100; ++round) {
      const size_t size = sizes() % 50;
      std::vector<float> sum(size, static_cast<float>(communicator.rank() + 1));
      communicator.AllReduceSum(sum);
      const auto expected = static_cast<float>(world_size * (world_size + 1) / 2);
      for (const float value : sum) {
        if (value != expected) ++failures;
      }
      const int32_t root = round % world_size;
      int32_t value = communicator.rank() == root ? round : -1;
      communicator.Broadcast(std::as_writable_bytes(std::span(&value, 1)), root);
      if (value != round) ++failures;
      if (round % 10 == 0) communicator.Barrier();
    }
  });
  EXPECT_EQ(failures.load(), 0);
}

INSTANTIATE_TEST_SUITE_P(Ranks, CommunicatorTest, ::testing::Values(1, 2, 3, 4),
                         [](const auto& test_info) {
                           return std::to_string(test_info.param) + "_ranks";
                         });

}  // namespace
}  // namespace inferbox::engine
