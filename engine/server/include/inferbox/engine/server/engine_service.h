// The inferbox.engine.v1.Engine service: what an inferbox-engine process serves to inferboxd
// on its unix socket. Generate streams a request's deltas as chunks (a callback reactor
// written from the runtime's delivery thread, no thread per stream; coalescing whatever
// piled up while the previous write was in flight; the last one goes out with the call's
// status); a client that disconnects or whose deadline passes has its request cancelled at
// the next engine step. Health answers from the engine loop's published state, so a wedged
// loop shows as steps_completed standing still, never as a hung call.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>

#include "inferbox/engine/runtime/runtime.h"
#include "inferbox/engine/server/request_builder.h"
#include "inferbox/engine/v1/engine.grpc.pb.h"

namespace inferbox::engine {

// Generate is served through gRPC's callback API (a reactor per call, no thread per
// stream); the other methods are synchronous.
class EngineService final : public inferbox::engine::v1::Engine::WithCallbackMethod_Generate<
                                inferbox::engine::v1::Engine::Service> {
 public:
  explicit EngineService(std::string model_id);

  // Called once the model is loaded: the service turns READY. All three must outlive the
  // service.
  void SetReady(Runtime* runtime, const RequestBuilder* builder, const Tokenizer* tokenizer);
  // Loading failed or the engine cannot go on: FAILED, with the reason, until exit.
  void SetFailed(std::string message);
  // Progress shown while LOADING.
  void SetLoadingMessage(std::string message);
  // Stops taking requests, waits up to `timeout` for those in flight, then aborts the rest
  // with UNAVAILABLE. Returns the number aborted. Within the same `timeout` it also waits for
  // their calls to end: a request the runtime finished may still be writing its last chunks
  // to a slow reader, and the engine is stopped once this returns.
  int64_t DrainRequests(std::chrono::milliseconds timeout);

  // The Generate calls that have not ended, for a drain to wait on.
  class Calls {
   public:
    void Add();
    void Remove();
    // Until none is left or `deadline`; false at the deadline.
    bool WaitForNone(std::chrono::steady_clock::time_point deadline);

   private:
    std::mutex mutex_;
    std::condition_variable none_;
    int64_t count_ = 0;  // Guarded by mutex_.
  };
  // Fault injection for the daemon's tests (INFERBOX_TEST_FAULT_LATE_STATUS_MS): a finished
  // request's OK status follows its last chunk after `delay` instead of with it.
  void SetLateStatusForTests(std::chrono::milliseconds delay) { late_status_ = delay; }

  grpc::ServerWriteReactor<inferbox::engine::v1::GenerateChunk>* Generate(
      grpc::CallbackServerContext* context,
      const inferbox::engine::v1::GenerateRequest* request) override;
  grpc::Status Health(grpc::ServerContext* context,
                      const inferbox::engine::v1::HealthRequest* request,
                      inferbox::engine::v1::HealthResponse* response) override;
  grpc::Status Stats(grpc::ServerContext* context,
                     const inferbox::engine::v1::StatsRequest* request,
                     inferbox::engine::v1::StatsResponse* response) override;
  grpc::Status Drain(grpc::ServerContext* context,
                     const inferbox::engine::v1::DrainRequest* request,
                     inferbox::engine::v1::DrainResponse* response) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const inferbox::v1::TokenizeRequest* request,
                        inferbox::v1::TokenizeResponse* response) override;

 private:
  const std::string model_id_;
  std::atomic<inferbox::engine::v1::EngineHealth> health_{
      inferbox::engine::v1::ENGINE_HEALTH_LOADING};
  std::atomic<Runtime*> runtime_{nullptr};
  std::atomic<const RequestBuilder*> builder_{nullptr};
  std::atomic<const Tokenizer*> tokenizer_{nullptr};
  mutable std::mutex message_mutex_;
  std::string message_;
  std::mutex drain_mutex_;  // One drain at a time.
  Calls calls_;
  std::chrono::milliseconds late_status_{0};
};

}  // namespace inferbox::engine
