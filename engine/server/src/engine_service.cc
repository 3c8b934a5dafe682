#include "inferbox/engine/server/engine_service.h"

#include <thread>

#include <spdlog/spdlog.h>

#include "inferbox/common/grpc_status.h"
#include "inferbox/engine/runtime/delta_queue.h"
#include "inferbox/engine/tokenizer/utf8.h"

namespace inferbox::engine {
namespace {

namespace wire = ::inferbox::engine::v1;
namespace api = ::inferbox::v1;
using namespace std::chrono_literals;

// How often a waiting Generate handler looks at its client (disconnect, deadline).
constexpr auto kClientPollInterval = 50ms;

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

int64_t EngineService::DrainRequests(std::chrono::milliseconds timeout) {
  std::lock_guard drain(drain_mutex_);
  auto expected = wire::ENGINE_HEALTH_READY;
  health_.compare_exchange_strong(expected, wire::ENGINE_HEALTH_DRAINING);
  Runtime* runtime = runtime_.load();
  if (runtime == nullptr) return 0;
  if (runtime->WaitIdle(std::chrono::steady_clock::now() + timeout)) return 0;
  const int64_t aborted = runtime->stats().requests_in_flight;
  runtime->CancelAll(UnavailableError("the engine is draining; the drain timeout passed"));
  runtime->WaitIdle(std::chrono::steady_clock::now() + 10s);
  return aborted;
}

grpc::Status EngineService::Generate(grpc::ServerContext* context,
                                     const wire::GenerateRequest* request,
                                     grpc::ServerWriter<wire::GenerateChunk>* writer) {
  switch (health_.load()) {
    case wire::ENGINE_HEALTH_READY: break;
    case wire::ENGINE_HEALTH_DRAINING:
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the engine is draining");
    case wire::ENGINE_HEALTH_FAILED:
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the engine failed");
    default: return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the engine is loading the model");
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
  if (!options.ok()) return ToGrpcStatus(options.status());

  const auto prompt_tokens = static_cast<uint32_t>(options->prompt.size());
  auto queue = std::make_shared<DeltaQueue>();
  const Result<int64_t> id =
      runtime.Submit(std::move(options).value(), DeltaQueue::Callback(queue));
  if (!id.ok()) return ToGrpcStatus(id.status());
  spdlog::debug("request {} ({}) accepted", request_id, *id);

  wire::GenerateChunk chunk;
  bool first = true;
  for (;;) {
    std::optional<Delta> delta = queue->Take(kClientPollInterval);
    if (!delta) {
      // Nothing to write for a while: is the client still there? (While chunks flow, a
      // write to a client gone or past its deadline fails.)
      if (context->IsCancelled()) {
        // Free the request's KV at the next step.
        runtime.Cancel(*id);
        spdlog::debug("request {} cancelled by its client", request_id);
        return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");
      }
      continue;
    }
    if (delta->finished && !delta->error.ok() && delta->token_ids.empty()) {
      return ToGrpcStatus(delta->error);
    }
    chunk.Clear();
    api::GenerateChunk& out = *chunk.mutable_chunk();
    out.set_request_id(request_id);
    out.set_model(model_id_);
    out.set_text(std::move(delta->text));
    for (const int32_t token : delta->token_ids) out.add_token_ids(static_cast<uint32_t>(token));
    for (const TokenLogprobs& entry : delta->logprobs) {
      api::TokenLogprob& logprob = *out.add_logprobs();
      logprob.set_token_id(static_cast<uint32_t>(entry.token));
      logprob.set_token(TokenString(tokenizer, entry.token));
      logprob.set_logprob(entry.logprob);
      for (const auto& [token, value] : entry.top) {
        api::TopLogprob& top = *logprob.add_top_logprobs();
        top.set_token_id(static_cast<uint32_t>(token));
        top.set_token(TokenString(tokenizer, token));
        top.set_logprob(value);
      }
    }
    if (first) chunk.set_prompt_tokens(prompt_tokens);
    first = false;
    const bool last = delta->finished && delta->error.ok();
    if (last) {
      out.set_finish_reason(ToProto(delta->finish));
      out.set_matched_stop(delta->matched_stop);
      api::Usage& usage = *out.mutable_usage();
      usage.set_prompt_tokens(static_cast<uint32_t>(delta->usage.prompt_tokens));
      usage.set_completion_tokens(static_cast<uint32_t>(delta->usage.completion_tokens));
      usage.set_cached_prompt_tokens(static_cast<uint32_t>(delta->usage.cached_prompt_tokens));
      usage.set_time_to_first_token_seconds(delta->timings.first_token);
      usage.set_total_seconds(delta->timings.total);
      wire::EngineTimings& timings = *chunk.mutable_timings();
      timings.set_queue_seconds(delta->timings.queue);
      timings.set_prefill_seconds(delta->timings.prefill);
      timings.set_decode_seconds(delta->timings.decode);
    }
    // The last chunk and the OK status leave together (one write, not two).
    grpc::WriteOptions write_options;
    if (last && late_status_.count() == 0) write_options.set_last_message();
    if (!writer->Write(chunk, write_options)) {
      if (!delta->finished) runtime.Cancel(*id);
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
    if (last && late_status_.count() > 0) std::this_thread::sleep_for(late_status_);
    if (delta->finished) return last ? grpc::Status::OK : ToGrpcStatus(delta->error);
  }
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
