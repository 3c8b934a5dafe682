// The CUDA emulator's runtime (tests/support/cuda_emu): the runtime API of cuda_runtime.h and
// the kernel executor of cuda_emu/device.h, on the CPU.
//
// Memory: "device" allocations are host memory, filled with 0xFF bytes (NaN as float and
// BF16) when allocated, as a GPU's memory is not zeroed; copies and memsets are checked to
// lie inside one allocation. Streams run their work when it is enqueued. Kernels: each block
// runs on the calling host thread with one fiber (own stack, own registers) per CUDA thread,
// switched by a few lines of assembly; a warp's lanes run in turn until each reaches a
// shuffle, a __syncthreads or its end; barriers are released when every live lane (warp) or
// thread (block) has arrived. A shuffle that cannot complete on a GPU (a lane in the mask
// exited, the lanes at different barriers) ends the process with the kernel, block and
// thread, like a device fault that the engine cannot survive.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda_emu/device.h"
#include "cuda_fp16.h"
#include "cuda_fp8.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUDA_EMU_ASAN 1
// LeakSanitizer off: the emulator's stacks and the test's singletons live until exit.
extern "C" const char* __asan_default_options() {
  return "detect_leaks=0";
}
#else
#define CUDA_EMU_ASAN 0
#endif

#if !defined(__x86_64__)
#error "the CUDA emulator's fibers are written for x86-64"
#endif

// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack,
// stores the stack pointer in *save and continues on the stack `load` (saved the same way).
// A new fiber's stack is laid out so that the switch "returns" into cuda_emu_trampoline,
// which calls r13(r12).
extern "C" void cuda_emu_switch(void** save, void* load);
extern "C" void cuda_emu_trampoline();
asm(R"(
  .text
  .globl cuda_emu_switch
  .type cuda_emu_switch, @function
cuda_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_emu_switch, .-cuda_emu_switch

  .globl cuda_emu_trampoline
  .type cuda_emu_trampoline, @function
cuda_emu_trampoline:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size cuda_emu_trampoline, .-cuda_emu_trampoline
  .section .note.GNU-stack,"",@progbits
  .text
)");

