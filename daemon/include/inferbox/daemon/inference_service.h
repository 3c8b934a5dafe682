// gRPC inferbox.v1.Inference over an InferenceFrontend: authenticates the call, starts the
// generation, and streams its chunks. The client's cancel or deadline cancels the
// generation in its engine within a step.
//
// Generate and Chat are callback methods: the generation's chunks are pushed to a sink
// (GenerationStream::Watch) that starts each write on the thread that received the chunk, the
// generation held until the write completes (the engine waits once the engine call's
// flow-control window is full), so that no
// thread waits on a stream and a token costs no thread wake.
#pragma once

#include "inferbox/daemon/frontend.h"
#include "inferbox/v1/inference.grpc.pb.h"

namespace inferbox::daemon {

class InferenceServiceImpl final
    : public inferbox::v1::Inference::WithCallbackMethod_Generate<
          inferbox::v1::Inference::WithCallbackMethod_Chat<inferbox::v1::Inference::Service>> {
 public:
  // Both must outlive the service.
  InferenceServiceImpl(InferenceFrontend& frontend, const Authenticator& authenticator)
      : frontend_(frontend), authenticator_(authenticator) {}

  grpc::ServerWriteReactor<inferbox::v1::GenerateChunk>* Generate(
      grpc::CallbackServerContext* context, const inferbox::v1::GenerateRequest* request) override;
  grpc::ServerWriteReactor<inferbox::v1::GenerateChunk>* Chat(
      grpc::CallbackServerContext* context, const inferbox::v1::ChatRequest* request) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const inferbox::v1::TokenizeRequest* request,
                        inferbox::v1::TokenizeResponse* response) override;
  grpc::Status ListModels(grpc::ServerContext* context,
                          const inferbox::v1::ListModelsRequest* request,
                          inferbox::v1::ListModelsResponse* response) override;

 private:
  InferenceFrontend& frontend_;
  const Authenticator& authenticator_;
};

}  // namespace inferbox::daemon
