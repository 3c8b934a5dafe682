#include "inferbox/engine/parallel/nccl_communicator.h"

#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "inferbox/common/shared_library.h"

namespace inferbox::engine {
namespace {

// NCCL's C API as nccl.h declares it, for the few functions used: declared here rather than
// included so that the build needs no NCCL headers. Handles are pointers, ncclResult_t,
// ncclDataType_t and ncclRedOp_t are C enums (int-sized), numbered as in every NCCL 2.x.
using NcclComm = void*;
constexpr int kNcclSuccess = 0;
constexpr int kNcclInt8 = 0;
constexpr int kNcclFloat32 = 7;
constexpr int kNcclSum = 0;

struct NcclApi {
  int (*CommInitAll)(NcclComm* comms, int num_devices, const int* devices) = nullptr;
  int (*CommDestroy)(NcclComm comm) = nullptr;
  int (*AllReduce)(const void* sent, void* received, size_t count, int type, int op, NcclComm comm,
                   cudaStream_t stream) = nullptr;
  int (*AllGather)(const void* sent, void* received, size_t sent_count, int type, NcclComm comm,
                   cudaStream_t stream) = nullptr;
  int (*Broadcast)(const void* sent, void* received, size_t count, int type, int root,
                   NcclComm comm, cudaStream_t stream) = nullptr;
  const char* (*GetErrorString)(int result) = nullptr;
};

// Loaded once; never unloaded.
const Result<NcclApi>& LoadNccl() {
  static const Result<NcclApi> api = []() -> Result<NcclApi> {
    auto library = SharedLibrary::Open(
        {"libnccl.so.2", "libnccl.so"},
        "NCCL (libnccl.so.2, package libnccl2) is not installed or not on the library path, and "
        "tensor parallelism across GPUs needs it");
    if (!library.ok()) return library.status();
    NcclApi loaded;
    library->Resolve(loaded.CommInitAll, "ncclCommInitAll");
    library->Resolve(loaded.CommDestroy, "ncclCommDestroy");
    library->Resolve(loaded.AllReduce, "ncclAllReduce");
    library->Resolve(loaded.AllGather, "ncclAllGather");
    library->Resolve(loaded.Broadcast, "ncclBroadcast");
    library->Resolve(loaded.GetErrorString, "ncclGetErrorString");
    if (!library->missing().empty()) {
      return FailedPreconditionError("the NCCL found lacks " + library->missing());
    }
    return loaded;
  }();
  return api;
}

[[noreturn]] void Fatal(std::string_view call, std::string_view error) {
  std::fprintf(stderr, "fatal: %.*s failed: %.*s\n", static_cast<int>(call.size()), call.data(),
               static_cast<int>(error.size()), error.data());
  std::abort();
}

void CheckCuda(std::string_view call, cudaError_t error) {
  if (error != cudaSuccess) Fatal(call, cudaGetErrorString(error));
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const NcclApi& nccl, NcclComm comm, int device, int32_t rank, int32_t world_size)
      : nccl_(nccl), comm_(comm), device_(device), rank_(rank), world_size_(world_size) {}