namespace cuda_emu {

thread_local uint3 current_thread_idx{};
thread_local uint3 current_block_idx{};
thread_local dim3 current_block_dim{};
thread_local dim3 current_grid_dim{};

namespace {

[[noreturn]] void Fault(const std::string& message) {
  std::fprintf(stderr, "cuda-emu: %s\n", message.c_str());
  std::fflush(stderr);
  std::abort();
}

thread_local cudaError_t last_error = cudaSuccess;

cudaError_t Fail(cudaError_t error) {
  last_error = error;
  return error;
}

// An injected device fault (INFERBOX_CUDA_EMU_FAULT_FILE names a file; once it exists, the
// next kernel "faults"): as on a GPU, the launch itself returns, and from then on every call
// of the process returns cudaErrorLaunchFailure (the context is lost).
std::atomic<bool> faulted{false};

bool InjectFault() {
  static const char* file = std::getenv("INFERBOX_CUDA_EMU_FAULT_FILE");
  return file != nullptr && access(file, F_OK) == 0;
}

// --- Device memory ---

struct Memory {
  std::mutex mutex;
  std::map<uintptr_t, size_t> allocations;  // Start → bytes.
  size_t used = 0;
};
Memory& DeviceMemory() {
  static Memory memory;
  return memory;
}

size_t TotalBytes() {
  static const size_t total = [] {
    const char* mib = std::getenv("INFERBOX_CUDA_EMU_MEMORY_MIB");
    return (mib != nullptr ? std::strtoull(mib, nullptr, 10) : 4096) << 20;
  }();
  return total;
}

int DeviceCount() {
  static const int count = [] {
    const char* devices = std::getenv("INFERBOX_CUDA_EMU_DEVICES");
    return devices != nullptr ? std::atoi(devices) : 1;
  }();
  return count;
}

// Whether [pointer, pointer + bytes) lies inside one device allocation.
bool IsDeviceRange(const void* pointer, size_t bytes) {
  Memory& memory = DeviceMemory();
  std::lock_guard lock(memory.mutex);
  const auto address = reinterpret_cast<uintptr_t>(pointer);
  auto after = memory.allocations.upper_bound(address);
  if (after == memory.allocations.begin()) return false;
  const auto& [start, size] = *std::prev(after);
  return address + bytes <= start + size;
}

cudaError_t Allocate(void** pointer, size_t bytes) {
  if (pointer == nullptr) return Fail(cudaErrorInvalidValue);
  Memory& memory = DeviceMemory();
  std::lock_guard lock(memory.mutex);
  if (memory.used + bytes > TotalBytes()) return Fail(cudaErrorMemoryAllocation);
  // 256-byte aligned, as cudaMalloc's are (cuBLASLt's algorithms assume it by default); the
  // exact size, so that AddressSanitizer sees a kernel reaching past it.
  void* data = nullptr;
  if (posix_memalign(&data, 256, std::max<size_t>(bytes, 1)) != 0) {
    return Fail(cudaErrorMemoryAllocation);
  }
  std::memset(data, 0xFF, bytes);
  memory.allocations.emplace(reinterpret_cast<uintptr_t>(data), bytes);
  memory.used += bytes;
  *pointer = data;
  return cudaSuccess;
}

cudaError_t Release(void* pointer) {
  if (pointer == nullptr) return cudaSuccess;
  Memory& memory = DeviceMemory();
  std::lock_guard lock(memory.mutex);
  auto found = memory.allocations.find(reinterpret_cast<uintptr_t>(pointer));
  if (found == memory.allocations.end()) return Fail(cudaErrorInvalidValue);
  memory.used -= found->second;
  memory.allocations.erase(found);
  std::free(pointer);
  return cudaSuccess;
}

// --- Streams and events ---

struct Handles {
  std::mutex mutex;
  std::set<const void*> streams;
  std::set<const void*> events;
};
Handles& LiveHandles() {
  static Handles handles;
  return handles;
}

bool IsStream(cudaStream_t stream) {
  if (stream == nullptr) return true;  // The legacy default stream.
  Handles& handles = LiveHandles();
  std::lock_guard lock(handles.mutex);
  return handles.streams.contains(stream);
}

// --- Stream capture (CUDA graphs) ---

// Work recorded while a stream is captured; a graph replays its nodes in the order they were
// recorded (one valid order of the graph that capturing one stream makes).
using Node = std::shared_ptr<const std::function<void()>>;
struct Capture {
  std::vector<Node> nodes;
  std::thread::id thread;    // The thread that began it (cudaStreamCaptureModeThreadLocal).
  bool invalidated = false;  // Something that cannot be captured was attempted.
};
struct Captures {
  std::mutex mutex;
  std::map<const void*, Capture> of_stream;
};
Captures& LiveCaptures() {
  static Captures captures;
  return captures;
}

// Records `work` if `stream` is being captured (cudaSuccess), or fails it as CUDA fails work
// given to a capture it invalidated; nullopt: the stream is not captured, the caller runs it.
std::optional<cudaError_t> Record(cudaStream_t stream, std::function<void()> work) {
  Captures& captures = LiveCaptures();
  std::lock_guard lock(captures.mutex);
  const auto found = captures.of_stream.find(stream);
  if (found == captures.of_stream.end()) return std::nullopt;
  if (found->second.invalidated) return Fail(cudaErrorStreamCaptureInvalidated);
  found->second.nodes.push_back(std::make_shared<const std::function<void()>>(std::move(work)));
  return cudaSuccess;
}

// Fails, as CUDA does, what cannot be captured, and invalidates the captures concerned (their
// cudaStreamEndCapture fails too): work on a captured stream that the emulation does not
// record (copies from or to host memory, which CUDA refuses for pageable memory; stream-ordered
// allocation; events), and calls that may synchronise (cudaMalloc, cudaFree, synchronous
// copies, synchronisations) made by a thread while it captures (cudaStreamCaptureModeThread
// Local's "unsafe" calls). cudaSuccess where none applies.
template <typename Concerned>
cudaError_t RefuseIf(Concerned concerned) {
  Captures& captures = LiveCaptures();
  std::lock_guard lock(captures.mutex);
  bool refused = false;
  for (auto& [stream, capture] : captures.of_stream) {
    if (concerned(stream, capture)) {
      capture.invalidated = true;
      refused = true;
    }
  }
  return refused ? Fail(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
}
cudaError_t RefuseOnCapturedStream(cudaStream_t stream) {
  return RefuseIf([stream](const void* captured, const Capture&) { return captured == stream; });
}
cudaError_t RefuseWhileThisThreadCaptures() {
  return RefuseIf([](const void*, const Capture& capture) {
    return capture.thread == std::this_thread::get_id();
  });
}

std::atomic<int64_t> graph_launches{0};
std::atomic<int64_t> live_graph_execs{0};

}  // namespace

// --- Kernel executor ---

namespace {

constexpr size_t kStackBytes = 256 << 10;
[[maybe_unused]] constexpr size_t kTopBytes = 16 << 10;
constexpr int kWarpSize = 32;

// One kernel launch, shared by the host threads that run its blocks.
struct Launch {
  const char* name = "";
  dim3 grid;
  dim3 block;
  const std::function<void()>* body = nullptr;
  uint64_t num_blocks = 0;
  std::atomic<uint64_t> next{0};
};

enum class FiberState { kNotStarted, kRunnable, kAtWarpBarrier, kAtBlockBarrier, kDone };

struct Fiber {
  void* sp = nullptr;
  char* stack = nullptr;  // Lowest usable address, above a guard page.
  FiberState state = FiberState::kDone;
  uint3 index{};
  uint64_t warp_barriers = 0;  // Warp barriers passed, to match lanes.
  const char* warp_what = nullptr;
  unsigned warp_mask = 0;
  void* fake_stack = nullptr;  // AddressSanitizer's, while switched out.
};

class Executor {
 public:
  ~Executor() {
    for (Fiber& fiber : fibers_) {
      if (fiber.stack != nullptr) munmap(fiber.stack - PageSize(), kStackBytes + PageSize());
    }
  }

