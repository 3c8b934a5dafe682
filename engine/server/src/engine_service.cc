#include "inferbox/engine/server/engine_service.h"

#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include <spdlog/spdlog.h>

#include "inferbox/common/grpc_status.h"
#include "inferbox/engine/tokenizer/utf8.h"

namespace inferbox::engine {
namespace {

namespace wire = ::inferbox::engine::v1;
namespace api = ::inferbox::v1;
using namespace std::chrono_literals;

api::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop: return api::FINISH_REASON_STOP;
    case FinishReason::kLength: return api::FINISH_REASON_LENGTH;
    case FinishReason::kNone: break;
  }
  return api::FINISH_REASON_UNSPECIFIED;
}

// A token's text for logprobs: its bytes, with a partial UTF-8 character replaced (proto
// strings must be valid UTF-8).
std::string TokenString(const Tokenizer& tokenizer, int32_t token) {
  std::string bytes;
  tokenizer.AppendTokenBytes(token, false, bytes);
  return DecodeUtf8Lossy(bytes);
}

// A Generate call refused before it reached the runtime: finished at once.
class RefusedGenerate final : public grpc::ServerWriteReactor<wire::GenerateChunk> {
 public:
  void OnDone() override { delete this; }
};

// One Generate call: the runtime's deltas written as chunks with no thread waiting per
// stream. The runtime's delivery thread hands a delta over and, when no write is in flight,
// starts that write itself; deltas that arrive during a write are merged and go out when it
// completes (OnWriteDone, on a gRPC thread). The last chunk leaves with the call's status in
// one operation. A client that goes away or whose deadline passes (OnCancel, or a failed
// write) has its request cancelled at the next engine step. The runtime's callback holds the
// Link, not the writer: a delta that comes after the call ended (OnDone deleted the writer)
// finds none.
class GenerateWriter final : public grpc::ServerWriteReactor<wire::GenerateChunk> {
 public:
  // Counted in `calls` until OnDone.
  GenerateWriter(Runtime& runtime, EngineService::Calls& calls, const Tokenizer& tokenizer,
                 const std::string& model_id, std::string request_id, uint32_t prompt_tokens,
                 std::chrono::milliseconds late_status)
      : runtime_(runtime),
        calls_(calls),
        tokenizer_(tokenizer),
        model_id_(model_id),
        request_id_(std::move(request_id)),
        prompt_tokens_(prompt_tokens),
        late_status_(late_status),
        link_(std::make_shared<Link>()) {
    link_->writer = this;
    calls_.Add();
  }

  // Hands the request to the runtime, or finishes the call with its refusal.
  void Start(RequestOptions options) {
    std::shared_ptr<Link> link = link_;
    const Result<int64_t> id = runtime_.Submit(
        std::move(options), [link](Delta&& delta) { Deliver(link, std::move(delta)); });
    {
      // No reaction (OnCancel, OnWriteDone) runs before the handler returns this writer, so
      // id_ is known to them.
      std::lock_guard lock(link_->mutex);
      if (!id.ok()) {
        // The runtime took nothing: no delta will come.
        finish_status_ = ToGrpcStatus(id.status());
      } else {
        id_ = *id;
        spdlog::debug("request {} ({}) accepted", request_id_, *id);
      }
    }
    Pump(link_);
  }

  void OnWriteDone(bool ok) override {
    std::optional<int64_t> cancel;
    {
      std::lock_guard lock(link_->mutex);
      busy_ = false;
      if (!ok && !cancelled_) {
        cancelled_ = true;
        cancel_message_ = "the client went away";
        cancel = id_;  // The runtime ignores a request that already finished.
      }
    }
    if (cancel) runtime_.Cancel(*cancel);
    Pump(link_);
  }

  void OnCancel() override {
    std::optional<int64_t> cancel;
    {
      std::lock_guard lock(link_->mutex);
      if (!cancelled_) {
        cancelled_ = true;
        cancel = id_;  // The runtime ignores a request that already finished.
      }
    }
    // Free the request's KV at the next step.
    if (cancel) {
      runtime_.Cancel(*cancel);
      spdlog::debug("request {} cancelled by its client", request_id_);
    }
    Pump(link_);
  }

  void OnDone() override {
    {
      std::lock_guard lock(link_->mutex);
      link_->writer = nullptr;
    }
    EngineService::Calls& calls = calls_;
    delete this;
    calls.Remove();  // Last: a drain may return and the engine stop once none is left.
  }

 private:
  // What the runtime's callback keeps: the writer while its call lasts.
  struct Link {
    std::mutex mutex;  // Guards `writer` and the writer's state below.
    GenerateWriter* writer = nullptr;
  };

