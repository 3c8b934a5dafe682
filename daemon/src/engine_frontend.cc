#include "inferbox/daemon/engine_frontend.h"

#include <sys/stat.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <utility>

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include "inferbox/common/grpc_status.h"
#include "inferbox/daemon/router.h"

namespace inferbox::daemon {
namespace {

namespace wire = ::inferbox::engine::v1;
namespace api = ::inferbox::v1;
using namespace std::chrono_literals;

// Budget assumed for a request that leaves max_tokens to the context, for routing only.
constexpr int64_t kDefaultOutputEstimate = 512;
// How long a stream whose last chunk came is given for its status before it is cancelled
// (the engine sends them together; this is for a status that is late anyway).
constexpr auto kFinishedStatusWait = 2s;

// Relays one engine Generate call through gRPC's callback API. Its reactions, on gRPC's
// threads, keep the request's record, account for it, and hand each chunk to the watching
// Sink, or keep it for Read. One read is in flight at a time, and the next starts only once
// the consumer has taken the last chunk (Read, a Sink returning true, or Resume), so that a
// slow client holds the engine's stream (once the call's flow-control window, ~64 KiB, is
// full) rather than piling up chunks here.
// gRPC is never called with mutex_ held, and neither is the Sink.
class EngineStream final : public GenerationStream,
                           public grpc::ClientReadReactor<wire::GenerateChunk> {
 public:
  // `metered` (may be null) is settled when the request ends.
  EngineStream(std::shared_ptr<EngineReplica> replica, std::shared_ptr<wire::Engine::Stub> stub,
               wire::GenerateRequest request,
               std::optional<std::chrono::system_clock::time_point> deadline,
               std::chrono::milliseconds server_timeout, int64_t estimated_tokens,
               monitoring::ServingMetrics* metrics, std::unique_ptr<MeteredRequest> metered,
               const std::string& key_id)
      : replica_(std::move(replica)),
        server_timeout_(server_timeout),
        stub_(std::move(stub)),
        load_(estimated_tokens),
        metrics_(metrics),
        metered_(std::move(metered)),
        started_(std::chrono::steady_clock::now()),
        last_token_(started_),
        request_(std::move(request)) {
    record_.model = replica_->model();
    record_.key = key_id;
    replica_->outstanding_tokens += load_;
    if (deadline) context_.set_deadline(*deadline);
    stub_->async()->Generate(&context_, &request_, this);
    // Held until a read comes back empty: OnDone must not come while the last chunks wait
    // for their consumer with no read in flight.
    AddHold();
    StartRead(&incoming_);
    StartCall();
  }

  ~EngineStream() override {
    std::unique_lock lock(mutex_);
    if (!done_) {
      // Given up by its consumer: read on to the end, handing nothing out. One whose last
      // chunk came (the client has its whole answer; the HTTP gateway stops there) is let end
      // by itself: cancelled, it would end CANCELLED and count as a failure when its status
      // had not arrived yet.
      draining_ = true;
      const bool restart = std::exchange(held_, false);
      const bool finished = finished_;
      lock.unlock();
      if (!finished) context_.TryCancel();
      if (restart) StartRead(&incoming_);
      lock.lock();
      if (finished && !changed_.wait_for(lock, kFinishedStatusWait, [this] { return done_; })) {
        cancelled_after_finish_ = true;
        lock.unlock();
        context_.TryCancel();
        lock.lock();
      }
      changed_.wait(lock, [this] { return done_; });
    }
    replica_->outstanding_tokens -= load_;
  }

  Next Read(api::GenerateChunk* chunk, std::chrono::milliseconds timeout) override {
    std::unique_lock lock(mutex_);
    if (!changed_.wait_for(lock, timeout, [this] { return waiting_.has_value() || done_; }))
      return Next::kTimeout;
    if (!waiting_) return Next::kEnd;
    chunk->Swap(&*waiting_);
    waiting_.reset();
    held_ = false;
    lock.unlock();
    StartRead(&incoming_);
    return Next::kChunk;
  }

  void Watch(std::shared_ptr<Sink> sink) override {
    std::unique_lock lock(mutex_);
    sink_ = sink;
    if (waiting_) {
      // Came before the sink: no read is in flight, so no reaction runs meanwhile.
      api::GenerateChunk chunk = std::move(*waiting_);
      waiting_.reset();
      delivering_ = true;
      lock.unlock();
      const bool more = sink->OnChunk(chunk);
      if (ReadOnAfterDelivery(more)) StartRead(&incoming_);
      return;
    }
    const bool ended = done_;
    lock.unlock();
    if (ended) sink->OnEnd();
  }

  void Resume() override {
    {
      std::lock_guard lock(mutex_);
      if (delivering_) {
        // The sink's call has not returned yet: its reaction reads on.
        resume_asked_ = true;
        return;
      }
      if (!std::exchange(held_, false)) return;
    }
    StartRead(&incoming_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The call is over (normally, or the engine went away): OnDone brings its status.
      RemoveHold();
      return;
    }
    api::GenerateChunk chunk;
    chunk.Swap(incoming_.mutable_chunk());
    saw_output_ = saw_output_ || chunk.token_ids_size() > 0;
    RecordChunk(chunk);
    const bool finished = chunk.finish_reason() != api::FINISH_REASON_UNSPECIFIED;
    if (finished) {
      // The request is done: account for it before its client can see the last chunk, so
      // that usage and quotas already count it when the client's next request comes.
      Settle({.prompt_tokens = chunk.usage().prompt_tokens(),
              .completion_tokens = chunk.usage().completion_tokens(),
              .cached_prompt_tokens = chunk.usage().cached_prompt_tokens(),
              .outcome = record_.finish_reason});
    }
    std::shared_ptr<Sink> sink;
    {
      std::lock_guard lock(mutex_);
      finished_ = finished_ || finished;
      if (!draining_) {
        sink = sink_;
        if (sink == nullptr) {
          waiting_ = std::move(chunk);
          held_ = true;
          changed_.notify_all();
          return;
        }
        delivering_ = true;
      }
    }
    if (sink != nullptr && !ReadOnAfterDelivery(sink->OnChunk(chunk))) return;
    StartRead(&incoming_);
  }

  void OnDone(const grpc::Status& status) override {
    bool cancelled_after_finish = false;
    {
      std::lock_guard lock(mutex_);
      cancelled_after_finish = cancelled_after_finish_;
    }
    // Outside mutex_: the metrics and the usage ledger take locks of their own. The consumer
    // reads status_ only after done_.
    status_ = Translate(status);
    RecordEnd(cancelled_after_finish);
    std::shared_ptr<Sink> sink;
    {
      std::lock_guard lock(mutex_);
      done_ = true;
      if (!draining_) sink = sink_;
      changed_.notify_all();
    }
    // `this` may be gone from here on (its destructor waited for done_).
    if (sink != nullptr) sink->OnEnd();
  }

  Status status() const override { return status_; }

  void Cancel() override {
    cancelled_.store(true);
    context_.TryCancel();
  }

 private:
  // After a sink's OnChunk returned `more`: whether to start the next read now (else the
  // stream is held until Resume).
  bool ReadOnAfterDelivery(bool more) {
    std::lock_guard lock(mutex_);
    delivering_ = false;
    held_ = !(std::exchange(resume_asked_, false) || more || draining_);
    return !held_;
  }

  Status Translate(const grpc::Status& status) const {
    if (status.ok()) return Status::Ok();
    if (cancelled_.load()) return Status(StatusCode::kCancelled, "the request was cancelled");
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
        status.error_code() == grpc::StatusCode::UNKNOWN) {
      // Transport errors mean the engine process went away (or broke) under the request.
      const bool engine_said_so = status.error_message().starts_with("the engine");
      return UnavailableError(
          engine_said_so ? status.error_message()
                         : fmt::format("the engine serving model {} stopped{}; the request was not "
                                       "completed, retry it ({})",
                                       replica_->model(), saw_output_ ? " mid-stream" : "",
                                       status.error_message()));
    }
    if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && server_timeout_.count() > 0) {
      return Status(StatusCode::kDeadlineExceeded,
                    fmt::format("the request ran longer than this box's request timeout ({:g} s, "
                                "[server] request_timeout_seconds) and was cancelled",
                                server_timeout_.count() / 1000.0));
    }
    return FromGrpcStatus(status);
  }