  // Runs blocks of `launch` (taken from its counter, shared with other host threads) until
  // none is left.
  void RunBlocks(Launch& launch) {
    if (running_) Fault(std::string("kernel ") + launch.name + " launched from inside a kernel");
    running_ = true;
    name_ = launch.name;
    body_ = launch.body;
    const dim3 grid = launch.grid;
    const dim3 block = launch.block;
    num_threads_ = static_cast<int>(block.x * block.y * block.z);
    if (fibers_.size() < static_cast<size_t>(num_threads_)) fibers_.resize(num_threads_);
    exchange_.assign(
        static_cast<size_t>((num_threads_ + kWarpSize - 1) / kWarpSize) * 2 * kWarpSize, 0);
    current_grid_dim = grid;
    current_block_dim = block;
    for (uint64_t b = launch.next.fetch_add(1); b < launch.num_blocks;
         b = launch.next.fetch_add(1)) {
      const auto x = static_cast<unsigned>(b % grid.x);
      const auto y = static_cast<unsigned>(b / grid.x % grid.y);
      const auto z = static_cast<unsigned>(b / (uint64_t{grid.x} * grid.y));
      RunBlock(uint3{x, y, z}, block);
    }
    running_ = false;
  }

  void SyncThreads() {
    Fiber& fiber = Current();
    fiber.state = FiberState::kAtBlockBarrier;
    SwitchToScheduler(fiber);
  }

  uint64_t WarpExchange(uint64_t mine, unsigned mask, int source, const char* what) {
    return AtWarpBarrier(mine, mask, what, [&](const uint64_t* slots) {
      return source >= 0 && source < kWarpSize ? slots[source] : mine;
    });
  }

  void WarpAllGather(uint64_t mine, uint64_t* all, const char* what) {
    AtWarpBarrier(mine, 0xffffffffu, what, [&](const uint64_t* slots) {
      std::copy(slots, slots + kWarpSize, all);
      return 0;
    });
  }

  int LaneId() const { return current_ % kWarpSize; }

  static void FiberEntry(Executor* executor) { executor->FiberMain(); }

 private:
  static size_t PageSize() {
    static const size_t size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    return size;
  }

  Fiber& Current() {
    if (current_ < 0) Fault("a device function was called outside a kernel");
    return fibers_[static_cast<size_t>(current_)];
  }

  // Publishes `mine` for this lane, waits until the lanes of `mask` have published theirs,
  // and returns what `read` makes of the warp's slots.
  template <typename Read>
  std::invoke_result_t<Read, const uint64_t*> AtWarpBarrier(uint64_t mine, unsigned mask,
                                                            const char* what, Read read) {
    Fiber& fiber = Current();
    uint64_t* slots = WarpSlots(current_ / kWarpSize, fiber.warp_barriers);
    slots[current_ % kWarpSize] = mine;
    fiber.state = FiberState::kAtWarpBarrier;
    fiber.warp_what = what;
    fiber.warp_mask = mask;
    SwitchToScheduler(fiber);
    const auto result = read(slots);
    ++fiber.warp_barriers;
    return result;
  }

  uint64_t* WarpSlots(int warp, uint64_t generation) {
    return exchange_.data() + (static_cast<size_t>(warp) * 2 + generation % 2) * kWarpSize;
  }

  std::string Where(int thread) const {
    const Fiber& fiber = fibers_[static_cast<size_t>(thread)];
    return "kernel " + std::string(name_) + ", block (" + std::to_string(block_index_.x) + "," +
           std::to_string(block_index_.y) + "," + std::to_string(block_index_.z) + "), thread (" +
           std::to_string(fiber.index.x) + "," + std::to_string(fiber.index.y) + "," +
           std::to_string(fiber.index.z) + ")";
  }

