// gRPC inferbox.v1.Inference over an InferenceFrontend: authenticates the call, starts the
// generation, and streams its chunks. The client's cancel or deadline cancels the
// generation in its engine within a step.
#pragma once

#include "inferbox/daemon/frontend.h"
#include "inferbox/v1/inference.grpc.pb.h"

namespace inferbox::daemon {

class InferenceServiceImpl final : public inferbox::v1::Inference::Service {
 public:
  // Both must outlive the service.
  InferenceServiceImpl(InferenceFrontend& frontend, const Authenticator& authenticator)
      : frontend_(frontend), authenticator_(authenticator) {}

  grpc::Status Generate(grpc::ServerContext* context, const inferbox::v1::GenerateRequest* request,
                        grpc::ServerWriter<inferbox::v1::GenerateChunk>* writer) override;
  grpc::Status Chat(grpc::ServerContext* context, const inferbox::v1::ChatRequest* request,
                    grpc::ServerWriter<inferbox::v1::GenerateChunk>* writer) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const inferbox::v1::TokenizeRequest* request,
                        inferbox::v1::TokenizeResponse* response) override;
  grpc::Status ListModels(grpc::ServerContext* context,
                          const inferbox::v1::ListModelsRequest* request,
                          inferbox::v1::ListModelsResponse* response) override;

 private:
  grpc::Status Relay(grpc::ServerContext* context, Result<std::unique_ptr<GenerationStream>> stream,
                     grpc::ServerWriter<inferbox::v1::GenerateChunk>* writer);

  InferenceFrontend& frontend_;
  const Authenticator& authenticator_;
};

}  // namespace inferbox::daemon
