#include "inferbox/engine/server/request_builder.h"
#include "inferbox/common/json.h"

#include <algorithm>
#include <limits>
#include <random>

#include <fmt/format.h>
#include <boost/json.hpp>

namespace inferbox::engine {
namespace {

namespace json = boost::json;

constexpr int kMaxStopStrings = 16;
constexpr int kMaxStopStringBytes = 256;

// A JSON document given as a string field: parsed when it is valid JSON, else kept as the
// string (as templates accept both for tool-call arguments).
Result<json::value> ParseJsonField(std::string_view text, std::string_view field) {
  boost::system::error_code error;
  json::value value = inferbox::ParseJson(text, error);
  if (error)
    return InvalidArgumentError(fmt::format("{} is not valid JSON: {}", field, error.message()));
  return value;
}

}  // namespace

RequestBuilder::RequestBuilder(const Tokenizer& tokenizer, std::optional<ChatFormat> chat,
                               const ModelConfig& model, GenerationConfig generation,
                               std::vector<int32_t> eos_token_ids, int64_t max_model_len)
    : tokenizer_(tokenizer),
      chat_(std::move(chat)),
      vocab_size_(model.vocab_size),
      generation_(std::move(generation)),
      eos_token_ids_(std::move(eos_token_ids)),
      max_model_len_(max_model_len) {
  if (chat_) {
    inferbox::v1::ChatRequest probe;
    auto* message = probe.add_messages();
    message->set_role("user");
    message->set_content("Hello");
    if (auto rendered = RenderChat(probe); rendered.ok()) {
      std::string_view text(*rendered);
      while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
      chat_prompt_opens_reasoning_ = text.ends_with("<think>");
    }
  }
}

Result<RequestOptions> RequestBuilder::FromCompletion(
    const inferbox::v1::GenerateRequest& request) const {
  std::vector<int32_t> prompt;
  switch (request.prompt_case()) {
    case inferbox::v1::GenerateRequest::kText:
      prompt = tokenizer_.Encode(request.text(),
                                 !request.has_add_special_tokens() || request.add_special_tokens());
      break;
    case inferbox::v1::GenerateRequest::kTokenIds:
      for (const uint32_t id : request.token_ids().ids()) {
        if (id >= static_cast<uint64_t>(vocab_size_)) {
          return InvalidArgumentError(
              fmt::format("prompt token id {} is outside the vocabulary of {}", id, vocab_size_));
        }
        prompt.push_back(static_cast<int32_t>(id));
      }
      break;
    case inferbox::v1::GenerateRequest::PROMPT_NOT_SET:
      return InvalidArgumentError("prompt: give text or token_ids");
  }
  return Build(std::move(prompt), request.sampling(), request.stop(), request.logprobs(),
               request.priority());
}

Result<std::string> RequestBuilder::RenderChat(const inferbox::v1::ChatRequest& request) const {
  if (!chat_) {
    return InvalidArgumentError(
        "this model has no chat template (a base model): use Generate with a text prompt");
  }
  if (request.messages().empty()) return InvalidArgumentError("messages: at least one is needed");
  json::array messages;
  for (int i = 0; i < request.messages_size(); ++i) {
    const auto& message = request.messages(i);
    const std::string& role = message.role();
    if (role != "system" && role != "user" && role != "assistant" && role != "tool") {
      return InvalidArgumentError(
          fmt::format("messages[{}].role: '{}' is not system, user, assistant or tool", i, role));
    }
    json::object entry{{"role", role}, {"content", message.content()}};
    if (!message.name().empty()) entry["name"] = message.name();
    if (!message.tool_call_id().empty()) entry["tool_call_id"] = message.tool_call_id();
    if (message.tool_calls_size() > 0) {
      json::array calls;
      for (const auto& call : message.tool_calls()) {
        json::value arguments(json::string(call.arguments_json()));
        if (auto parsed = ParseJsonField(call.arguments_json(), "arguments"); parsed.ok())
          arguments = std::move(parsed).value();
        calls.push_back(json::object{
            {"id", call.id()},
            {"type", call.type().empty() ? "function" : call.type()},
            {"function", json::object{{"name", call.function_name()}, {"arguments", arguments}}}});
      }
      entry["tool_calls"] = std::move(calls);
    }
    messages.push_back(std::move(entry));
  }
  json::object variables;
  if (!request.chat_template_kwargs_json().empty()) {
    auto kwargs = ParseJsonField(request.chat_template_kwargs_json(), "chat_template_kwargs_json");
    if (!kwargs.ok()) return kwargs.status();
    if (!kwargs->is_object())
      return InvalidArgumentError("chat_template_kwargs_json must be a JSON object");
    variables = std::move(kwargs->as_object());
  }
  variables["messages"] = std::move(messages);
  variables["add_generation_prompt"] =
      !request.has_add_generation_prompt() || request.add_generation_prompt();
  if (request.tools_size() > 0) {
    json::array tools;
    for (int i = 0; i < request.tools_size(); ++i) {
      const auto& tool = request.tools(i);
      if (!tool.type().empty() && tool.type() != "function") {
        return InvalidArgumentError(
            fmt::format("tools[{}].type: '{}' is not \"function\"", i, tool.type()));
      }
      if (tool.function().name().empty())
        return InvalidArgumentError(fmt::format("tools[{}].function.name is empty", i));
      json::object function{{"name", tool.function().name()},
                            {"description", tool.function().description()}};
      if (!tool.function().parameters_json().empty()) {
        auto parameters = ParseJsonField(tool.function().parameters_json(),
                                         fmt::format("tools[{}].function.parameters_json", i));
        if (!parameters.ok()) return parameters.status();
        function["parameters"] = std::move(parameters).value();
      }
      tools.push_back(json::object{{"type", "function"}, {"function", std::move(function)}});
    }
    variables["tools"] = std::move(tools);
  }
  return chat_->Render(std::move(variables));
}

Result<RequestOptions> RequestBuilder::FromChat(const inferbox::v1::ChatRequest& request) const {
  auto text = RenderChat(request);
  if (!text.ok()) return text.status();
  // The rendered template carries its own special tokens.
  return Build(tokenizer_.Encode(*text, false), request.sampling(), request.stop(),
               request.logprobs(), request.priority());
}

Result<RequestOptions> RequestBuilder::Build(std::vector<int32_t> prompt,
                                             const inferbox::v1::SamplingParams& sampling,
                                             const inferbox::v1::StopConditions& stop,
                                             const inferbox::v1::LogprobsOptions& logprobs,
                                             inferbox::v1::Priority priority) const {
  RequestOptions options;
  const auto prompt_tokens = static_cast<int64_t>(prompt.size());
  if (prompt_tokens == 0) return InvalidArgumentError("the prompt is empty");
  if (prompt_tokens >= max_model_len_) {
    return InvalidArgumentError(
               fmt::format("the prompt has {} tokens; the model's context is {} tokens, prompt "
                           "and output together",
                           prompt_tokens, max_model_len_))
        .WithReason(error_reason::kPromptTooLong);
  }
  options.prompt = std::move(prompt);

  // Sampling: the request's value, else generation_config.json's, else the API default.
  SamplingParams& params = options.sampling;
  params.temperature =
      sampling.has_temperature() ? sampling.temperature() : generation_.temperature.value_or(1.0f);
  params.top_p = sampling.has_top_p() ? sampling.top_p() : generation_.top_p.value_or(1.0f);
  params.top_k = sampling.has_top_k() ? static_cast<int32_t>(std::min<uint32_t>(
                                            sampling.top_k(), std::numeric_limits<int32_t>::max()))
                                      : generation_.top_k.value_or(0);
  params.min_p = sampling.has_min_p() ? sampling.min_p() : generation_.min_p.value_or(0.0f);
  params.repetition_penalty = sampling.has_repetition_penalty()
                                  ? sampling.repetition_penalty()
                                  : generation_.repetition_penalty.value_or(1.0f);
  params.presence_penalty = sampling.presence_penalty();
  params.frequency_penalty = sampling.frequency_penalty();
  params.seed = sampling.has_seed() ? sampling.seed() : std::random_device()();
  if (logprobs.top_logprobs() > 20)
    return InvalidArgumentError(
        fmt::format("logprobs.top_logprobs must be in [0, 20], got {}", logprobs.top_logprobs()));
  options.logprobs = logprobs.enabled() || logprobs.top_logprobs() > 0;
  params.num_top_logprobs = static_cast<int32_t>(logprobs.top_logprobs());
  if (Status status = ValidateSamplingParams(params); !status.ok()) return status;

  // Stop conditions.
  const int64_t room = max_model_len_ - prompt_tokens;
  options.stop.max_tokens =
      stop.max_tokens() == 0 ? room : std::min<int64_t>(stop.max_tokens(), room);
  options.stop.min_tokens = stop.min_tokens();
  options.stop.ignore_eos = stop.ignore_eos();
  options.stop.eos_token_ids = eos_token_ids_;
  for (const uint32_t id : stop.stop_token_ids()) {
    if (id >= static_cast<uint64_t>(vocab_size_)) {
      return InvalidArgumentError(
          fmt::format("stop_token_ids: {} is outside the vocabulary of {}", id, vocab_size_));
    }
    options.stop.stop_token_ids.push_back(static_cast<int32_t>(id));
  }
  if (stop.stop_size() > kMaxStopStrings) {
    return InvalidArgumentError(
        fmt::format("stop: at most {} strings, got {}", kMaxStopStrings, stop.stop_size()));
  }
  for (const std::string& text : stop.stop()) {
    if (text.empty()) return InvalidArgumentError("stop: a stop string is empty");
    if (text.size() > kMaxStopStringBytes) {
      return InvalidArgumentError(
          fmt::format("stop: a stop string is longer than {} bytes", kMaxStopStringBytes));
    }
    options.stop_strings.push_back(text);
  }
  options.include_stop_string = stop.include_stop_string();
  if (!inferbox::v1::Priority_IsValid(priority))
    return InvalidArgumentError(
        fmt::format("priority: unknown value {}", static_cast<int>(priority)));
  options.lane = priority == inferbox::v1::PRIORITY_BATCH ? Lane::kBatch : Lane::kInteractive;
  return options;
}

}  // namespace inferbox::engine