  void Prepare(Fiber& fiber) {
    if (fiber.stack == nullptr) {
      void* memory = mmap(nullptr, kStackBytes + PageSize(), PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (memory == MAP_FAILED) Fault("no memory for a fiber stack");
      mprotect(memory, PageSize(), PROT_NONE);  // An overflow faults instead of corrupting.
      fiber.stack = static_cast<char*>(memory) + PageSize();
    }
#if CUDA_EMU_ASAN
    // The last thread on this stack ended inside FiberMain, whose frame stays poisoned (every
    // frame below it returned and cleaned up after itself).
    ASAN_UNPOISON_MEMORY_REGION(fiber.stack + kStackBytes - kTopBytes, kTopBytes);
#endif
    auto* top = reinterpret_cast<uint64_t*>(fiber.stack + kStackBytes);
    uint32_t control[2] = {0, 0};
    asm volatile("stmxcsr %0" : "=m"(control[0]));
    asm volatile("fnstcw %0" : "=m"(control[1]));
    *--top = reinterpret_cast<uint64_t>(&cuda_emu_trampoline);   // Where the switch returns.
    *--top = 0;                                                  // rbp
    *--top = 0;                                                  // rbx
    *--top = reinterpret_cast<uint64_t>(this);                   // r12: the argument.
    *--top = reinterpret_cast<uint64_t>(&Executor::FiberEntry);  // r13: the function.
    *--top = 0;                                                  // r14
    *--top = 0;                                                  // r15
    *--top = static_cast<uint64_t>(control[0]) | static_cast<uint64_t>(control[1]) << 32;
    fiber.sp = top;
    fiber.state = FiberState::kNotStarted;
    fiber.warp_barriers = 0;
  }

  void RunBlock(uint3 block_index, dim3 block) {
    block_index_ = block_index;
    current_block_idx = block_index;
    for (int t = 0; t < num_threads_; ++t) {
      Fiber& fiber = fibers_[static_cast<size_t>(t)];
      Prepare(fiber);
      const auto linear = static_cast<unsigned>(t);
      fiber.index =
          uint3{linear % block.x, linear / block.x % block.y, linear / (block.x * block.y)};
    }
    const int num_warps = (num_threads_ + kWarpSize - 1) / kWarpSize;
    // Odd blocks run their warps, and the lanes of each warp, last first: a missing
    // __syncthreads (or __syncwarp) lets a read overtake a write in one of the two orders,
    // so it shows as a difference from the reference instead of passing by luck.
    reversed_ = (block_index.x + block_index.y + block_index.z) % 2 == 1;
    while (true) {
      for (int i = 0; i < num_warps; ++i) RunWarp(reversed_ ? num_warps - 1 - i : i);
      // Every thread waits at __syncthreads or has ended.
      bool waiting = false;
      for (int t = 0; t < num_threads_; ++t) {
        Fiber& fiber = fibers_[static_cast<size_t>(t)];
        if (fiber.state == FiberState::kAtBlockBarrier) {
          fiber.state = FiberState::kRunnable;
          waiting = true;
        }
      }
      if (!waiting) return;
    }
  }

  // Runs the warp's lanes until each waits at __syncthreads or has ended.
  void RunWarp(int warp) {
    const int first = warp * kWarpSize;
    const int end = std::min(first + kWarpSize, num_threads_);
    while (true) {
      for (int i = 0; i < end - first; ++i) {
        const int t = reversed_ ? end - 1 - i : first + i;
        const FiberState state = fibers_[static_cast<size_t>(t)].state;
        if (state == FiberState::kNotStarted || state == FiberState::kRunnable) Resume(t);
      }
      int at_warp = -1;
      for (int t = first; t < end; ++t) {
        if (fibers_[static_cast<size_t>(t)].state == FiberState::kAtWarpBarrier) at_warp = t;
      }
      if (at_warp < 0) return;
      ReleaseWarpBarrier(first, end, at_warp);
    }
  }

  void ReleaseWarpBarrier(int first, int end, int example) {
    const Fiber& reference = fibers_[static_cast<size_t>(example)];
    const unsigned existing = end - first == kWarpSize ? 0xFFFFFFFFu : (1u << (end - first)) - 1;
    if (reference.warp_mask != existing) {
      Fault(std::string(reference.warp_what) + " with mask " + std::to_string(reference.warp_mask) +
            " in " + Where(example) +
            ": the mask names lanes that do not exist, or is partial (not emulated)");
    }
    for (int t = first; t < end; ++t) {
      const Fiber& fiber = fibers_[static_cast<size_t>(t)];
      if (fiber.state == FiberState::kDone) {
        Fault(std::string(reference.warp_what) + " in " + Where(example) + " waits for lane " +
              std::to_string(t - first) + ", which has exited: undefined on a GPU");
      }
      if (fiber.state != FiberState::kAtWarpBarrier) {
        Fault(std::string(reference.warp_what) + " in " + Where(example) + " while lane " +
              std::to_string(t - first) + " waits at __syncthreads: divergent barriers");
      }
      if (fiber.warp_barriers != reference.warp_barriers ||
          fiber.warp_mask != reference.warp_mask) {
        Fault(std::string(reference.warp_what) + " in " + Where(example) + " meets " +
              fiber.warp_what + " of lane " + std::to_string(t - first) +
              " at a different point of the code");
      }
    }
    for (int t = first; t < end; ++t) fibers_[static_cast<size_t>(t)].state = FiberState::kRunnable;
  }

  void Resume(int thread) {
    Fiber& fiber = fibers_[static_cast<size_t>(thread)];
    current_ = thread;
    current_thread_idx = fiber.index;
    fiber.state = FiberState::kRunnable;
#if CUDA_EMU_ASAN
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(&fake_stack, fiber.stack, kStackBytes);
#endif
    cuda_emu_switch(&scheduler_sp_, fiber.sp);
#if CUDA_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
    current_ = -1;
  }

  void SwitchToScheduler(Fiber& fiber) {
#if CUDA_EMU_ASAN
    __sanitizer_start_switch_fiber(&fiber.fake_stack, scheduler_stack_, scheduler_stack_bytes_);
#endif
    cuda_emu_switch(&fiber.sp, scheduler_sp_);
#if CUDA_EMU_ASAN
    __sanitizer_finish_switch_fiber(fiber.fake_stack, &scheduler_stack_, &scheduler_stack_bytes_);
#endif
  }

  [[noreturn]] void FiberMain() {
#if CUDA_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &scheduler_stack_, &scheduler_stack_bytes_);
#endif
    (*body_)();
    Fiber& fiber = Current();
    fiber.state = FiberState::kDone;
#if CUDA_EMU_ASAN
    __sanitizer_start_switch_fiber(nullptr, scheduler_stack_, scheduler_stack_bytes_);
#endif
    void* unused = nullptr;
    cuda_emu_switch(&unused, scheduler_sp_);
    __builtin_unreachable();
  }

  std::vector<Fiber> fibers_;
  std::vector<uint64_t> exchange_;  // Per warp, two generations of 32 slots.
  void* scheduler_sp_ = nullptr;
  const void* scheduler_stack_ = nullptr;
  size_t scheduler_stack_bytes_ = 0;
  const std::function<void()>* body_ = nullptr;
  const char* name_ = "";
  uint3 block_index_{};
  int num_threads_ = 0;
  int current_ = -1;
  bool running_ = false;
  bool reversed_ = false;
};

Executor& ThreadExecutor() {
  static thread_local Executor executor;
  return executor;
}

// Host threads that run blocks beside the launching one (blocks are independent; each host
// thread has its own executor and its own copy of the __shared__ variables).
class BlockPool {
 public:
  BlockPool() {
    const char* threads = std::getenv("INFERBOX_CUDA_EMU_THREADS");
    const unsigned wanted = threads != nullptr ? static_cast<unsigned>(std::atoi(threads))
                                               : std::min(8u, std::thread::hardware_concurrency());
    for (unsigned i = 1; i < wanted; ++i) workers_.emplace_back([this] { Work(); });
  }
  ~BlockPool() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& worker : workers_) worker.join();
  }

