#include "inferbox/daemon/inference_service.h"

#include <atomic>
#include <memory>
#include <random>

#include <spdlog/spdlog.h>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "inferbox/common/grpc_status.h"
#include "inferbox/daemon/grpc_auth.h"

namespace inferbox::daemon {
namespace {

namespace api = ::inferbox::v1;

std::optional<std::chrono::system_clock::time_point> DeadlineOf(
    const grpc::ServerContextBase& context) {
  const auto deadline = context.deadline();
  // No deadline reads as a time point centuries away.
  if (deadline > std::chrono::system_clock::now() + std::chrono::hours(24 * 365))
    return std::nullopt;
  return deadline;
}

// Ours → gRPC (with the reason's ErrorInfo, if any); RESOURCE_EXHAUSTED also tells the
// client when to retry (google.rpc.RetryInfo in the status details, R2.4): when an API key's
// quota frees (with a QuotaFailure naming it), else after a 1-3 s jitter so that clients
// refused by a full queue do not come back together.
grpc::Status ToApiStatus(const Status& status) {
  grpc::Status converted = ToGrpcStatus(status);
  if (status.code() != StatusCode::kResourceExhausted) return converted;
  google::rpc::RetryInfo retry;
  google::rpc::Status details;
  if (!converted.error_details().empty() && !details.ParseFromString(converted.error_details()))
    details.Clear();
  details.set_code(static_cast<int>(converted.error_code()));
  details.set_message(converted.error_message());
  if (const auto& quota = status.quota_violation()) {
    const auto delay = quota->retry_after;
    retry.mutable_retry_delay()->set_seconds(
        std::chrono::duration_cast<std::chrono::seconds>(delay).count());
    retry.mutable_retry_delay()->set_nanos(static_cast<int32_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(delay % std::chrono::seconds(1))
            .count()));
    google::rpc::QuotaFailure failure;
    auto& violation = *failure.add_violations();
    violation.set_subject(quota->subject);
    violation.set_description(status.message());
    details.add_details()->PackFrom(retry);
    details.add_details()->PackFrom(failure);
    return grpc::Status(converted.error_code(), converted.error_message(),
                        details.SerializeAsString());
  }
  thread_local std::mt19937 random(std::random_device{}());
  retry.mutable_retry_delay()->set_nanos(0);
  retry.mutable_retry_delay()->set_seconds(std::uniform_int_distribution<int>(1, 3)(random));
  details.add_details()->PackFrom(retry);
  return grpc::Status(converted.error_code(), converted.error_message(),
                      details.SerializeAsString());
}

// Relays one generation to its gRPC client. The generation's sink starts each write on the
// thread that received the chunk and holds the generation until the write completes, so that
// a slow client holds the engine once the call's flow-control window is full. The reactor finishes
// only once the generation has ended (OnEnd, its sink's last call), so that when gRPC deletes it
// (OnDone) the stream it owns is done and its destruction waits for nothing.
class RelayWriter final : public grpc::ServerWriteReactor<api::GenerateChunk> {
 public:
  RelayWriter(grpc::CallbackServerContext* context, std::unique_ptr<GenerationStream> stream)
      : context_(context), stream_(std::move(stream)) {
    stream_->Watch(std::make_shared<Forward>(this));
  }

  void OnWriteDone(bool ok) override {
    if (!ok) GiveUp();  // The client went away, or its deadline passed.
    stream_->Resume();  // Given up: it reads on to its end, handing out nothing.
  }
  void OnCancel() override { GiveUp(); }
  void OnDone() override { delete this; }

 private:
  // The stream's sink. The writer outlives every call: it finishes in the last one.
  class Forward final : public GenerationStream::Sink {
   public:
    explicit Forward(RelayWriter* writer) : writer_(writer) {}
    bool OnChunk(api::GenerateChunk& chunk) override { return writer_->Write(chunk); }
    void OnEnd() override { writer_->End(); }

   private:
    RelayWriter* const writer_;
  };

  bool Write(api::GenerateChunk& chunk) {
    if (gave_up_.load()) return true;  // Nobody reads: let the generation end.
    out_.Swap(&chunk);
    StartWrite(&out_);
    return false;  // Held until OnWriteDone.
  }

  void End() {
    if (!gave_up_.load()) {
      Finish(ToApiStatus(stream_->status()));
      return;
    }
    const bool expired = context_->deadline() <= std::chrono::system_clock::now();
    Finish(grpc::Status(expired ? grpc::StatusCode::DEADLINE_EXCEEDED : grpc::StatusCode::CANCELLED,
                        expired ? "the deadline passed; the generation was cancelled"
                                : "the client cancelled the request or went away"));
  }

  void GiveUp() {
    if (!gave_up_.exchange(true)) stream_->Cancel();
  }

  grpc::CallbackServerContext* const context_ = nullptr;
  const std::unique_ptr<GenerationStream> stream_;
  api::GenerateChunk out_;  // The write in flight.
  std::atomic<bool> gave_up_{false};
};

// A call refused before any generation started. It has nothing to cancel: gRPC calls
// OnCancel on it too when the client cancels (or its deadline passes) before the status is out.
class Refusal final : public grpc::ServerWriteReactor<api::GenerateChunk> {
 public:
  explicit Refusal(const Status& refusal) { Finish(ToApiStatus(refusal)); }
  void OnDone() override { delete this; }
};

grpc::ServerWriteReactor<api::GenerateChunk>* Relay(
    grpc::CallbackServerContext* context, Result<std::unique_ptr<GenerationStream>> started) {
  if (!started.ok()) return new Refusal(started.status());
  return new RelayWriter(context, std::move(started).value());
}

}  // namespace

grpc::ServerWriteReactor<api::GenerateChunk>* InferenceServiceImpl::Generate(
    grpc::CallbackServerContext* context, const api::GenerateRequest* request) {
  auto caller = AuthenticateGrpc(*context, authenticator_);
  if (!caller.ok()) return new Refusal(caller.status());
  return Relay(context, frontend_.Generate(*request, *caller, DeadlineOf(*context)));
}

grpc::ServerWriteReactor<api::GenerateChunk>* InferenceServiceImpl::Chat(
    grpc::CallbackServerContext* context, const api::ChatRequest* request) {
  auto caller = AuthenticateGrpc(*context, authenticator_);
  if (!caller.ok()) return new Refusal(caller.status());
  return Relay(context, frontend_.Chat(*request, *caller, DeadlineOf(*context)));
}

grpc::Status InferenceServiceImpl::Tokenize(grpc::ServerContext* context,
                                            const api::TokenizeRequest* request,
                                            api::TokenizeResponse* response) {
  auto caller = AuthenticateGrpc(*context, authenticator_);
  if (!caller.ok()) return ToApiStatus(caller.status());
  auto tokens = frontend_.Tokenize(*request, *caller);
  if (!tokens.ok()) return ToApiStatus(tokens.status());
  *response = std::move(tokens).value();
  return grpc::Status::OK;
}

grpc::Status InferenceServiceImpl::ListModels(grpc::ServerContext* context,
                                              const api::ListModelsRequest*,
                                              api::ListModelsResponse* response) {
  auto caller = AuthenticateGrpc(*context, authenticator_);
  if (!caller.ok()) return ToApiStatus(caller.status());
  for (auto& model : frontend_.ListModels()) *response->add_models() = std::move(model);
  return grpc::Status::OK;
}

}  // namespace inferbox::daemon