  void RecordChunk(const api::GenerateChunk& chunk) {
    const auto now = std::chrono::steady_clock::now();
    // Known from the first chunk, so a request that does not finish is billed its prompt.
    if (incoming_.prompt_tokens() > 0) record_.prompt_tokens = incoming_.prompt_tokens();
    const int tokens = chunk.token_ids_size();
    if (tokens > 0) {
      if (!record_.first_token_seconds) {
        record_.first_token_seconds = std::chrono::duration<double>(now - started_).count();
        // Tokens delivered together with the first one follow it with no gap.
        record_.inter_token_seconds.insert(record_.inter_token_seconds.end(),
                                           static_cast<size_t>(tokens - 1), 0.0);
      } else {
        // Tokens that arrive together share the gap.
        const double gap = std::chrono::duration<double>(now - last_token_).count() / tokens;
        record_.inter_token_seconds.insert(record_.inter_token_seconds.end(),
                                           static_cast<size_t>(tokens), gap);
      }
      last_token_ = now;
      record_.generation_tokens += tokens;
    }
    if (chunk.finish_reason() != api::FINISH_REASON_UNSPECIFIED) {
      record_.finish_reason =
          chunk.finish_reason() == api::FINISH_REASON_LENGTH ? "length" : "stop";
      record_.prompt_tokens = chunk.usage().prompt_tokens();
      record_.cached_prompt_tokens = chunk.usage().cached_prompt_tokens();
      if (incoming_.has_timings()) {
        record_.queue_seconds = incoming_.timings().queue_seconds();
        record_.prefill_seconds = incoming_.timings().prefill_seconds();
        record_.decode_seconds = incoming_.timings().decode_seconds();
      }
    }
  }