  // Runs every block of `launch` on this thread and the workers; returns when all are done.
  void Run(Launch& launch) {
    if (workers_.empty()) {
      ThreadExecutor().RunBlocks(launch);
      return;
    }
    std::unique_lock lock(mutex_);
    launch_ = &launch;
    busy_ = workers_.size();
    ++generation_;
    lock.unlock();
    wake_.notify_all();
    ThreadExecutor().RunBlocks(launch);
    lock.lock();
    done_.wait(lock, [this] { return busy_ == 0; });
    launch_ = nullptr;
  }

 private:
  void Work() {
    uint64_t seen = 0;
    std::unique_lock lock(mutex_);
    while (true) {
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
      Launch* launch = launch_;
      lock.unlock();
      ThreadExecutor().RunBlocks(*launch);
      lock.lock();
      if (--busy_ == 0) done_.notify_one();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::vector<std::thread> workers_;
  Launch* launch_ = nullptr;
  size_t busy_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
};

}  // namespace

namespace {

// Runs every block of a launch whose configuration was checked.
void Execute(const char* name, dim3 grid, dim3 block, const std::function<void()>& body) {
  if (faulted || InjectFault()) {
    faulted = true;
    return;
  }
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  Launch launch;
  launch.name = name;
  launch.grid = grid;
  launch.block = block;
  launch.body = &body;
  launch.num_blocks = uint64_t{grid.x} * grid.y * grid.z;
  // Small launches stay on this thread: waking the pool costs more than they do.
  if (launch.num_blocks < 2 || launch.num_blocks * threads < 4096) {
    ThreadExecutor().RunBlocks(launch);
    return;
  }
  static BlockPool pool;
  static std::mutex one_launch_at_a_time;
  std::lock_guard lock(one_launch_at_a_time);
  pool.Run(launch);
}

}  // namespace

void RunKernel(const char* name, dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
               const std::function<void()>& body) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      grid.x == 0 || grid.x > 0x7FFFFFFFu || grid.y == 0 || grid.y > 65535 || grid.z == 0 ||
      grid.z > 65535) {
    Fail(cudaErrorInvalidConfiguration);
    return;
  }
  if (shared_bytes != 0) Fault(std::string(name) + ": dynamic shared memory is not emulated");
  if (!IsStream(stream)) {
    Fail(cudaErrorInvalidResourceHandle);
    return;
  }
  // On a captured stream the launch is recorded with its arguments as they are now (a
  // kernel's parameters are copied at its launch) and runs at each replay of the graph.
  if (Record(stream, [name, grid, block, body] { Execute(name, grid, block, body); })) return;
  Execute(name, grid, block, body);
}

void SyncThreads() {
  ThreadExecutor().SyncThreads();
}

int LaneId() {
  return ThreadExecutor().LaneId();
}

uint64_t WarpExchange(uint64_t mine, unsigned mask, int source, const char* what) {
  return ThreadExecutor().WarpExchange(mine, mask, source, what);
}

void WarpAllGather(uint64_t mine, uint64_t* all, const char* what) {
  ThreadExecutor().WarpAllGather(mine, all, what);
}

namespace {

// d += a·b for mma.m16n8k`kK` over fragments of `kBits`-bit elements (the lowest first in
// each register) that `widen` turns into floats. Each lane holds A's four registers (rows g
// and g + 8, the first and second half of k), B's two (column g) and D's four.
template <int kK, int kBits, typename Widen>
void Mma(float* d, const uint32_t* a, const uint32_t* b, Widen widen) {
  constexpr int kPerRegister = 32 / kBits;
  constexpr int kHalf = kK / 2;
  // Each lane's fragments, gathered: A's four registers as two 64-bit values, B's as one.
  uint64_t a01[kWarpSize], a23[kWarpSize], b01[kWarpSize];
  WarpAllGather(a[0] | static_cast<uint64_t>(a[1]) << 32, a01, "mma.sync");
  WarpAllGather(a[2] | static_cast<uint64_t>(a[3]) << 32, a23, "mma.sync");
  WarpAllGather(b[0] | static_cast<uint64_t>(b[1]) << 32, b01, "mma.sync");
  const auto element = [&widen](uint64_t word, int index) {  // index: the elements, low first
    return widen(static_cast<uint32_t>((word >> (kBits * index)) & ((uint64_t{1} << kBits) - 1)));
  };
  // A[row][k]: lane (row % 8)·4 + (k % kHalf) / kPerRegister; register (row ≥ 8) + 2·(k ≥
  // kHalf); element k % kPerRegister.
  const auto a_at = [&](int row, int k) {
    const int lane = (row % 8) * 4 + (k % kHalf) / kPerRegister;
    const int reg = (row >= 8 ? 1 : 0) + (k >= kHalf ? 2 : 0);
    return element(reg < 2 ? a01[lane] : a23[lane], (reg % 2) * kPerRegister + k % kPerRegister);
  };
  // B[k][n]: lane n·4 + (k % kHalf) / kPerRegister; register (k ≥ kHalf).
  const auto b_at = [&](int k, int n) {
    return element(b01[n * 4 + (k % kHalf) / kPerRegister],
                   (k >= kHalf ? kPerRegister : 0) + k % kPerRegister);
  };
  const int lane = LaneId();
  const int g = lane / 4;
  const int t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0);
    const int col = 2 * t + i % 2;
    float sum = d[i];
    for (int k = 0; k < kK; ++k) sum += a_at(row, k) * b_at(k, col);
    d[i] = sum;
  }
}

}  // namespace

