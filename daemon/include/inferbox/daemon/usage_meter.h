// Admission and accounting of generations, one place for both public APIs (gRPC and HTTP):
// the EngineFrontend admits every generation here once its model and the caller's rights
// are checked, and settles it when it ends. Admission applies the caller's quotas
// (KeyQuotas); settling charges the tokens, frees the concurrency slot and writes the usage
// ledger row.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "inferbox/common/status.h"
#include "inferbox/daemon/frontend.h"
#include "inferbox/daemon/key_quotas.h"
#include "inferbox/daemon/usage_ledger.h"

namespace inferbox::daemon {

// One admitted generation. Used by one thread at a time (the stream's).
class MeteredRequest {
 public:
  MeteredRequest(KeyQuotas& quotas, UsageLedger* ledger, const Caller& caller, std::string model);
  // Never settled (the generation did not start): frees the slot, charges and records nothing.
  ~MeteredRequest();
  MeteredRequest(const MeteredRequest&) = delete;
  MeteredRequest& operator=(const MeteredRequest&) = delete;

  // The generation ended with `usage` (its tokens and outcome; the rest of the row is filled
  // in here: time, key, model, API, latency since admission): charges the tokens to the key,
  // frees its slot and records the ledger row. Only the first call counts.
  void Settle(UsageRecord usage);

 private:
  KeyQuotas& quotas_;
  UsageLedger* const ledger_;
  const std::string key_id_;
  const std::string api_;
  const std::string model_;
  const std::chrono::steady_clock::time_point admitted_;
  bool settled_ = false;
};

class UsageMeter {
 public:
  // Both must outlive the meter and every request it admitted; `ledger` may be null (no
  // rows are written).
  UsageMeter(KeyQuotas& quotas, UsageLedger* ledger) : quotas_(quotas), ledger_(ledger) {}

  // RESOURCE_EXHAUSTED with a QuotaViolation when one of the caller's quotas refuses.
  Result<std::unique_ptr<MeteredRequest>> Admit(const Caller& caller, std::string model);

 private:
  KeyQuotas& quotas_;
  UsageLedger* const ledger_;
};

}  // namespace inferbox::daemon
