#include "bench/grpc_stream_runner.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>

#include <fmt/format.h>

#include "inferbox/common/grpc_status.h"
#include "inferbox/v1/inference.grpc.pb.h"

namespace inferbox::engine::bench {
namespace {

namespace v1 = ::inferbox::v1;

// No benchmark request takes this long; one that does is taken for a hung server.
constexpr std::chrono::minutes kCallDeadline{10};

// Counts the calls in flight; the submitting thread waits on it for room and for the end.
class InFlight {
 public:
  void Enter() {
    std::lock_guard lock(mutex_);
    ++count_;
  }
  // Called by a call's OnDone, its last callback: the call may be destroyed once this returns.
  void Leave(bool failed) {
    std::lock_guard lock(mutex_);
    --count_;
    failed_ = failed_ || failed;
    changed_.notify_all();
  }
  // Until fewer than `limit` are in flight; false once a call has failed (submit no more).
  bool WaitForRoom(int64_t limit) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return count_ < limit || failed_; });
    return !failed_;
  }
  void WaitForNone() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return count_ == 0; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  int64_t count_ = 0;
  bool failed_ = false;
};

// One streamed Generate, writing its record as chunks arrive.
class Call final : public grpc::ClientReadReactor<v1::GenerateChunk> {
 public:
  Call(const GrpcEndpoint& endpoint, const std::vector<int32_t>& prompt, int64_t output_len,
       uint64_t seed, RequestRecord& record, InFlight& in_flight)
      : record_(record), in_flight_(in_flight) {
    request_.set_model(endpoint.model);
    for (const int32_t id : prompt)
      request_.mutable_token_ids()->add_ids(static_cast<uint32_t>(id));
    request_.mutable_sampling()->set_temperature(endpoint.temperature);
    if (endpoint.temperature > 0.0f) request_.mutable_sampling()->set_seed(seed);
    request_.mutable_stop()->set_max_tokens(static_cast<uint32_t>(output_len));
    request_.mutable_stop()->set_ignore_eos(true);
    if (!endpoint.api_key.empty())
      context_.AddMetadata("authorization", "Bearer " + endpoint.api_key);
    // A server that stops answering fails the run instead of hanging it.
    context_.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
  }

  void Start(v1::Inference::Stub& stub) {
    in_flight_.Enter();
    record_.submitted = Clock::now();
    stub.async()->Generate(&context_, &request_, this);
    StartRead(&chunk_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // The stream ended: OnDone follows with its status.
    const bool finish = chunk_.finish_reason() != v1::FINISH_REASON_UNSPECIFIED;
    if (chunk_.token_ids_size() > 0 || finish) record_.arrivals.push_back(Clock::now());
    if (finish) {
      // As the HTTP path's finish event: the status comes after it, one more hop.
      record_.finished = record_.arrivals.back();
      finished_ = true;
      record_.finished_by_length = chunk_.finish_reason() == v1::FINISH_REASON_LENGTH;
      record_.num_tokens = chunk_.usage().completion_tokens();
    }
    chunk_.Clear();
    StartRead(&chunk_);
  }

  void OnDone(const grpc::Status& status) override {
    if (!finished_) record_.finished = Clock::now();
    if (!status.ok()) {
      record_.error = FromGrpcStatus(status);
    } else if (!finished_) {
      record_.error = InternalError("the stream ended without a finish reason");
    }
    in_flight_.Leave(!record_.error.ok());  // Last: the submitting thread may free this.
  }

 private:
  RequestRecord& record_;
  InFlight& in_flight_;
  grpc::ClientContext context_;
  v1::GenerateRequest request_;
  v1::GenerateChunk chunk_;
  bool finished_ = false;
};

}  // namespace

Status RunOverGrpc(const GrpcEndpoint& endpoint, const std::vector<std::vector<int32_t>>& prompts,
                   int64_t output_len, int64_t concurrency, std::vector<RequestRecord>& records) {
  records.assign(prompts.size(), RequestRecord{});
  const std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(endpoint.address, grpc::InsecureChannelCredentials());
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    return UnavailableError(fmt::format("cannot connect to {}", endpoint.address));
  }
  const std::unique_ptr<v1::Inference::Stub> stub = v1::Inference::NewStub(channel);
  InFlight in_flight;
  std::vector<std::unique_ptr<Call>> calls;
  calls.reserve(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (!in_flight.WaitForRoom(concurrency)) break;
    calls.push_back(
        std::make_unique<Call>(endpoint, prompts[i], output_len, i, records[i], in_flight));
    calls.back()->Start(*stub);
  }
  in_flight.WaitForNone();
  for (size_t i = 0; i < calls.size(); ++i) {
    if (!records[i].error.ok()) {
      return Status(records[i].error.code(),
                    fmt::format("request {}: {}", i, records[i].error.message()));
    }
  }
  return Status();
}

}  // namespace inferbox::engine::bench