  // How a request that did not finish ended (UsageRecord::outcome).
  std::string FailureOutcome() const {
    // The engine refused the input before generating.
    if (!saw_output_ && status_.code() == StatusCode::kInvalidArgument) return "invalid";
    // The engine's queue refused or shed it (other RESOURCE_EXHAUSTEDs, e.g. gRPC's own for
    // a message past its size limit, are errors).
    if (!saw_output_ && status_.reason() == error_reason::kQueueFull) return "queue_full";
    if (!saw_output_ && status_.reason() == error_reason::kQueueTimeout) return "queue_timeout";
    switch (status_.code()) {
      case StatusCode::kCancelled: return "cancelled";
      case StatusCode::kDeadlineExceeded: return "deadline";
      case StatusCode::kUnavailable: return "engine_failed";
      default: return "error";
    }
  }

  void Settle(UsageRecord usage) {
    if (metered_ != nullptr) metered_->Settle(std::move(usage));
  }

  // `cancelled_after_finish`: the status was late after the last chunk and waited for no longer.
  void RecordEnd(bool cancelled_after_finish) {
    record_.e2e_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    if (!record_.finish_reason.empty() && (status_.ok() || cancelled_after_finish)) {
      if (metrics_ != nullptr) metrics_->Record(record_);
      return;
    }
    record_.finish_reason.clear();
    const std::string outcome = FailureOutcome();
    Settle({.prompt_tokens = static_cast<uint64_t>(record_.prompt_tokens),
            .completion_tokens = static_cast<uint64_t>(record_.generation_tokens),
            .cached_prompt_tokens = static_cast<uint64_t>(record_.cached_prompt_tokens),
            .outcome = outcome});
    if (metrics_ == nullptr) return;
    // A refusal of the input before generating is a rejection, not a failure.
    if (outcome == "invalid") {
      metrics_->RecordRejected(status_.reason() == error_reason::kPromptTooLong ? "too_long"
                                                                                : "invalid");
      return;
    }
    if (outcome == "queue_full" || outcome == "queue_timeout") {
      metrics_->RecordRejected(outcome);
      return;
    }
    record_.failure = outcome;
    metrics_->Record(record_);
  }

  std::shared_ptr<EngineReplica> replica_;
  // The box's request timeout when it set the deadline (it came before the client's); else 0.
  const std::chrono::milliseconds server_timeout_;
  std::shared_ptr<wire::Engine::Stub> stub_;
  const int64_t load_;
  monitoring::ServingMetrics* metrics_;
  const std::unique_ptr<MeteredRequest> metered_;
  const std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point last_token_;
  monitoring::RequestRecord record_;
  grpc::ClientContext context_;
  const wire::GenerateRequest request_;
  // Written by the read in flight; read by its reaction.
  wire::GenerateChunk incoming_;
  // Written in OnDone; read by the consumer once it has seen the end.
  Status status_;
  bool saw_output_ = false;

