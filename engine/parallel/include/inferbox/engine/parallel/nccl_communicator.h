// Communicators over NCCL for the GPUs of one engine process (one rank per GPU, all made at
// once with ncclCommInitAll). NCCL is opened at run time (dlopen of libnccl.so.2), never
// linked, so inferbox-engine starts on boxes without it; only --device cuda with
// --tensor-parallel above 1 needs it.
//
// Each communicator has its own CUDA stream on its rank's device. A collective waits for
// the device's queued work (cudaDeviceSynchronize: the backend's stream included), runs on
// that stream and waits for it, so it is ordered with the ops around it without the backend
// exposing its stream; the price is one host round trip per collective. Buffers are device
// memory of the rank's backend (memory() == kDevice). A NCCL or CUDA failure inside a
// collective is fatal (the process aborts saying which call failed; the supervisor restarts
// the engine), as a CUDA error inside a backend op is.
//
// Thread: each communicator is called by its rank's thread only (TensorParallelModel).
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/engine/parallel/communicator.h"

namespace inferbox::engine {

// Rank r on CUDA device `devices[r]` (numbered as CUDA_VISIBLE_DEVICES shows them).
// FAILED_PRECONDITION saying what is missing: a build without CUDA, NCCL not installed, no
// such device; UNAVAILABLE when NCCL fails to set up the group.
Result<std::vector<std::unique_ptr<Communicator>>> MakeNcclCommunicators(
    std::span<const int> devices);

}  // namespace inferbox::engine
