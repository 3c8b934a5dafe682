// Threads that run one loop's iterations together with the calling thread, then sleep until
// the next loop. For work between an engine's steps whose threads must not spin afterwards:
// an OpenMP team keeps spinning for a while after its region (libgomp's default wait
// policy), and on the CPU backend that took cores from OpenBLAS's own threads in the next
// step's GEMMs (the demo model's forward pass 10.5 -> 16 ms a step on 2 cores).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace inferbox::engine {

class WorkerPool {
 public:
  // `workers` threads besides the caller of ForEach (0: ForEach runs everything itself).
  explicit WorkerPool(int workers);
  ~WorkerPool();  // Stops and joins the workers (never while a ForEach runs).
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Calls `body(i)` once for each i in [0, count), on the workers and the calling thread, and
  // returns when every call has returned. One ForEach at a time; `body` must not throw.
  void ForEach(int64_t count, const std::function<void(int64_t)>& body);

  int workers() const { return static_cast<int>(threads_.size()); }

 private:
  void Work();
  void RunItems();

  std::mutex mutex_;
  std::condition_variable wake_;  // A new loop, or stop.
  std::condition_variable done_;  // The last worker left the loop.
  const std::function<void(int64_t)>* body_ = nullptr;
  int64_t count_ = 0;
  std::atomic<int64_t> next_{0};
  uint64_t generation_ = 0;
  int busy_ = 0;  // Workers not yet done with the current loop.
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace inferbox::engine
