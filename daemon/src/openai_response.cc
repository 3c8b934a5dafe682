// Errors and responses of the OpenAI API from inferbox.v1 chunks, usage and models.
#include "openai_json.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <random>

#include <fmt/format.h>
#include <boost/json.hpp>

namespace inferbox::daemon::openai {
namespace {

namespace json = boost::json;
namespace v1 = inferbox::v1;
using TokenLogprobs = google::protobuf::RepeatedPtrField<v1::TokenLogprob>;

// vLLM reports a -inf logprob as this; JSON has no infinity.
constexpr double kMinLogprob = -9999.0;

// A float as the shortest decimal that reads back as it, so 0.1f prints as 0.1 and not as
// 0.10000000149011612.
double JsonFloat(float value) {
  if (std::isinf(value) && value < 0) return kMinLogprob;
  if (!std::isfinite(value)) return 0.0;
  char text[32];
  const auto written = std::to_chars(text, text + sizeof(text), value);
  double result = value;
  std::from_chars(text, written.ptr, result);
  return result;
}

// `text` with every byte that is not part of valid UTF-8 replaced by U+FFFD (a token may be
// part of a multi-byte character; JSON output must stay valid UTF-8).
std::string ValidUtf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    const auto byte = static_cast<unsigned char>(text[i]);
    size_t length = 0;
    unsigned char low = 0x80;
    unsigned char high = 0xBF;
    if (byte < 0x80) {
      length = 1;
    } else if (byte >= 0xC2 && byte <= 0xDF) {
      length = 2;
    } else if (byte >= 0xE0 && byte <= 0xEF) {
      length = 3;
      if (byte == 0xE0) low = 0xA0;
      if (byte == 0xED) high = 0x9F;
    } else if (byte >= 0xF0 && byte <= 0xF4) {
      length = 4;
      if (byte == 0xF0) low = 0x90;
      if (byte == 0xF4) high = 0x8F;
    }
    bool valid = length > 0 && i + length <= text.size();
    for (size_t k = 1; valid && k < length; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      valid = k == 1 ? (next >= low && next <= high) : (next >= 0x80 && next <= 0xBF);
    }
    if (valid) {
      out.append(text.substr(i, length));
      i += length;
    } else {
      out.append("\xEF\xBF\xBD");
      ++i;
    }
  }
  return out;
}

json::array TokenBytes(std::string_view token) {
  json::array bytes;
  for (const char c : token) bytes.push_back(static_cast<unsigned char>(c));
  return bytes;
}

json::value FinishReasonJson(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP: return "stop";
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_TOOL_CALLS: return "tool_calls";
    default: return nullptr;
  }
}

// message.tool_calls (or delta.tool_calls, with each call's index).
json::array ToolCallsJson(const std::vector<ToolCall>& calls, bool indexed) {
  json::array out;
  for (size_t i = 0; i < calls.size(); ++i) {
    json::object call{{"id", calls[i].id},
                      {"type", "function"},
                      {"function", json::object{{"name", ValidUtf8(calls[i].name)},
                                                {"arguments", ValidUtf8(calls[i].arguments)}}}};
    if (indexed) call["index"] = i;
    out.push_back(std::move(call));
  }
  return out;
}

json::object UsageJson(const v1::Usage& usage) {
  return {{"prompt_tokens", usage.prompt_tokens()},
          {"completion_tokens", usage.completion_tokens()},
          {"total_tokens", uint64_t{usage.prompt_tokens()} + usage.completion_tokens()},
          {"prompt_tokens_details", json::object{{"cached_tokens", usage.cached_prompt_tokens()}}}};
}

// Chat: {"content":[{"token","logprob","bytes","top_logprobs":[...]}]}.
json::value ChatLogprobsJson(const TokenLogprobs& logprobs) {
  json::array content;
  for (const v1::TokenLogprob& entry : logprobs) {
    json::array top;
    for (const v1::TopLogprob& alternative : entry.top_logprobs()) {
      top.push_back(json::object{{"token", ValidUtf8(alternative.token())},
                                 {"logprob", JsonFloat(alternative.logprob())},
                                 {"bytes", TokenBytes(alternative.token())}});
    }
    content.push_back(json::object{{"token", ValidUtf8(entry.token())},
                                   {"logprob", JsonFloat(entry.logprob())},
                                   {"bytes", TokenBytes(entry.token())},
                                   {"top_logprobs", std::move(top)}});
  }
  return json::object{{"content", std::move(content)}};
}

