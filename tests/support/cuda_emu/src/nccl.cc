// The CUDA emulator's NCCL (tests/support/cuda_emu), built as libnccl.so.2 so that
// engine/parallel's NCCL communicator opens it as it opens NVIDIA's: the functions that
// communicator resolves, over "device" memory that is host memory. Every rank of a
// communicator set is a thread of this process (ncclCommInitAll); a collective waits for
// every rank's call, checks that they agree (count, type, operation, root: else
// ncclInvalidUsage, as NCCL would hang or corrupt), and the last rank to arrive moves the
// data for all. Streams run work as it is enqueued, so the collective is done on return.
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

namespace {

constexpr int kSuccess = 0;
constexpr int kInvalidArgument = 4;
constexpr int kInvalidUsage = 5;
constexpr int kInt8 = 0;
constexpr int kFloat32 = 7;
constexpr int kSum = 0;

enum class Kind { kAllReduce, kAllGather, kBroadcast };

struct Call {
  Kind kind;
  const void* sent;
  void* received;
  size_t count;
  int type;
  int op_or_root;
};

class Group {
 public:
  explicit Group(int size) : size_(size), calls_(static_cast<size_t>(size)) {}

  int Collective(int rank, const Call& call) {
    std::unique_lock lock(mutex_);
    const uint64_t generation = generation_;
    calls_[static_cast<size_t>(rank)] = call;
    if (++arrived_ < size_) {
      done_.wait(lock, [&] { return generation_ != generation; });
      return results_[static_cast<size_t>(rank)];
    }
    Run();
    arrived_ = 0;
    ++generation_;
    done_.notify_all();
    return results_[static_cast<size_t>(rank)];
  }
  int size() const { return size_; }

 private:
  static size_t TypeBytes(int type) { return type == kFloat32 ? 4 : 1; }

  void Run() {
    results_.assign(static_cast<size_t>(size_), kSuccess);
    const Call& first = calls_[0];
    for (const Call& call : calls_) {
      if (call.kind != first.kind || call.count != first.count || call.type != first.type ||
          call.op_or_root != first.op_or_root) {
        results_.assign(static_cast<size_t>(size_), kInvalidUsage);
        return;
      }
    }
    const size_t bytes = first.count * TypeBytes(first.type);
    switch (first.kind) {
      case Kind::kAllReduce: {
        if (first.type != kFloat32 || first.op_or_root != kSum) {
          results_.assign(static_cast<size_t>(size_), kInvalidArgument);
          return;
        }
        std::vector<float> sum(first.count, 0.0f);
        for (const Call& call : calls_) {  // In rank order, as a ring would not be: exactness
          const auto* values = static_cast<const float*>(call.sent);  // is not promised.
          for (size_t i = 0; i < first.count; ++i) sum[i] += values[i];
        }
        for (const Call& call : calls_) std::memcpy(call.received, sum.data(), bytes);
        return;
      }
      case Kind::kAllGather: {
        std::vector<std::byte> all(bytes * calls_.size());
        for (size_t r = 0; r < calls_.size(); ++r)
          std::memcpy(all.data() + r * bytes, calls_[r].sent, bytes);
        for (const Call& call : calls_) std::memcpy(call.received, all.data(), all.size());
        return;
      }
      case Kind::kBroadcast: {
        const int root = first.op_or_root;
        if (root < 0 || root >= size_) {
          results_.assign(static_cast<size_t>(size_), kInvalidArgument);
          return;
        }
        std::vector<std::byte> data(bytes);
        std::memcpy(data.data(), calls_[static_cast<size_t>(root)].sent, bytes);
        for (const Call& call : calls_) std::memcpy(call.received, data.data(), bytes);
        return;
      }
    }
  }

  const int size_;
  std::mutex mutex_;
  std::condition_variable done_;
  std::vector<Call> calls_;
  std::vector<int> results_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
};

struct Comm {
  Group* group;
  int rank;
};

int Collective(void* comm, const Call& call) {
  if (comm == nullptr) return kInvalidArgument;
  auto* c = static_cast<Comm*>(comm);
  if (call.count > 0 && (call.sent == nullptr || call.received == nullptr)) return kInvalidArgument;
  return c->group->Collective(c->rank, call);
}

}  // namespace

extern "C" {

int ncclCommInitAll(void** comms, int num_devices, const int* devices) {
  if (comms == nullptr || num_devices < 1) return kInvalidArgument;
  (void)devices;
  auto* group = new Group(num_devices);  // Lives as long as the process (as NCCL's would).
  for (int r = 0; r < num_devices; ++r) comms[r] = new Comm{group, r};
  return kSuccess;
}

int ncclCommDestroy(void* comm) {
  delete static_cast<Comm*>(comm);
  return kSuccess;
}

int ncclAllReduce(const void* sent, void* received, size_t count, int type, int op, void* comm,
                  void* /*stream*/) {
  return Collective(comm, {Kind::kAllReduce, sent, received, count, type, op});
}

int ncclAllGather(const void* sent, void* received, size_t sent_count, int type, void* comm,
                  void* /*stream*/) {
  if (type != kInt8 && type != kFloat32) return kInvalidArgument;
  return Collective(comm, {Kind::kAllGather, sent, received, sent_count, type, 0});
}

int ncclBroadcast(const void* sent, void* received, size_t count, int type, int root, void* comm,
                  void* /*stream*/) {
  return Collective(comm, {Kind::kBroadcast, sent, received, count, type, root});
}

const char* ncclGetErrorString(int result) {
  switch (result) {
    case kSuccess: return "no error";
    case kInvalidArgument: return "invalid argument";
    case kInvalidUsage: return "invalid usage (the ranks' calls do not agree)";
    default: return "unknown result";
  }
}

}  // extern "C"
