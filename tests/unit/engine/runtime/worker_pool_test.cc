// WorkerPool: every index of every loop runs exactly once, on more than one thread when
// there are workers, and each ForEach returns only after all its calls have.
#include "inferbox/engine/runtime/worker_pool.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace inferbox::engine {
namespace {

TEST(WorkerPool, EveryIndexOfEveryLoopRunsOnceBeforeForEachReturns) {
  WorkerPool pool(3);
  EXPECT_EQ(pool.workers(), 3);
  for (int loop = 0; loop < 200; ++loop) {
    const int64_t count = loop % 37;
    std::vector<std::atomic<int>> calls(static_cast<size_t>(count));
    pool.ForEach(count, [&](int64_t i) { calls[static_cast<size_t>(i)].fetch_add(1); });
    for (int64_t i = 0; i < count; ++i)
      ASSERT_EQ(calls[static_cast<size_t>(i)].load(), 1) << "loop " << loop << " index " << i;
  }
}

TEST(WorkerPool, TheWorkersTakePartAndTheLoopWaitsForTheSlowestCall) {
  WorkerPool pool(2);
  std::mutex mutex;
  std::set<std::thread::id> threads;
  std::atomic<int> finished{0};
  pool.ForEach(6, [&](int64_t) {
    {
      std::lock_guard lock(mutex);
      threads.insert(std::this_thread::get_id());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    finished.fetch_add(1);
  });
  EXPECT_EQ(finished.load(), 6);
  EXPECT_GT(threads.size(), 1u) << "six 50 ms calls all ran on one thread";
}

TEST(WorkerPool, WithoutWorkersTheCallerRunsEverythingInOrder) {
  WorkerPool pool(0);
  std::vector<int64_t> order;
  pool.ForEach(5, [&](int64_t i) { order.push_back(i); });
  EXPECT_EQ(order, (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

}  // namespace
}  // namespace inferbox::engine
