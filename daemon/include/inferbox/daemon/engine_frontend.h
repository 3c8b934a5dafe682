// The InferenceFrontend of the real box: checks the model and the caller's rights, admits
// the generation against the caller's quotas (usage_meter.h), routes it to a ready engine
// replica (router.h), relays the engine's stream, and accounts for it when it ends. A
// stream reads its engine call through its own completion queue, so Read can time out
// (the API layers use that to watch their clients) without a thread per stream.
#pragma once

#include <atomic>
#include <mutex>
#include <string>

#include "inferbox/daemon/frontend.h"
#include "inferbox/daemon/supervisor.h"
#include "inferbox/daemon/usage_meter.h"
#include "inferbox/monitoring/serving_metrics.h"

namespace inferbox::daemon {

class EngineFrontend final : public InferenceFrontend {
 public:
  // `supervisor`, `metrics` and `meter` must outlive the frontend and every stream it
  // returned. `metrics` may be null; so may `meter` (no quotas, no usage rows).
  EngineFrontend(Supervisor& supervisor, monitoring::ServingMetrics* metrics,
                 UsageMeter* meter = nullptr)
      : supervisor_(supervisor), metrics_(metrics), meter_(meter) {}

  // false: new requests get UNAVAILABLE (the box is draining).
  void SetAccepting(bool accepting) { accepting_.store(accepting); }
  // The model a request gets when it names none or names "default" (Admin.SetDefaultModel);
  // empty: none. Any thread.
  void SetDefaultModel(std::string model);
  // [server] request_timeout_seconds: every generation ends with DEADLINE_EXCEEDED (HTTP 504,
  // or an error event in a stream) once it has run this long, or at its client's deadline if
  // that comes first; 0: only the client's deadline. Any thread; applies to new requests.
  void SetRequestTimeout(std::chrono::milliseconds timeout) {
    request_timeout_ms_.store(timeout.count());
  }

  Result<std::unique_ptr<GenerationStream>> Generate(
      const inferbox::v1::GenerateRequest& request, const Caller& caller,
      std::optional<std::chrono::system_clock::time_point> deadline) override;
  Result<std::unique_ptr<GenerationStream>> Chat(
      const inferbox::v1::ChatRequest& request, const Caller& caller,
      std::optional<std::chrono::system_clock::time_point> deadline) override;
  Result<inferbox::v1::TokenizeResponse> Tokenize(const inferbox::v1::TokenizeRequest& request,
                                                  const Caller& caller) override;
  std::vector<inferbox::v1::ModelInfo> ListModels() const override;
  bool ChatPromptOpensReasoning(std::string_view model) const override;
  std::string ToolCallFormat(std::string_view model) const override;

 private:
  // A ready replica of `model` for the caller, or why there is none.
  Result<std::shared_ptr<EngineReplica>> Route(const std::string& model, const Caller& caller,
                                               std::string_view affinity_prefix);
  Result<std::unique_ptr<GenerationStream>> Start(
      inferbox::engine::v1::GenerateRequest request, const std::string& model, const Caller& caller,
      std::string_view affinity_prefix, int64_t estimated_tokens,
      std::optional<std::chrono::system_clock::time_point> deadline);

  // Counts a refusal (by reason) and passes it on.
  Status Reject(Status status);
  // `model`, or the default model for "" and "default" (when one is set).
  std::string ResolveModel(const std::string& model) const override;

  Supervisor& supervisor_;
  monitoring::ServingMetrics* metrics_;
  UsageMeter* const meter_;
  std::atomic<bool> accepting_{true};
  std::atomic<uint64_t> next_request_{1};
  std::atomic<int64_t> request_timeout_ms_{0};
  mutable std::mutex default_mutex_;
  std::string default_model_;  // Guarded by default_mutex_.
};

}  // namespace inferbox::daemon
