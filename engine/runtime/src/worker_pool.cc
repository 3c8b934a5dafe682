#include "inferbox/engine/runtime/worker_pool.h"

namespace inferbox::engine {

WorkerPool::WorkerPool(int workers) {
  threads_.reserve(static_cast<size_t>(workers > 0 ? workers : 0));
  for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { Work(); });
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (std::thread& thread : threads_) thread.join();
}

void WorkerPool::RunItems() {
  for (int64_t i = next_.fetch_add(1); i < count_; i = next_.fetch_add(1)) (*body_)(i);
}

void WorkerPool::ForEach(int64_t count, const std::function<void(int64_t)>& body) {
  if (threads_.empty() || count <= 1) {
    for (int64_t i = 0; i < count; ++i) body(i);
    return;
  }
  {
    std::lock_guard lock(mutex_);
    body_ = &body;
    count_ = count;
    next_.store(0);
    busy_ = static_cast<int>(threads_.size());
    ++generation_;
  }
  wake_.notify_all();
  RunItems();
  // Every worker has seen this loop (and left it) before body_ may go out of scope.
  std::unique_lock lock(mutex_);
  done_.wait(lock, [this] { return busy_ == 0; });
  body_ = nullptr;
}

void WorkerPool::Work() {
  uint64_t seen = 0;
  std::unique_lock lock(mutex_);
  while (true) {
    wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    lock.unlock();
    RunItems();
    lock.lock();
    if (--busy_ == 0) done_.notify_one();
  }
}

}  // namespace inferbox::engine