  ~NcclCommunicator() override {
    cudaSetDevice(device_);
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    nccl_.CommDestroy(comm_);
    if (scratch_ != nullptr) cudaFree(scratch_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  // The stream and the barrier's one float, on the rank's device. Called once, after
  // construction (so that a failure part way leaves every communicator to its destructor).
  Status Allocate() {
    if (cudaError_t error = cudaSetDevice(device_); error != cudaSuccess) return CudaError(error);
    if (cudaError_t error = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
        error != cudaSuccess) {
      return CudaError(error);
    }
    if (cudaError_t error = cudaMalloc(&scratch_, sizeof(float)); error != cudaSuccess)
      return CudaError(error);
    return Status::Ok();
  }

  int32_t rank() const override { return rank_; }
  int32_t world_size() const override { return world_size_; }
  CommunicatorMemory memory() const override { return CommunicatorMemory::kDevice; }

  void AllReduceSum(std::span<float> data) override {
    if (data.empty()) return;
    Begin();
    Check("ncclAllReduce", nccl_.AllReduce(data.data(), data.data(), data.size(), kNcclFloat32,
                                           kNcclSum, comm_, stream_));
    End();
  }

  void AllGather(std::span<const std::byte> sent, std::span<std::byte> received) override {
    if (received.size() != sent.size() * static_cast<size_t>(world_size_)) {
      Fatal("AllGather", fmt::format("received holds {} bytes, not {} ranks x {}", received.size(),
                                     world_size_, sent.size()));
    }
    if (sent.empty()) return;
    Begin();
    Check("ncclAllGather",
          nccl_.AllGather(sent.data(), received.data(), sent.size(), kNcclInt8, comm_, stream_));
    End();
  }

  void Broadcast(std::span<std::byte> data, int32_t root) override {
    if (data.empty()) return;
    Begin();
    Check("ncclBroadcast",
          nccl_.Broadcast(data.data(), data.data(), data.size(), kNcclInt8, root, comm_, stream_));
    End();
  }

  void Barrier() override {
    Begin();
    Check("ncclAllReduce (barrier)",
          nccl_.AllReduce(scratch_, scratch_, 1, kNcclFloat32, kNcclSum, comm_, stream_));
    End();
  }

 private:
  Status CudaError(cudaError_t error) const {
    return UnavailableError(fmt::format("NCCL rank {} on CUDA device {}: {}", rank_, device_,
                                        cudaGetErrorString(error)));
  }
  // Every op queued on the device before the collective is done (the backend's stream too).
  void Begin() {
    CheckCuda("cudaSetDevice", cudaSetDevice(device_));
    CheckCuda("cudaDeviceSynchronize", cudaDeviceSynchronize());
  }
  // The collective is done before the backend queues its next op.
  void End() { CheckCuda("cudaStreamSynchronize", cudaStreamSynchronize(stream_)); }
  void Check(std::string_view call, int result) {
    if (result != kNcclSuccess) Fatal(call, nccl_.GetErrorString(result));
  }

  const NcclApi& nccl_;
  const NcclComm comm_;
  const int device_;
  const int32_t rank_;
  const int32_t world_size_;
  cudaStream_t stream_ = nullptr;
  void* scratch_ = nullptr;  // One float.
};

}  // namespace

Result<std::vector<std::unique_ptr<Communicator>>> MakeNcclCommunicators(
    std::span<const int> devices) {
  if (devices.empty()) return InvalidArgumentError("NCCL: no devices given");
  const Result<NcclApi>& nccl = LoadNccl();
  if (!nccl.ok()) return nccl.status();
  int count = 0;
  if (const cudaError_t error = cudaGetDeviceCount(&count); error != cudaSuccess) {
    cudaGetLastError();
    return FailedPreconditionError(
        fmt::format("no usable CUDA device for NCCL: {}", cudaGetErrorString(error)));
  }
  for (const int device : devices) {
    if (device < 0 || device >= count) {
      return FailedPreconditionError(
          fmt::format("NCCL: CUDA device {} does not exist ({} visible)", device, count));
    }
  }
  const auto world_size = static_cast<int32_t>(devices.size());
  std::vector<NcclComm> comms(devices.size(), nullptr);
  if (const int result = nccl->CommInitAll(comms.data(), world_size, devices.data());
      result != kNcclSuccess) {
    return UnavailableError(fmt::format("ncclCommInitAll over {} GPU(s) failed: {}", world_size,
                                        nccl->GetErrorString(result)));
  }
  std::vector<std::unique_ptr<Communicator>> communicators;
  std::vector<NcclCommunicator*> ranks;
  for (int32_t r = 0; r < world_size; ++r) {
    auto communicator = std::make_unique<NcclCommunicator>(
        *nccl, comms[static_cast<size_t>(r)], devices[static_cast<size_t>(r)], r, world_size);
    ranks.push_back(communicator.get());
    communicators.push_back(std::move(communicator));
  }
  for (NcclCommunicator* rank : ranks) {
    if (Status allocated = rank->Allocate(); !allocated.ok()) return allocated;
  }
  return communicators;
}

}  // namespace inferbox::engine
