// The in-process communicator: the ranks are threads of one process and meet at a shared
// barrier. A collective publishes each rank's buffer, waits for every rank, moves data
// between the published buffers, and waits again so that no buffer is reused while another
// rank still reads it.
#include <condition_variable>
#include <cstring>
#include <mutex>

#include "inferbox/common/status.h"
#include "inferbox/engine/parallel/communicator.h"

namespace inferbox::engine {
namespace {

// A reusable barrier for a fixed number of threads. Everything a thread wrote before
// ArriveAndWait is visible to every other thread once theirs returns (the mutex orders it).
class Rendezvous {
 public:
  explicit Rendezvous(int32_t num_threads) : num_threads_(num_threads) {}

  void ArriveAndWait() {
    std::unique_lock lock(mutex_);
    const uint64_t generation = generation_;
    if (++num_arrived_ == num_threads_) {
      num_arrived_ = 0;
      ++generation_;
      lock.unlock();
      all_arrived_.notify_all();
      return;
    }
    all_arrived_.wait(lock, [&] { return generation_ != generation; });
  }

 private:
  const int32_t num_threads_;
  std::mutex mutex_;
  std::condition_variable all_arrived_;
  int32_t num_arrived_ = 0;
  uint64_t generation_ = 0;
};

// What the ranks of one group share. Rank r writes slots[r] only, before the first
// rendezvous of a collective; the others read it between that rendezvous and the next.
struct LocalGroup {
  struct Slot {
    void* data = nullptr;
    size_t count = 0;  // Elements: floats for AllReduceSum, bytes otherwise.
  };

  explicit LocalGroup(int32_t world_size)
      : rendezvous(world_size), slots(static_cast<size_t>(world_size)) {}

  Rendezvous rendezvous;
  std::vector<Slot> slots;
};

class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator(std::shared_ptr<LocalGroup> group, int32_t rank, int32_t world_size)
      : group_(std::move(group)),
        rank_(rank),
        world_size_(world_size),
        parts_(static_cast<size_t>(world_size)) {}

  int32_t rank() const override { return rank_; }
  int32_t world_size() const override { return world_size_; }
  CommunicatorMemory memory() const override { return CommunicatorMemory::kHost; }

  // Rank r adds up the r-th of world_size ranges of the buffers, in rank order, and writes
  // the sum into every rank's buffer: the work is spread and every rank gets the same bits.
  void AllReduceSum(std::span<float> data) override {
    if (world_size_ == 1) return;
    Publish(data.data(), data.size());
    for (size_t r = 0; r < parts_.size(); ++r)
      parts_[r] = static_cast<float*>(group_->slots[r].data);
    const size_t begin = data.size() * static_cast<size_t>(rank_) / parts_.size();
    const size_t end = data.size() * static_cast<size_t>(rank_ + 1) / parts_.size();
    for (size_t i = begin; i < end; ++i) {
      float sum = parts_[0][i];
      for (size_t r = 1; r < parts_.size(); ++r) sum += parts_[r][i];
      for (float* part : parts_) part[i] = sum;
    }
    group_->rendezvous.ArriveAndWait();
  }

  void AllGather(std::span<const std::byte> sent, std::span<std::byte> received) override {
    INFERBOX_CHECK(received.size() == sent.size() * static_cast<size_t>(world_size_));
    // Only read through the slot: const_cast keeps one slot type for every collective.
    Publish(const_cast<std::byte*>(sent.data()), sent.size());
    for (size_t r = 0; r < group_->slots.size(); ++r) {
      std::byte* target = received.data() + r * sent.size();
      const void* source = group_->slots[r].data;
      if (!sent.empty() && target != source) std::memmove(target, source, sent.size());
    }
    group_->rendezvous.ArriveAndWait();
  }

  void Broadcast(std::span<std::byte> data, int32_t root) override {
    INFERBOX_CHECK(root >= 0 && root < world_size_);
    Publish(data.data(), data.size());
    if (rank_ != root && !data.empty())
      std::memcpy(data.data(), group_->slots[static_cast<size_t>(root)].data, data.size());
    group_->rendezvous.ArriveAndWait();
  }

  void Barrier() override { group_->rendezvous.ArriveAndWait(); }

 private:
  // Shows this rank's buffer to the others and waits for theirs, which must hold as many
  // elements.
  void Publish(void* data, size_t count) {
    group_->slots[static_cast<size_t>(rank_)] = {data, count};
    group_->rendezvous.ArriveAndWait();
    for (const LocalGroup::Slot& slot : group_->slots) INFERBOX_CHECK(slot.count == count);
  }

  const std::shared_ptr<LocalGroup> group_;
  const int32_t rank_;
  const int32_t world_size_;
  std::vector<float*> parts_;  // AllReduceSum's view of every rank's buffer.
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> MakeLocalCommunicators(int32_t world_size) {
  INFERBOX_CHECK(world_size >= 1);
  auto group = std::make_shared<LocalGroup>(world_size);
  std::vector<std::unique_ptr<Communicator>> communicators;
  for (int32_t rank = 0; rank < world_size; ++rank)
    communicators.push_back(std::make_unique<LocalCommunicator>(group, rank, world_size));
  return communicators;
}

}  // namespace inferbox::engine
