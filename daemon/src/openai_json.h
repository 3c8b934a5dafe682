// OpenAI JSON to and from inferbox.v1: request bodies of /v1/chat/completions and
// /v1/completions to ChatRequest/GenerateRequest, and GenerateChunks back to completion
// objects, stream chunks, model lists and error objects (openai_request.cc and
// openai_response.cc). Pure functions: no I/O, no threads.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "inferbox/common/status.h"
#include "inferbox/v1/inference.pb.h"
#include "openai_tools.h"

namespace inferbox::daemon::openai {

// An error response: the HTTP status and the fields of
// {"error":{"message","type","param","code"}} (R1.7).
struct ApiError {
  int http_status = 500;
  std::string type;
  std::string message;
  std::string param;  // Empty: null.
  std::string code;   // Empty: null.
  // Send Retry-After: the client should come back shortly.
  bool retry_after = false;
  // With retry_after: its value in seconds, when it is known (a key's quota frees then);
  // 0: a 1-3 s jitter.
  int64_t retry_after_seconds = 0;
};

ApiError InvalidRequest(std::string param, std::string message);
// The one mapping from a Status (frontend, stream or authenticator) to an API error.
// RESOURCE_EXHAUSTED is 429 rate_limit_error with the exact Retry-After when an API key's
// quota refused (Status::quota_violation), else (queue full) 503 server_is_overloaded.
ApiError ApiErrorFromStatus(const Status& status);
// {"error":{...}}
std::string ErrorBody(const ApiError& error);

struct ResponseOptions {
  bool stream = false;
  // stream_options.include_usage: one extra chunk with usage before [DONE] (R1.4).
  bool include_usage = false;
};

struct ChatCompletionRequest {
  inferbox::v1::ChatRequest request;
  ResponseOptions response;
  // Top-level and nested fields that were accepted and ignored (R1.2), e.g. "foo",
  // "messages[0].foo".
  std::vector<std::string> ignored_fields;
};

struct CompletionRequest {
  inferbox::v1::GenerateRequest request;
  ResponseOptions response;
  std::vector<std::string> ignored_fields;
};

// Parse a request body. nullopt on success (with *out filled), else the 400 to answer.
std::optional<ApiError> ParseChatCompletionRequest(std::string_view body,
                                                   ChatCompletionRequest* out);
std::optional<ApiError> ParseCompletionRequest(std::string_view body, CompletionRequest* out);

enum class Endpoint { kChatCompletions, kCompletions };

// What every response object and stream chunk of one request repeats.
struct ResponseContext {
  Endpoint endpoint = Endpoint::kChatCompletions;
  std::string id;       // "chatcmpl-..." or "cmpl-...".
  int64_t created = 0;  // Unix seconds.
  std::string model;
  bool logprobs = false;  // Logprobs were requested: "logprobs" is an object, not null.
  bool include_usage = false;
};

// A random response id with the endpoint's prefix.
std::string NewResponseId(Endpoint endpoint);

// The whole output of a finished generation, for a non-streaming response.
struct CompletionOutput {
  std::string content;
  std::string reasoning;  // Chat only: reasoning_content, omitted when empty.
  google::protobuf::RepeatedPtrField<inferbox::v1::TokenLogprob> logprobs;
  std::vector<ToolCall> tool_calls;  // Chat only: message.tool_calls, omitted when empty.
  inferbox::v1::FinishReason finish_reason = inferbox::v1::FINISH_REASON_UNSPECIFIED;
  inferbox::v1::Usage usage;
};

// chat.completion or text_completion.
std::string CompletionBody(const ResponseContext& context, const CompletionOutput& output);

// One stream chunk's choice.
struct ChunkDelta {
  bool first = false;  // Chat: carries delta.role (and content "") (R1.3).
  std::string content;
  std::string reasoning;
  // This chunk's logprobs; null for none.
  const google::protobuf::RepeatedPtrField<inferbox::v1::TokenLogprob>* logprobs = nullptr;
  // Completions' legacy logprobs: byte offset of this chunk's text in the whole output.
  size_t text_offset = 0;
  // Chat: delta.tool_calls, each whole (index, id, type, name and arguments); null for none.
  const std::vector<ToolCall>* tool_calls = nullptr;
  // UNSPECIFIED: null (every chunk but the last).
  inferbox::v1::FinishReason finish_reason = inferbox::v1::FINISH_REASON_UNSPECIFIED;
};

// chat.completion.chunk or text_completion with one choice.
std::string ChunkJson(const ResponseContext& context, const ChunkDelta& delta);
// The include_usage chunk: choices [] and the usage.
std::string UsageChunkJson(const ResponseContext& context, const inferbox::v1::Usage& usage);

// GET /v1/models and GET /v1/models/{id}.
std::string ModelListBody(const std::vector<inferbox::v1::ModelInfo>& models);
std::string ModelBody(const inferbox::v1::ModelInfo& model);

// A JSON object with one "status" string: {"status":"ok"}.
std::string StatusBody(std::string_view status);

}  // namespace inferbox::daemon::openai
