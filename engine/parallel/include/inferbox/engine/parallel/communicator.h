// Collectives among the ranks of one tensor-parallel group inside an engine process. Each
// rank holds its own Communicator and calls it from its own thread (one thread per rank, as
// one thread drives each GPU). Every rank must call the same collectives in the same order
// with the same sizes, as NCCL requires: a mismatch is a broken invariant (the in-process
// implementation aborts), and a rank that never arrives leaves the others waiting.
//
// Memory. Buffers live where the rank's backend computes (Backend's activations); memory()
// says which memory the implementation can move. The in-process implementation
// (MakeLocalCommunicators) works on host memory: CPU backends and tests.
//
// NCCL (nccl_communicator.h): one ncclComm_t per rank, all made at once with
// ncclCommInitAll in this one process, memory() == kDevice; ncclAllReduce(ncclFloat, ncclSum)
// in place, ncclAllGather, ncclBroadcast and a one-element all-reduce for Barrier, on the
// communicator's own stream after the device's queued work (so ordered with the backend's
// ops without the backend exposing its stream, at one host round trip per collective).
// TensorParallelModel takes the communicators it is given and needs no change.
//
// Determinism. The in-process all-reduce adds the ranks' values in rank order
// (((rank 0 + rank 1) + rank 2) + ...) in float32: every rank gets the same bits, run after
// run.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace inferbox::engine {

enum class CommunicatorMemory {
  kHost,    // Host memory (the CPU backend's activations).
  kDevice,  // The device memory of the rank's backend.
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int32_t rank() const = 0;
  virtual int32_t world_size() const = 0;
  virtual CommunicatorMemory memory() const = 0;

  // data = the sum over every rank of its data, element by element; every rank gets the
  // same values.
  virtual void AllReduceSum(std::span<float> data) = 0;
  // received = every rank's `sent` in rank order: received.size() == world_size() ×
  // sent.size(). `sent` may be this rank's own part of `received` (in place).
  virtual void AllGather(std::span<const std::byte> sent, std::span<std::byte> received) = 0;
  // data = the root rank's data, on every rank.
  virtual void Broadcast(std::span<std::byte> data, int32_t root) = 0;
  // Returns once every rank has called it.
  virtual void Barrier() = 0;
};

// `world_size` communicators that meet in shared host memory, rank r at index r; each is
// handed to the thread of its rank. What they share lives as long as any of them.
std::vector<std::unique_ptr<Communicator>> MakeLocalCommunicators(int32_t world_size);

}  // namespace inferbox::engine
