// A request's deltas between the runtime's delivery thread (producer: the DeltaCallback) and
// a thread of its own that takes them (consumer); deltas that arrive while the consumer is
// busy are merged into one. inferbox-loop-bench's second way: a thread per stream, as the
// engine server's synchronous gRPC handlers were before Generate became a callback reactor
// (engine_service.cc), to show what such wakes cost.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>

#include "inferbox/engine/runtime/runtime.h"

namespace inferbox::engine::bench {

class DeltaQueue {
 public:
  // The callback for Runtime::Submit; it keeps the queue alive.
  static DeltaCallback Callback(std::shared_ptr<DeltaQueue> queue) {
    return [queue = std::move(queue)](Delta&& delta) { queue->Push(std::move(delta)); };
  }

  void Push(Delta&& delta) {
    {
      std::lock_guard lock(mutex_);
      if (pending_) {
        pending_->Merge(std::move(delta));
      } else {
        pending_ = std::move(delta);
      }
    }
    changed_.notify_one();
  }

  // What arrived since the last Take (merged), waiting up to `timeout` for something.
  std::optional<Delta> Take(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    changed_.wait_for(lock, timeout, [this] { return pending_.has_value(); });
    std::optional<Delta> taken;
    taken.swap(pending_);
    return taken;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::optional<Delta> pending_;
};

}  // namespace inferbox::engine::bench