  // On the delivery thread.
  static void Deliver(const std::shared_ptr<Link>& link, Delta&& delta) {
    {
      std::lock_guard lock(link->mutex);
      GenerateWriter* writer = link->writer;
      if (writer == nullptr) return;
      if (writer->pending_) {
        writer->pending_->Merge(std::move(delta));
      } else {
        writer->pending_ = std::move(delta);
      }
    }
    Pump(link);
  }

  // Starts the call's next operation if none is in flight: the final status once known, a
  // chunk from what is pending, or nothing. Whoever sets busy_ holds the call until that
  // operation completes: no one else writes or finishes, and the writer cannot be deleted
  // (OnDone follows Finish), so the operation is started outside the lock (gRPC may run a
  // reaction inline).
  static void Pump(const std::shared_ptr<Link>& link) {
    GenerateWriter* writer = nullptr;
    std::optional<grpc::Status> finish;
    std::optional<Delta> delta;
    {
      std::lock_guard lock(link->mutex);
      writer = link->writer;
      if (writer == nullptr || writer->busy_ || writer->done_) return;
      if (writer->finish_status_) {
        finish = std::exchange(writer->finish_status_, std::nullopt);
      } else if (writer->cancelled_) {
        finish = grpc::Status(grpc::StatusCode::CANCELLED, writer->cancel_message_);
      } else if (writer->pending_) {
        delta.swap(writer->pending_);
        if (delta->finished && !delta->error.ok() && delta->token_ids.empty())
          finish = ToGrpcStatus(delta->error);
      } else {
        return;
      }
      writer->busy_ = true;
      // Finished now, or by the write that ends with the status.
      writer->done_ = finish.has_value() ||
                      (delta->finished && delta->error.ok() && writer->late_status_.count() == 0);
      if (!finish && delta->finished) {
        // The status follows this chunk's write: the error it ended with, or OK late.
        if (!delta->error.ok()) {
          writer->finish_status_ = ToGrpcStatus(delta->error);
        } else if (writer->late_status_.count() > 0) {
          writer->finish_status_ = grpc::Status::OK;
          writer->late_ = true;
        }
      }
    }
    if (finish) {
      writer->FinishCall(std::move(*finish));
      return;
    }
    writer->Write(std::move(*delta));
  }

  // The call's status; after a late last chunk, INFERBOX_TEST_FAULT_LATE_STATUS_MS later.
  void FinishCall(grpc::Status status) {
    if (late_ && status.ok()) {
      std::thread([this, status = std::move(status)]() mutable {
        std::this_thread::sleep_for(late_status_);
        Finish(std::move(status));
      }).detach();
      return;
    }
    Finish(std::move(status));
  }

  // Writes `delta` as the next chunk (the last one with the OK status, in one operation).
  void Write(Delta&& delta) {
    chunk_.Clear();
    api::GenerateChunk& out = *chunk_.mutable_chunk();
    out.set_request_id(request_id_);
    out.set_model(model_id_);
    out.set_text(std::move(delta.text));
    for (const int32_t token : delta.token_ids) out.add_token_ids(static_cast<uint32_t>(token));
    for (const TokenLogprobs& entry : delta.logprobs) {
      api::TokenLogprob& logprob = *out.add_logprobs();
      logprob.set_token_id(static_cast<uint32_t>(entry.token));
      logprob.set_token(TokenString(tokenizer_, entry.token));
      logprob.set_logprob(entry.logprob);
      for (const auto& [token, value] : entry.top) {
        api::TopLogprob& top = *logprob.add_top_logprobs();
        top.set_token_id(static_cast<uint32_t>(token));
        top.set_token(TokenString(tokenizer_, token));
        top.set_logprob(value);
      }
    }
    if (first_) chunk_.set_prompt_tokens(prompt_tokens_);
    first_ = false;
    const bool last = delta.finished && delta.error.ok();
    if (last) {
      out.set_finish_reason(ToProto(delta.finish));
      out.set_matched_stop(delta.matched_stop);
      api::Usage& usage = *out.mutable_usage();
      usage.set_prompt_tokens(static_cast<uint32_t>(delta.usage.prompt_tokens));
      usage.set_completion_tokens(static_cast<uint32_t>(delta.usage.completion_tokens));
      usage.set_cached_prompt_tokens(static_cast<uint32_t>(delta.usage.cached_prompt_tokens));
      usage.set_time_to_first_token_seconds(delta.timings.first_token);
      usage.set_total_seconds(delta.timings.total);
      wire::EngineTimings& timings = *chunk_.mutable_timings();
      timings.set_queue_seconds(delta.timings.queue);
      timings.set_prefill_seconds(delta.timings.prefill);
      timings.set_decode_seconds(delta.timings.decode);
    }
    if (last && late_status_.count() == 0) {
      // The last chunk and the OK status leave together (one write, not two).
      StartWriteAndFinish(&chunk_, grpc::WriteOptions(), grpc::Status::OK);
    } else {
      StartWrite(&chunk_);
    }
  }

