// The CUDA backend: weights in BF16 on one device (vectors in float32), GEMMs through
// cuBLASLt with float32 accumulation, our own kernels for the rest (kernels.h), a BF16 paged
// KV cache, everything enqueued on one stream and synchronised only where the host reads
// (ReadBack). Correctness is proven against the CPU reference op by op
// (tests/backend/backend_ops_test.cc) and end to end (tests/gpu/cuda_forward_test.cc).
#pragma once

#include <memory>

#include "inferbox/common/status.h"
#include "inferbox/engine/backend/backend.h"

namespace inferbox::engine::cuda {

struct CudaBackendOptions {
  // Decode steps of up to 256 sequences replayed as CUDA graphs (Backend::RunRecorded);
  // INFERBOX_CUDA_GRAPHS=0 in the environment turns them off (to measure what they save).
  bool cuda_graphs = true;
  // Recordings kept at most (one per batch size and context bucket); past it the least
  // recently used goes. Each holds a few hundred kernel launches' worth of host and device
  // memory.
  int64_t max_recordings = 64;
  // A transformer layer's Linears of at most 8 rows (decode steps of a few sequences) on the
  // backend's own kernel (LaunchSmallBatchLinear: every weight read once, outputs and biases
  // written where they go) instead of a cuBLASLt GEMM and a kernel that splits its output;
  // INFERBOX_CUDA_GEMV=0 in the environment turns it off (to measure what it saves).
  bool small_batch_linears = true;
  // The KV cache's rows block by block, a block's keys of one KV head in one run of memory
  // (KvCacheLayer::block_major), instead of slot by slot with a slot's KV heads side by side;
  // INFERBOX_CUDA_KV_BLOCK_MAJOR=1 in the environment turns it on (to measure what it gives).
  bool block_major_kv = false;
  // The small-batch kernel launched as a programmatic dependent of the kernel before it (a
  // norm, the attention, SiLU·mul; compute capability 9.0 on): it starts while that kernel runs
  // and has L2 fetch the start of its weights meanwhile (LaunchSmallBatchLinear). Off: measured
  // on an H200 (2026-11-28), one stream was 4.1% slower with it (Llama-3.1-8B BF16), 6.1%
  // (Qwen2.5-7B) and 1.7% (FP8 linear layers); INFERBOX_CUDA_PDL=1 in the environment turns it
  // on (to measure it again).
  bool dependent_launches = false;
  // The tensor-core decode attention kernel's key and value fragments read from shared memory
  // by ldmatrix (four registers an instruction, the values' transpose included; an FP8 cache's
  // value codes turned into an FP16 tile once a tile) instead of by 16- and 32-bit loads (an FP8
  // cache's value codes a byte at a time). Off until measured on a GPU (built 2026-11-28
  // without one); INFERBOX_CUDA_DECODE_LDMATRIX=1 in the environment turns it on.
  bool decode_ldmatrix = false;
};

// A backend on CUDA device `device_index` (as numbered in CUDA_VISIBLE_DEVICES).
// FAILED_PRECONDITION when there is no such device or the driver is missing: restarting the
// engine will not change that.
Result<std::unique_ptr<Backend>> MakeCudaBackend(int device_index, CudaBackendOptions options = {});

}  // namespace inferbox::engine::cuda