// Completions (legacy): {"tokens","token_logprobs","top_logprobs":[{token: logprob}],
// "text_offset"}, offsets in bytes from the start of the output.
json::value LegacyLogprobsJson(const TokenLogprobs& logprobs, size_t text_offset) {
  json::array tokens;
  json::array token_logprobs;
  json::array top_logprobs;
  json::array offsets;
  for (const v1::TokenLogprob& entry : logprobs) {
    tokens.push_back(json::string(ValidUtf8(entry.token())));
    token_logprobs.push_back(JsonFloat(entry.logprob()));
    json::object top;
    for (const v1::TopLogprob& alternative : entry.top_logprobs())
      top.emplace(ValidUtf8(alternative.token()), JsonFloat(alternative.logprob()));
    top_logprobs.push_back(std::move(top));
    offsets.push_back(text_offset);
    text_offset += entry.token().size();
  }
  return json::object{{"tokens", std::move(tokens)},
                      {"token_logprobs", std::move(token_logprobs)},
                      {"top_logprobs", std::move(top_logprobs)},
                      {"text_offset", std::move(offsets)}};
}

json::object ResponseHead(const ResponseContext& context, std::string_view object) {
  return {{"id", context.id},
          {"object", object},
          {"created", context.created},
          {"model", context.model}};
}

json::object ModelJson(const v1::ModelInfo& model) {
  return {{"id", model.id()},
          {"object", "model"},
          {"created", model.created()},
          {"owned_by", model.owned_by().empty() ? "inferbox" : model.owned_by()},
          {"max_model_len", model.max_model_len()}};
}

}  // namespace

ApiError InvalidRequest(std::string param, std::string message) {
  return {.http_status = 400,
          .type = "invalid_request_error",
          .message = std::move(message),
          .param = std::move(param)};
}

ApiError ApiErrorFromStatus(const Status& status) {
  std::string message =
      status.message().empty() ? std::string(StatusCodeName(status.code())) : status.message();
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kFailedPrecondition:
    case StatusCode::kAlreadyExists: {
      ApiError error = InvalidRequest("", std::move(message));
      if (status.reason() == error_reason::kPromptTooLong) error.code = "context_length_exceeded";
      return error;
    }
    case StatusCode::kUnauthenticated:
      return {.http_status = 401,
              .type = "authentication_error",
              .message = std::move(message),
              .code = "invalid_api_key"};
    case StatusCode::kPermissionDenied:
      return {.http_status = 403, .type = "permission_error", .message = std::move(message)};
    case StatusCode::kNotFound:
      return {.http_status = 404,
              .type = "invalid_request_error",
              .message = std::move(message),
              .param = "model",
              .code = "model_not_found"};
    case StatusCode::kResourceExhausted:
      if (const auto& quota = status.quota_violation()) {
        return {.http_status = 429,
                .type = "rate_limit_error",
                .message = std::move(message),
                .code = quota->limit == "tokens_per_day"            ? "daily_budget_exceeded"
                        : quota->limit == "max_concurrent_requests" ? "concurrency_limit_exceeded"
                                                                    : "rate_limit_exceeded",
                .retry_after = true,
                .retry_after_seconds = std::max<int64_t>(
                    1, std::chrono::ceil<std::chrono::seconds>(quota->retry_after).count())};
      }
      return {.http_status = 503,
              .type = "service_unavailable_error",
              .message = std::move(message),
              .code = "server_is_overloaded",
              .retry_after = true};
    case StatusCode::kUnavailable:
    case StatusCode::kCancelled:
      return {.http_status = 503,
              .type = "service_unavailable_error",
              .message = std::move(message),
              .retry_after = true};
    case StatusCode::kDeadlineExceeded:
      return {.http_status = 504, .type = "timeout_error", .message = std::move(message)};
    case StatusCode::kOk:
    case StatusCode::kInternal: break;
  }
  return {.http_status = 500, .type = "server_error", .message = std::move(message)};
}

std::string ErrorBody(const ApiError& error) {
  json::object body{{"message", ValidUtf8(error.message)},
                    {"type", error.type},
                    {"param", nullptr},
                    {"code", nullptr}};
  if (!error.param.empty()) body["param"] = error.param;
  if (!error.code.empty()) body["code"] = error.code;
  return json::serialize(json::object{{"error", std::move(body)}});
}