void MmaM16n8k16Bf16(float* d, const uint32_t* a, const uint32_t* b) {
  Mma<16, 16>(d, a, b, [](uint32_t bits) { return std::bit_cast<float>(bits << 16); });
}

void MmaM16n8k16F16(float* d, const uint32_t* a, const uint32_t* b) {
  Mma<16, 16>(d, a, b,
              [](uint32_t bits) { return __half2float(__half{static_cast<uint16_t>(bits)}); });
}

void MmaM16n8k32E4m3(float* d, const uint32_t* a, const uint32_t* b) {
  Mma<32, 8>(d, a, b, [](uint32_t code) { return E4M3Decode(code); });
}

void LoadMatricesX4(uint32_t* r, const void* row, bool transpose) {
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0) {
    Fault("ldmatrix: a row address that is not 16-byte aligned");
  }
  uint64_t rows[kWarpSize];
  WarpAllGather(reinterpret_cast<uintptr_t>(row), rows, "ldmatrix");
  const int lane = LaneId();
  const int g = lane / 4;
  const int t = lane % 4;
  // Matrix i's row r starts at the address lane 8i + r gave.
  const auto at = [&rows](int matrix, int matrix_row, int column) {
    return static_cast<uint32_t>(
        reinterpret_cast<const uint16_t*>(rows[8 * matrix + matrix_row])[column]);
  };
  for (int i = 0; i < 4; ++i) {
    r[i] = transpose ? at(i, 2 * t, g) | at(i, 2 * t + 1, g) << 16
                     : at(i, g, 2 * t) | at(i, g, 2 * t + 1) << 16;
  }
}

}  // namespace cuda_emu

// --- The runtime API ---

using cuda_emu::Fail;
using cuda_emu::RefuseOnCapturedStream;
using cuda_emu::RefuseWhileThisThreadCaptures;

namespace {

struct Event {
  std::chrono::steady_clock::time_point time;
  bool recorded = false;
};

cudaError_t Copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                 cudaStream_t stream) {
  if (!cuda_emu::IsStream(stream)) return Fail(cudaErrorInvalidResourceHandle);
  if (bytes == 0) return cudaSuccess;
  const bool device_dst = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool device_src = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (dst == nullptr || src == nullptr || (device_dst && !cuda_emu::IsDeviceRange(dst, bytes)) ||
      (device_src && !cuda_emu::IsDeviceRange(src, bytes))) {
    return Fail(cudaErrorInvalidValue);
  }
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

}  // namespace

extern "C" {

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorIllegalState:
      return "the operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorStreamCaptureUnsupported:
      return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
      return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureWrongThread:
      return "attempt to terminate a thread-local capture sequence from another thread";
    default: return "unknown error";
  }
}

cudaError_t cudaGetLastError() {
  return std::exchange(cuda_emu::last_error, cudaSuccess);
}
cudaError_t cudaPeekAtLastError() {
  return cuda_emu::last_error;
}