  std::mutex mutex_;
  std::condition_variable changed_;
  std::shared_ptr<Sink> sink_;
  // A chunk for Read (no sink yet).
  std::optional<api::GenerateChunk> waiting_;
  // No read in flight, none ended: a chunk waits for its consumer (Read, Resume).
  bool held_ = false;
  // The sink's OnChunk is running; Resume meanwhile leaves it resume_asked_.
  bool delivering_ = false;
  bool resume_asked_ = false;
  // The consumer is gone: reads go on to the end, handing nothing out.
  bool draining_ = false;
  // The chunk with finish_reason came.
  bool finished_ = false;
  // Its status was late after the last chunk and waited for no longer.
  bool cancelled_after_finish_ = false;
  // OnDone ran: no reaction follows.
  bool done_ = false;
  std::atomic<bool> cancelled_{false};
};

bool CallerMayUse(const Caller& caller, const std::string& model) {
  return caller.models.empty() ||
         std::find(caller.models.begin(), caller.models.end(), model) != caller.models.end();
}

}  // namespace

Status EngineFrontend::Reject(Status status) {
  if (metrics_ != nullptr) {
    std::string reason = "invalid";
    switch (status.code()) {
      case StatusCode::kNotFound: reason = "unknown_model"; break;
      case StatusCode::kPermissionDenied: reason = "forbidden"; break;
      case StatusCode::kUnavailable: reason = "unavailable"; break;
      case StatusCode::kResourceExhausted:
        if (status.quota_violation()) reason = "quota_" + status.quota_violation()->limit;
        break;
      default: break;
    }
    metrics_->RecordRejected(reason);
  }
  return status;
}

Result<std::shared_ptr<EngineReplica>> EngineFrontend::Route(const std::string& model,
                                                             const Caller& caller,
                                                             std::string_view affinity_prefix) {
  if (!accepting_.load()) return Reject(UnavailableError("the box is shutting down"));
  if (model.empty())
    return Reject(InvalidArgumentError("model: required (GET /v1/models lists them)"));
  if (supervisor_.FindModel(model) == nullptr) {
    return Reject(NotFoundError(fmt::format(
        "model '{}' is not served by this box (ListModels or GET /v1/models lists them)", model)));
  }
  if (!CallerMayUse(caller, model)) {
    return Reject(Status(StatusCode::kPermissionDenied,
                         fmt::format("this API key may not use model '{}'", model)));
  }
  std::vector<std::shared_ptr<EngineReplica>> ready;
  std::vector<int64_t> load;
  std::vector<uint32_t> ids;
  std::string why = "it has no engine";
  for (auto& replica : supervisor_.Replicas(model)) {
    if (replica->state() == api::ENGINE_STATE_READY && replica->stub() != nullptr) {
      load.push_back(replica->outstanding_tokens.load());
      ids.push_back(replica->replica());
      ready.push_back(std::move(replica));
    } else {
      why = replica->Unavailability();
    }
  }
  if (ready.empty()) {
    return Reject(
        UnavailableError(fmt::format("model '{}' cannot serve right now: {}", model, why)));
  }
  return ready[PickReplica(load, ids, PromptAffinity(affinity_prefix))];
}

void EngineFrontend::SetDefaultModel(std::string model) {
  std::lock_guard lock(default_mutex_);
  default_model_ = std::move(model);
}

std::string EngineFrontend::ResolveModel(const std::string& model) const {
  if (!model.empty() && model != "default") return model;
  std::lock_guard lock(default_mutex_);
  return default_model_.empty() ? model : default_model_;
}

