#include "inferbox/daemon/usage_meter.h"

namespace inferbox::daemon {

MeteredRequest::MeteredRequest(KeyQuotas& quotas, UsageLedger* ledger, const Caller& caller,
                               std::string model)
    : quotas_(quotas),
      ledger_(ledger),
      key_id_(caller.key_id),
      api_(caller.api),
      model_(std::move(model)),
      admitted_(std::chrono::steady_clock::now()) {}

MeteredRequest::~MeteredRequest() {
  if (!settled_) quotas_.Finish(key_id_, 0, quotas_.Now());
}

void MeteredRequest::Settle(UsageRecord usage) {
  if (settled_) return;
  settled_ = true;
  usage.finished_at = quotas_.Now();
  usage.key_id = key_id_;
  usage.model = model_;
  usage.api = api_;
  usage.latency = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - admitted_);
  quotas_.Finish(key_id_, usage.tokens(), usage.finished_at);
  if (ledger_ != nullptr) ledger_->Record(std::move(usage));
}

Result<std::unique_ptr<MeteredRequest>> UsageMeter::Admit(const Caller& caller, std::string model) {
  if (Status admitted = quotas_.Admit(caller); !admitted.ok()) return admitted;
  return std::make_unique<MeteredRequest>(quotas_, ledger_, caller, std::move(model));
}

}  // namespace inferbox::daemon