cudaError_t cudaGetDeviceCount(int* count) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (count == nullptr) return Fail(cudaErrorInvalidValue);
  *count = cuda_emu::DeviceCount();
  return *count == 0 ? Fail(cudaErrorNoDevice) : cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* properties, int device) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (properties == nullptr) return Fail(cudaErrorInvalidValue);
  if (device < 0 || device >= cuda_emu::DeviceCount()) return Fail(cudaErrorInvalidDevice);
  *properties = {};
  std::snprintf(properties->name, sizeof(properties->name), "inferbox CUDA emulator (CPU)");
  properties->totalGlobalMem = cuda_emu::TotalBytes();
  // An H100's shape, so that launch heuristics choose as they would there; another compute
  // capability with INFERBOX_CUDA_EMU_COMPUTE_CAPABILITY=MAJOR.MINOR (what older GPUs lack).
  properties->major = 9;
  properties->minor = 0;
  if (const char* capability = std::getenv("INFERBOX_CUDA_EMU_COMPUTE_CAPABILITY")) {
    std::sscanf(capability, "%d.%d", &properties->major, &properties->minor);
  }
  properties->multiProcessorCount = 132;
  properties->warpSize = 32;
  properties->maxThreadsPerBlock = 1024;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (device < 0 || device >= cuda_emu::DeviceCount()) return Fail(cudaErrorInvalidDevice);
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (device == nullptr) return Fail(cudaErrorInvalidValue);
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  return RefuseWhileThisThreadCaptures();
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (free_bytes == nullptr || total_bytes == nullptr) return Fail(cudaErrorInvalidValue);
  auto& memory = cuda_emu::DeviceMemory();
  std::lock_guard lock(memory.mutex);
  *total_bytes = cuda_emu::TotalBytes();
  *free_bytes = *total_bytes - memory.used;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** pointer, size_t bytes) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (const cudaError_t refused = RefuseWhileThisThreadCaptures()) return refused;
  return cuda_emu::Allocate(pointer, bytes);
}
cudaError_t cudaFree(void* pointer) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (const cudaError_t refused = RefuseWhileThisThreadCaptures()) return refused;
  return cuda_emu::Release(pointer);
}
// Stream-ordered allocation inside a capture (graph memory nodes) is not emulated.
cudaError_t cudaMallocAsync(void** pointer, size_t bytes, cudaStream_t stream) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (!cuda_emu::IsStream(stream)) return Fail(cudaErrorInvalidResourceHandle);
  if (const cudaError_t refused = RefuseOnCapturedStream(stream)) return refused;
  return cuda_emu::Allocate(pointer, bytes);
}
cudaError_t cudaFreeAsync(void* pointer, cudaStream_t stream) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (!cuda_emu::IsStream(stream)) return Fail(cudaErrorInvalidResourceHandle);
  if (const cudaError_t refused = RefuseOnCapturedStream(stream)) return refused;
  return cuda_emu::Release(pointer);
}
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (pool == nullptr || device < 0 || device >= cuda_emu::DeviceCount()) {
    return Fail(cudaErrorInvalidValue);
  }
  static int the_pool;
  *pool = reinterpret_cast<cudaMemPool_t>(&the_pool);
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr, void* value) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  return pool == nullptr || value == nullptr ? Fail(cudaErrorInvalidValue) : cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (const cudaError_t refused = RefuseWhileThisThreadCaptures()) return refused;
  return Copy(dst, src, bytes, kind, nullptr);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (kind != cudaMemcpyDeviceToDevice) {
    if (const cudaError_t refused = RefuseOnCapturedStream(stream)) return refused;
  } else if (cuda_emu::IsDeviceRange(dst, bytes) && cuda_emu::IsDeviceRange(src, bytes)) {
    if (const auto recorded =
            cuda_emu::Record(stream, [=] { Copy(dst, src, bytes, kind, nullptr); })) {
      return *recorded;
    }
  }
  return Copy(dst, src, bytes, kind, stream);
}
cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t stream) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (!cuda_emu::IsStream(stream)) return Fail(cudaErrorInvalidResourceHandle);
  if (bytes == 0) return cudaSuccess;
  if (!cuda_emu::IsDeviceRange(pointer, bytes)) return Fail(cudaErrorInvalidValue);
  if (const auto recorded = cuda_emu::Record(stream, [=] { std::memset(pointer, value, bytes); })) {
    return *recorded;
  }
  std::memset(pointer, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* pointer, int value, size_t bytes) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (const cudaError_t refused = RefuseWhileThisThreadCaptures()) return refused;
  return cudaMemsetAsync(pointer, value, bytes, nullptr);
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  return cudaStreamCreateWithFlags(stream, cudaStreamDefault);
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (stream == nullptr) return Fail(cudaErrorInvalidValue);
  auto& handles = cuda_emu::LiveHandles();
  std::lock_guard lock(handles.mutex);
  auto* created = reinterpret_cast<cudaStream_t>(new char);
  handles.streams.insert(created);
  *stream = created;
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  auto& handles = cuda_emu::LiveHandles();
  std::lock_guard lock(handles.mutex);
  if (handles.streams.erase(stream) == 0) return Fail(cudaErrorInvalidResourceHandle);
  delete reinterpret_cast<char*>(stream);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (!cuda_emu::IsStream(stream)) return Fail(cudaErrorInvalidResourceHandle);
  if (const cudaError_t refused = RefuseOnCapturedStream(stream)) return refused;
  return RefuseWhileThisThreadCaptures();
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (event == nullptr) return Fail(cudaErrorInvalidValue);
  auto& handles = cuda_emu::LiveHandles();
  std::lock_guard lock(handles.mutex);
  auto* created = reinterpret_cast<cudaEvent_t>(new Event);
  handles.events.insert(created);
  *event = created;
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  auto& handles = cuda_emu::LiveHandles();
  std::lock_guard lock(handles.mutex);
  if (handles.events.erase(event) == 0) return Fail(cudaErrorInvalidResourceHandle);
  delete reinterpret_cast<Event*>(event);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (event == nullptr || !cuda_emu::IsStream(stream)) {
    return Fail(cudaErrorInvalidResourceHandle);
  }
  // Event nodes are not emulated.
  if (const cudaError_t refused = RefuseOnCapturedStream(stream)) return refused;
  auto* recorded = reinterpret_cast<Event*>(event);
  recorded->time = std::chrono::steady_clock::now();
  recorded->recorded = true;
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (event == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  return RefuseWhileThisThreadCaptures();
}
cudaError_t cudaEventElapsedTime(float* milliseconds, cudaEvent_t start, cudaEvent_t stop) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (milliseconds == nullptr || start == nullptr || stop == nullptr) {
    return Fail(cudaErrorInvalidValue);
  }
  const auto* from = reinterpret_cast<Event*>(start);
  const auto* to = reinterpret_cast<Event*>(stop);
  if (!from->recorded || !to->recorded) return Fail(cudaErrorInvalidResourceHandle);
  *milliseconds = std::chrono::duration<float, std::milli>(to->time - from->time).count();
  return cudaSuccess;
}

