// MakeNcclCommunicators in a build without CUDA.
#include "inferbox/engine/parallel/nccl_communicator.h"

namespace inferbox::engine {

Result<std::vector<std::unique_ptr<Communicator>>> MakeNcclCommunicators(std::span<const int>) {
  return FailedPreconditionError(
      "this inferbox-engine was built without CUDA: tensor parallelism across GPUs (NCCL) is "
      "not available");
}

}  // namespace inferbox::engine