std::string NewResponseId(Endpoint endpoint) {
  thread_local std::mt19937_64 random{std::random_device{}()};
  const uint64_t high = random();
  const uint64_t low = random();
  return fmt::format("{}-{:016x}{:016x}",
                     endpoint == Endpoint::kChatCompletions ? "chatcmpl" : "cmpl", high, low);
}

std::string CompletionBody(const ResponseContext& context, const CompletionOutput& output) {
  const bool chat = context.endpoint == Endpoint::kChatCompletions;
  json::object choice{{"index", 0}};
  if (chat) {
    json::object message{{"role", "assistant"}, {"content", ValidUtf8(output.content)}};
    if (!output.reasoning.empty()) message["reasoning_content"] = ValidUtf8(output.reasoning);
    if (!output.tool_calls.empty()) {
      // As OpenAI answers a call: no text is null, not "".
      if (output.content.find_first_not_of(" \t\r\n") == std::string::npos) {
        message["content"] = nullptr;
      }
      message["tool_calls"] = ToolCallsJson(output.tool_calls, /*indexed=*/false);
    }
    choice["message"] = std::move(message);
    choice["logprobs"] = context.logprobs ? ChatLogprobsJson(output.logprobs) : nullptr;
  } else {
    choice["text"] = ValidUtf8(output.content);
    choice["logprobs"] = context.logprobs ? LegacyLogprobsJson(output.logprobs, 0) : nullptr;
  }
  choice["finish_reason"] = FinishReasonJson(output.finish_reason);
  json::object body = ResponseHead(context, chat ? "chat.completion" : "text_completion");
  body["choices"] = json::array{std::move(choice)};
  body["usage"] = UsageJson(output.usage);
  return json::serialize(body);
}

std::string ChunkJson(const ResponseContext& context, const ChunkDelta& delta) {
  const bool chat = context.endpoint == Endpoint::kChatCompletions;
  const bool has_logprobs =
      context.logprobs && delta.logprobs != nullptr && !delta.logprobs->empty();
  json::object choice{{"index", 0}};
  if (chat) {
    json::object fields;
    if (delta.first) {
      fields["role"] = "assistant";
      fields["content"] = "";
    }
    if (!delta.content.empty()) fields["content"] = ValidUtf8(delta.content);
    if (!delta.reasoning.empty()) fields["reasoning_content"] = ValidUtf8(delta.reasoning);
    if (delta.tool_calls != nullptr && !delta.tool_calls->empty()) {
      fields["tool_calls"] = ToolCallsJson(*delta.tool_calls, /*indexed=*/true);
    }
    choice["delta"] = std::move(fields);
    choice["logprobs"] = has_logprobs ? ChatLogprobsJson(*delta.logprobs) : nullptr;
  } else {
    choice["text"] = ValidUtf8(delta.content);
    choice["logprobs"] =
        has_logprobs ? LegacyLogprobsJson(*delta.logprobs, delta.text_offset) : nullptr;
  }
  choice["finish_reason"] = FinishReasonJson(delta.finish_reason);
  json::object chunk = ResponseHead(context, chat ? "chat.completion.chunk" : "text_completion");
  chunk["choices"] = json::array{std::move(choice)};
  if (context.include_usage) chunk["usage"] = nullptr;
  return json::serialize(chunk);
}

std::string UsageChunkJson(const ResponseContext& context, const v1::Usage& usage) {
  json::object chunk =
      ResponseHead(context, context.endpoint == Endpoint::kChatCompletions ? "chat.completion.chunk"
                                                                           : "text_completion");
  chunk["choices"] = json::array();
  chunk["usage"] = UsageJson(usage);
  return json::serialize(chunk);
}

std::string ModelListBody(const std::vector<v1::ModelInfo>& models) {
  json::array data;
  for (const v1::ModelInfo& model : models) data.push_back(ModelJson(model));
  return json::serialize(json::object{{"object", "list"}, {"data", std::move(data)}});
}

std::string ModelBody(const v1::ModelInfo& model) {
  return json::serialize(ModelJson(model));
}

std::string StatusBody(std::string_view status) {
  return json::serialize(json::object{{"status", status}});
}

}  // namespace inferbox::daemon::openai
