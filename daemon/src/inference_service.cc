#include "inferbox/daemon/inference_service.h"

#include <spdlog/spdlog.h>

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

}  // namespace

grpc::Status InferenceServiceImpl::Relay(grpc::ServerContext* context,
                                         Result<std::unique_ptr<GenerationStream>> started,
                                         grpc::ServerWriter<api::GenerateChunk>* writer) {
  if (!started.ok()) return ToGrpcStatus(started.status());
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
      case GenerationStream::Next::kEnd: return ToGrpcStatus(stream.status());
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
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  return Relay(context, frontend_.Generate(*request, *caller, DeadlineOf(*context)), writer);
}

grpc::Status InferenceServiceImpl::Chat(grpc::ServerContext* context,
                                        const api::ChatRequest* request,
                                        grpc::ServerWriter<api::GenerateChunk>* writer) {
  auto caller = AuthenticateGrpc(*context, authenticator_);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  return Relay(context, frontend_.Chat(*request, *caller, DeadlineOf(*context)), writer);
}

grpc::Status InferenceServiceImpl::Tokenize(grpc::ServerContext* context,
                                            const api::TokenizeRequest* request,
                                            api::TokenizeResponse* response) {
  auto caller = AuthenticateGrpc(*context, authenticator_);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto tokens = frontend_.Tokenize(*request, *caller);
  if (!tokens.ok()) return ToGrpcStatus(tokens.status());
  *response = std::move(tokens).value();
  return grpc::Status::OK;
}

grpc::Status InferenceServiceImpl::ListModels(grpc::ServerContext* context,
                                              const api::ListModelsRequest*,
                                              api::ListModelsResponse* response) {
  auto caller = AuthenticateGrpc(*context, authenticator_);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  for (auto& model : frontend_.ListModels()) *response->add_models() = std::move(model);
  return grpc::Status::OK;
}

}  // namespace inferbox::daemon
