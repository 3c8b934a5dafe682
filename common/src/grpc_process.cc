#include "inferbox/common/grpc_process.h"

#include <absl/synchronization/mutex.h>

namespace inferbox {

void DisableMutexDeadlockDetection() {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}

}  // namespace inferbox