  Runtime& runtime_;
  EngineService::Calls& calls_;
  const Tokenizer& tokenizer_;
  const std::string& model_id_;
  const std::string request_id_;
  const uint32_t prompt_tokens_;
  const std::chrono::milliseconds late_status_;
  const std::shared_ptr<Link> link_;
  wire::GenerateChunk chunk_;  // The chunk being written (the write reads it until done).
  bool first_ = true;          // Used by the operation's holder only.

  // Guarded by link_->mutex.
  std::optional<int64_t> id_;     // Once Submit accepted the request.
  std::optional<Delta> pending_;  // Deltas not written yet, merged.
  bool busy_ = false;             // An operation is in flight (see Pump).
  bool done_ = false;             // Finish has been (or is being) called.
  bool cancelled_ = false;        // The client went away or cancelled.
  std::string cancel_message_ = "the client cancelled the request";
  std::optional<grpc::Status> finish_status_;  // To send once no operation is in flight.
  bool late_ = false;                          // finish_status_ follows late (a test fault).
};

}  // namespace

EngineService::EngineService(std::string model_id) : model_id_(std::move(model_id)) {}

void EngineService::SetReady(Runtime* runtime, const RequestBuilder* builder,
                             const Tokenizer* tokenizer) {
  tokenizer_.store(tokenizer);
  builder_.store(builder);
  runtime_.store(runtime);
  SetLoadingMessage("");
  health_.store(wire::ENGINE_HEALTH_READY);
}

void EngineService::SetFailed(std::string message) {
  {
    std::lock_guard lock(message_mutex_);
    message_ = std::move(message);
  }
  health_.store(wire::ENGINE_HEALTH_FAILED);
}

void EngineService::SetLoadingMessage(std::string message) {
  std::lock_guard lock(message_mutex_);
  message_ = std::move(message);
}

void EngineService::Calls::Add() {
  std::lock_guard lock(mutex_);
  ++count_;
}

void EngineService::Calls::Remove() {
  std::lock_guard lock(mutex_);
  if (--count_ == 0) none_.notify_all();
}

bool EngineService::Calls::WaitForNone(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock lock(mutex_);
  return none_.wait_until(lock, deadline, [this] { return count_ == 0; });
}

int64_t EngineService::DrainRequests(std::chrono::milliseconds timeout) {
  std::lock_guard drain(drain_mutex_);
  auto expected = wire::ENGINE_HEALTH_READY;
  health_.compare_exchange_strong(expected, wire::ENGINE_HEALTH_DRAINING);
  Runtime* runtime = runtime_.load();
  if (runtime == nullptr) return 0;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  if (runtime->WaitIdle(deadline)) {
    if (!calls_.WaitForNone(deadline)) {
      spdlog::warn(
          "drain: the drain timeout passed while finished requests were still being "
          "written to their clients");
    }
    return 0;
  }
  const int64_t aborted = runtime->stats().requests_in_flight;
  runtime->CancelAll(UnavailableError("the engine is draining; the drain timeout passed"));
  runtime->WaitIdle(std::chrono::steady_clock::now() + 10s);
  return aborted;
}