// A captured graph and its executable form: the recorded work, replayed in order.
struct CUgraph_st {
  std::vector<cuda_emu::Node> nodes;
};
struct CUgraphExec_st {
  std::vector<cuda_emu::Node> nodes;
};

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (!cuda_emu::IsStream(stream)) return Fail(cudaErrorInvalidResourceHandle);
  // The legacy default stream cannot be captured; only the thread-local mode is emulated.
  if (stream == nullptr || mode != cudaStreamCaptureModeThreadLocal) {
    return Fail(cudaErrorStreamCaptureUnsupported);
  }
  auto& captures = cuda_emu::LiveCaptures();
  std::lock_guard lock(captures.mutex);
  if (captures.of_stream.contains(stream)) return Fail(cudaErrorIllegalState);
  captures.of_stream[stream].thread = std::this_thread::get_id();
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (graph == nullptr) return Fail(cudaErrorInvalidValue);
  auto& captures = cuda_emu::LiveCaptures();
  std::lock_guard lock(captures.mutex);
  const auto found = captures.of_stream.find(stream);
  if (found == captures.of_stream.end()) return Fail(cudaErrorIllegalState);
  if (found->second.thread != std::this_thread::get_id()) {
    return Fail(cudaErrorStreamCaptureWrongThread);
  }
  cuda_emu::Capture capture = std::move(found->second);
  captures.of_stream.erase(found);
  *graph = nullptr;
  if (capture.invalidated) return Fail(cudaErrorStreamCaptureInvalidated);
  *graph = new CUgraph_st{std::move(capture.nodes)};
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph,
                                 unsigned long long flags) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (exec == nullptr || graph == nullptr || flags != 0) return Fail(cudaErrorInvalidValue);
  *exec = new CUgraphExec_st{graph->nodes};
  ++cuda_emu::live_graph_execs;
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (exec == nullptr) return Fail(cudaErrorInvalidValue);
  if (!cuda_emu::IsStream(stream)) return Fail(cudaErrorInvalidResourceHandle);
  // A graph launched into a capture (a child graph) is not emulated.
  if (const cudaError_t refused = RefuseOnCapturedStream(stream)) return refused;
  ++cuda_emu::graph_launches;
  for (const cuda_emu::Node& node : exec->nodes) (*node)();
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  if (exec != nullptr) --cuda_emu::live_graph_execs;
  delete exec;
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}

cudaError_t cuda_emu_enqueue(cudaStream_t stream, void (*run)(void*), void (*release)(void*),
                             void* context) {
  std::shared_ptr<void> owned(context, release);
  if (cuda_emu::faulted) return Fail(cudaErrorLaunchFailure);
  if (!cuda_emu::IsStream(stream)) return Fail(cudaErrorInvalidResourceHandle);
  if (const auto recorded = cuda_emu::Record(stream, [run, owned] { run(owned.get()); })) {
    return *recorded;
  }
  run(context);
  return cudaSuccess;
}

long long cuda_emu_graph_launches(void) {
  return cuda_emu::graph_launches.load();
}

long long cuda_emu_live_graph_execs(void) {
  return cuda_emu::live_graph_execs.load();
}

}  // extern "C"
