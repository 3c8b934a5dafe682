#include "inferbox/daemon/inference_service.h"

#include <random>

#include <spdlog/spdlog.h>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "inferbox/common/grpc_status.h"
#include "inferbox/daemon/grpc_auth.h"

namespace inferbox::daemon {
namespace {

namespace api = ::inferbox::v1;
using namespace std::chrono_literals;

// How often a handler waiting for tokens looks at its client (cancel, deadline).
constexpr auto kClientPollInterval = 100ms;

std::optional<std::chrono::system_clock::time_point> DeadlineOf(
    const grpc::ServerContext& context) {
  const auto deadline = context.deadline();
  // No deadline reads as a time point centuries away.
  if (deadline > std::chrono::system_clock::now() + std::chrono::hours(24 * 365))
    return std::nullopt;
  return deadline;
}

// Ours → gRPC; RESOURCE_EXHAUSTED also tells the client when to retry (google.rpc.RetryInfo
// in the status details, R2.4): when an API key's quota frees (with a QuotaFailure naming
// it), else after a 1-3 s jitter so that clients refused by a full queue do not come back
// together.
grpc::Status ToApiStatus(const Status& status) {
  grpc::Status converted = ToGrpcStatus(status);
  if (status.code() != StatusCode::kResourceExhausted) return converted;
  google::rpc::RetryInfo retry;
  google::rpc::Status details;
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

}  // namespace

grpc::Status InferenceServiceImpl::Relay(grpc::ServerContext* context,
                                         Result<std::unique_ptr<GenerationStream>> started,
                                         grpc::ServerWriter<api::GenerateChunk>* writer) {
  if (!started.ok()) return ToApiStatus(started.status());
  GenerationStream& stream = **started;
  api::GenerateChunk chunk;
  for (;;) {
    if (context->IsCancelled()) {
      stream.Cancel();
      const bool expired = context->deadline() <= std::chrono::system_clock::now();
      return grpc::Status(
          expired ? grpc::StatusCode::DEADLINE_EXCEEDED : grpc::StatusCode::CANCELLED,
          expired ? "the deadline passed; the generation was cancelled"
                  : "the client cancelled the request");
    }
    switch (stream.Read(&chunk, kClientPollInterval)) {
      case GenerationStream::Next::kTimeout: continue;
      case GenerationStream::Next::kEnd: return ToApiStatus(stream.status());
      case GenerationStream::Next::kChunk:
        if (!writer->Write(chunk)) {
          stream.Cancel();
          return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
        }
        continue;
    }
  }
}

grpc::Status InferenceServiceImpl::Generate(grpc::ServerContext* context,
                                            const api::GenerateRequest* request,
                                            grpc::ServerWriter<api::GenerateChunk>* writer) {
  auto caller = AuthenticateGrpc(*context, authenticator_);
  if (!caller.ok()) return ToApiStatus(caller.status());
  return Relay(context, frontend_.Generate(*request, *caller, DeadlineOf(*context)), writer);
}

grpc::Status InferenceServiceImpl::Chat(grpc::ServerContext* context,
                                        const api::ChatRequest* request,
                                        grpc::ServerWriter<api::GenerateChunk>* writer) {
  auto caller = AuthenticateGrpc(*context, authenticator_);
  if (!caller.ok()) return ToApiStatus(caller.status());
  return Relay(context, frontend_.Chat(*request, *caller, DeadlineOf(*context)), writer);
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