grpc::ServerWriteReactor<wire::GenerateChunk>* EngineService::Generate(
    grpc::CallbackServerContext* /*context*/, const wire::GenerateRequest* request) {
  const auto refuse = [](grpc::Status status) {
    auto* refused = new RefusedGenerate();
    refused->Finish(std::move(status));
    return refused;
  };
  switch (health_.load()) {
    case wire::ENGINE_HEALTH_READY: break;
    case wire::ENGINE_HEALTH_DRAINING:
      return refuse(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the engine is draining"));
    case wire::ENGINE_HEALTH_FAILED:
      return refuse(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the engine failed"));
    default:
      return refuse(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the engine is loading the model"));
  }
  Runtime& runtime = *runtime_.load();
  const RequestBuilder& builder = *builder_.load();
  const Tokenizer& tokenizer = *tokenizer_.load();

  Result<RequestOptions> options = InvalidArgumentError("input: give completion or chat");
  std::string request_id = request->request_id();
  if (request->has_completion()) {
    options = builder.FromCompletion(request->completion());
    if (!request->completion().request_id().empty())
      request_id = request->completion().request_id();
  } else if (request->has_chat()) {
    options = builder.FromChat(request->chat());
    if (!request->chat().request_id().empty()) request_id = request->chat().request_id();
  }
  if (!options.ok()) return refuse(ToGrpcStatus(options.status()));

  const auto prompt_tokens = static_cast<uint32_t>(options->prompt.size());
  auto* writer = new GenerateWriter(runtime, calls_, tokenizer, model_id_, std::move(request_id),
                                    prompt_tokens, late_status_);
  writer->Start(std::move(options).value());
  return writer;
}

grpc::Status EngineService::Health(grpc::ServerContext*, const wire::HealthRequest*,
                                   wire::HealthResponse* response) {
  response->set_model(model_id_);
  wire::EngineHealth health = health_.load();
  {
    std::lock_guard lock(message_mutex_);
    response->set_message(message_);
  }
  if (Runtime* runtime = runtime_.load(); runtime != nullptr) {
    const RuntimeStats stats = runtime->stats();
    response->set_steps_completed(static_cast<uint64_t>(stats.steps_total));
    response->set_requests_in_flight(static_cast<uint32_t>(stats.requests_in_flight));
    response->set_max_model_len(static_cast<uint32_t>(runtime->limits().max_model_len));
    if (const RequestBuilder* builder = builder_.load(); builder != nullptr) {
      response->set_has_chat_template(builder->has_chat_template());
      response->set_chat_prompt_opens_reasoning(builder->chat_prompt_opens_reasoning());
      response->set_tool_call_format(builder->tool_call_format());
    }
    if (stats.failed) {
      health = wire::ENGINE_HEALTH_FAILED;
      response->set_message(stats.failure);
    }
  }
  response->set_health(health);
  return grpc::Status::OK;
}

grpc::Status EngineService::Stats(grpc::ServerContext*, const wire::StatsRequest*,
                                  wire::StatsResponse* response) {
  Runtime* runtime = runtime_.load();
  if (runtime == nullptr)
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the engine is loading the model");
  const RuntimeStats stats = runtime->stats();
  response->set_num_requests_running(static_cast<uint32_t>(stats.num_running));
  response->set_num_requests_waiting(static_cast<uint32_t>(stats.num_waiting));
  response->set_num_waiting_prompt_tokens(static_cast<uint64_t>(stats.num_waiting_tokens));
  response->set_num_kv_blocks_total(static_cast<uint32_t>(stats.num_blocks));
  response->set_num_kv_blocks_used(static_cast<uint32_t>(stats.num_blocks_used));
  response->set_kv_block_size(static_cast<uint32_t>(stats.block_size));
  response->set_prompt_tokens_total(static_cast<uint64_t>(stats.prompt_tokens_total));
  response->set_generation_tokens_total(static_cast<uint64_t>(stats.generation_tokens_total));
  response->set_prefix_cache_queried_tokens_total(
      static_cast<uint64_t>(stats.prefix_queried_tokens_total));
  response->set_prefix_cache_hit_tokens_total(static_cast<uint64_t>(stats.prefix_hit_tokens_total));
  response->set_num_preemptions_total(static_cast<uint64_t>(stats.preemptions_total));
  return grpc::Status::OK;
}

grpc::Status EngineService::Drain(grpc::ServerContext*, const wire::DrainRequest* request,
                                  wire::DrainResponse* response) {
  if (!(request->timeout_seconds() >= 0) || request->timeout_seconds() > 3600) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "timeout_seconds must be in [0, 3600]");
  }
  const auto timeout =
      std::chrono::milliseconds(static_cast<int64_t>(request->timeout_seconds() * 1000.0));
  response->set_num_requests_aborted(static_cast<uint32_t>(DrainRequests(timeout)));
  return grpc::Status::OK;
}

grpc::Status EngineService::Tokenize(grpc::ServerContext*, const api::TokenizeRequest* request,
                                     api::TokenizeResponse* response) {
  const RequestBuilder* builder = builder_.load();
  const Tokenizer* tokenizer = tokenizer_.load();
  if (builder == nullptr || tokenizer == nullptr)
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the engine is loading the model");
  std::vector<TokenId> ids;
  switch (request->input_case()) {
    case api::TokenizeRequest::kText:
      ids = tokenizer->Encode(request->text(),
                              !request->has_add_special_tokens() || request->add_special_tokens());
      break;
    case api::TokenizeRequest::kChat: {
      auto text = builder->RenderChat(request->chat());
      if (!text.ok()) return ToGrpcStatus(text.status());
      ids = tokenizer->Encode(*text, false);
      break;
    }
    case api::TokenizeRequest::INPUT_NOT_SET:
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "input: give text or chat");
  }
  for (const TokenId id : ids) {
    response->add_token_ids(static_cast<uint32_t>(id));
    response->add_tokens(TokenString(*tokenizer, id));
  }
  response->set_max_model_len(static_cast<uint32_t>(builder->max_model_len()));
  return grpc::Status::OK;
}

}  // namespace inferbox::engine