Result<std::unique_ptr<GenerationStream>> EngineFrontend::Start(
    wire::GenerateRequest request, const std::string& requested_model, const Caller& caller,
    std::string_view affinity_prefix, int64_t estimated_tokens,
    std::optional<std::chrono::system_clock::time_point> deadline) {
  const std::string model = ResolveModel(requested_model);
  auto replica = Route(model, caller, affinity_prefix);
  if (!replica.ok()) return replica.status();
  // Quotas after the model and the caller's rights: a refused model is 403, not 429.
  std::unique_ptr<MeteredRequest> metered;
  if (meter_ != nullptr) {
    auto admitted = meter_->Admit(caller, model);
    if (!admitted.ok()) return Reject(admitted.status());
    metered = std::move(admitted).value();
  }
  auto stub = (*replica)->stub();
  if (stub == nullptr) return UnavailableError("the engine of model " + model + " just stopped");
  request.set_request_id(fmt::format("{}", next_request_.fetch_add(1)));
  // The box's own deadline, where it comes before the client's: then a DEADLINE_EXCEEDED
  // says it was the box's.
  std::chrono::milliseconds server_timeout(request_timeout_ms_.load());
  if (server_timeout.count() > 0) {
    const auto server_deadline = std::chrono::system_clock::now() + server_timeout;
    if (!deadline || server_deadline < *deadline) {
      deadline = server_deadline;
    } else {
      server_timeout = std::chrono::milliseconds(0);
    }
  }
  return std::unique_ptr<GenerationStream>(std::make_unique<EngineStream>(
      std::move(replica).value(), std::move(stub), std::move(request), deadline, server_timeout,
      estimated_tokens, metrics_, std::move(metered), caller.key_id));
}

Result<std::unique_ptr<GenerationStream>> EngineFrontend::Generate(
    const api::GenerateRequest& request, const Caller& caller,
    std::optional<std::chrono::system_clock::time_point> deadline) {
  wire::GenerateRequest engine_request;
  *engine_request.mutable_completion() = request;
  const int64_t prompt_estimate = request.has_token_ids()
                                      ? request.token_ids().ids_size()
                                      : static_cast<int64_t>(request.text().size() / 4);
  const int64_t output_estimate =
      request.stop().max_tokens() > 0 ? request.stop().max_tokens() : kDefaultOutputEstimate;
  std::string_view prefix = request.text();
  return Start(std::move(engine_request), request.model(), caller, prefix,
               prompt_estimate + output_estimate, deadline);
}

Result<std::unique_ptr<GenerationStream>> EngineFrontend::Chat(
    const api::ChatRequest& request, const Caller& caller,
    std::optional<std::chrono::system_clock::time_point> deadline) {
  wire::GenerateRequest engine_request;
  *engine_request.mutable_chat() = request;
  int64_t bytes = 0;
  for (const auto& message : request.messages())
    bytes += static_cast<int64_t>(message.content().size());
  const int64_t output_estimate =
      request.stop().max_tokens() > 0 ? request.stop().max_tokens() : kDefaultOutputEstimate;
  // The first message (usually the system prompt) is what requests share.
  std::string_view prefix =
      request.messages().empty() ? std::string_view() : request.messages(0).content();
  return Start(std::move(engine_request), request.model(), caller, prefix,
               bytes / 4 + output_estimate, deadline);
}

Result<api::TokenizeResponse> EngineFrontend::Tokenize(const api::TokenizeRequest& request,
                                                       const Caller& caller) {
  auto replica = Route(ResolveModel(request.model()), caller, "");
  if (!replica.ok()) return replica.status();
  auto stub = (*replica)->stub();
  if (stub == nullptr)
    return UnavailableError("the engine of model " + request.model() + " just stopped");
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 30s);
  api::TokenizeResponse response;
  const grpc::Status status = stub->Tokenize(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

std::vector<api::ModelInfo> EngineFrontend::ListModels() const {
  std::vector<api::ModelInfo> models;
  for (const ModelServeConfig& config : supervisor_.models()) {
    api::ModelInfo info;
    info.set_id(config.name);
    info.set_owned_by("inferbox");
    struct stat file {};
    if (stat((supervisor_.ModelPath(config) / "config.json").c_str(), &file) == 0)
      info.set_created(file.st_mtim.tv_sec);
    for (const auto& replica : supervisor_.Replicas(config.name)) {
      info.set_max_model_len(std::max(info.max_model_len(), replica->traits().max_model_len));
    }
    info.set_state(supervisor_.ModelStateOf(config.name));
    models.push_back(std::move(info));
  }
  return models;
}

std::string EngineFrontend::ToolCallFormat(std::string_view model) const {
  for (const auto& replica : supervisor_.Replicas(ResolveModel(std::string(model)))) {
    std::string format = replica->traits().tool_call_format;
    if (!format.empty()) return format;
  }
  return "";
}

bool EngineFrontend::ChatPromptOpensReasoning(std::string_view model) const {
  for (const auto& replica : supervisor_.Replicas(ResolveModel(std::string(model)))) {
    if (replica->traits().chat_prompt_opens_reasoning) return true;
  }
  return false;
}

}  // namespace inferbox::daemon
