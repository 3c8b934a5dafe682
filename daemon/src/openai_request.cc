// Request bodies of /v1/chat/completions and /v1/completions to inferbox.v1 requests.
#include "openai_json.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>
#include <boost/json.hpp>

#include "inferbox/common/json.h"

namespace inferbox::daemon::openai {
namespace {

namespace json = boost::json;
namespace v1 = inferbox::v1;

constexpr int kMaxTopLogprobs = 20;
// The legacy /v1/completions default when max_tokens is absent (as OpenAI and vLLM).
constexpr int64_t kDefaultCompletionMaxTokens = 16;

std::string_view KindName(const json::value& value) {
  switch (value.kind()) {
    case json::kind::null: return "null";
    case json::kind::bool_: return "a boolean";
    case json::kind::int64:
    case json::kind::uint64: return "an integer";
    case json::kind::double_: return "a number";
    case json::kind::string: return "a string";
    case json::kind::array: return "an array";
    case json::kind::object: return "an object";
  }
  return "a value";
}

double AsDouble(const json::value& value) {
  if (value.is_int64()) return static_cast<double>(value.get_int64());
  if (value.is_uint64()) return static_cast<double>(value.get_uint64());
  return value.get_double();
}

std::optional<uint32_t> AsTokenId(const json::value& value) {
  if (value.is_int64() && value.get_int64() >= 0 &&
      value.get_int64() <= std::numeric_limits<uint32_t>::max())
    return static_cast<uint32_t>(value.get_int64());
  if (value.is_uint64() && value.get_uint64() <= std::numeric_limits<uint32_t>::max())
    return static_cast<uint32_t>(value.get_uint64());
  return std::nullopt;
}

// What parsing one request body collects: the first error, and the fields ignored.
struct ParseState {
  std::optional<ApiError> error;
  std::vector<std::string> ignored_fields;

  void Fail(std::string param, std::string message) {
    if (!error) error = InvalidRequest(std::move(param), std::move(message));
  }
};

// Reads the fields of one JSON object with type checks. Each getter returns nullopt when the
// field is absent or null (clients send null for "not given") or has the wrong type; the
// latter records a 400 naming the field. Fields never asked for are reported as ignored.
class FieldReader {
 public:
  // `path`: the parameter name prefix of this object's fields, e.g. "messages[2].".
  FieldReader(const json::object& object, std::string path, ParseState& state)
      : object_(object), path_(std::move(path)), state_(state) {}
  FieldReader(const FieldReader&) = delete;
  FieldReader& operator=(const FieldReader&) = delete;
  ~FieldReader() {
    for (const auto& entry : object_) {
      const std::string_view key = entry.key();
      if (std::find(known_.begin(), known_.end(), key) == known_.end())
        state_.ignored_fields.push_back(path_ + std::string(key));
    }
  }

  std::string Param(std::string_view key) const { return path_ + std::string(key); }
  // A reader for the object held by field `key` (e.g. "messages[2]"), sharing this one's
  // error and ignored fields.
  FieldReader Nested(const json::object& object, std::string_view key) {
    return FieldReader(object, Param(key) + ".", state_);
  }
  void Fail(std::string_view key, std::string_view problem) {
    state_.Fail(Param(key), fmt::format("{}: {}", Param(key), problem));
  }
  bool failed() const { return state_.error.has_value(); }

  bool Present(std::string_view key) {
    known_.push_back(key);
    return object_.contains(key);
  }
  // Accepted and ignored without a log line.
  void Accept(std::string_view key) { known_.push_back(key); }

  const json::value* Find(std::string_view key) {
    known_.push_back(key);
    const json::value* value = object_.if_contains(key);
    return value == nullptr || value->is_null() ? nullptr : value;
  }

  std::optional<std::string> String(std::string_view key) {
    const json::value* value = Find(key);
    if (value == nullptr) return std::nullopt;
    if (!value->is_string()) return WrongType(key, *value, "a string");
    return std::string(value->get_string());
  }
  std::optional<bool> Bool(std::string_view key) {
    const json::value* value = Find(key);
    if (value == nullptr) return std::nullopt;
    if (!value->is_bool()) return WrongType(key, *value, "a boolean");
    return value->get_bool();
  }
  std::optional<double> Number(std::string_view key) {
    const json::value* value = Find(key);
    if (value == nullptr) return std::nullopt;
    if (!value->is_number()) return WrongType(key, *value, "a number");
    return AsDouble(*value);
  }
  // An integer in [min, max]; a number with an integral value (e.g. 100.0) counts.
  std::optional<int64_t> Integer(std::string_view key, int64_t min, int64_t max) {
    const json::value* value = Find(key);
    if (value == nullptr) return std::nullopt;
    std::optional<int64_t> integer;
    if (value->is_int64()) {
      integer = value->get_int64();
    } else if (value->is_uint64()) {
      // Above every int64: out of any range asked for.
      integer = std::numeric_limits<int64_t>::max();
    } else if (value->is_double() && std::trunc(value->get_double()) == value->get_double() &&
               std::abs(value->get_double()) < 9.0e15) {
      integer = static_cast<int64_t>(value->get_double());
    } else {
      return WrongType(key, *value, "an integer");
    }
    if (*integer < min || *integer > max) {
      Fail(key, fmt::format("must be in [{}, {}], got {}", min, max, json::serialize(*value)));
      return std::nullopt;
    }
    return integer;
  }
  const json::object* Object(std::string_view key) {
    const json::value* value = Find(key);
    if (value == nullptr) return nullptr;
    if (!value->is_object()) {
      WrongType(key, *value, "an object");
      return nullptr;
    }
    return &value->get_object();
  }
  const json::array* Array(std::string_view key) {
    const json::value* value = Find(key);
    if (value == nullptr) return nullptr;
    if (!value->is_array()) {
      WrongType(key, *value, "an array");
      return nullptr;
    }
    return &value->get_array();
  }

 private:
  std::nullopt_t WrongType(std::string_view key, const json::value& value,
                           std::string_view expected) {
    Fail(key, fmt::format("must be {}, got {}", expected, KindName(value)));
    return std::nullopt;
  }

  const json::object& object_;
  std::string path_;
  ParseState& state_;
  std::vector<std::string_view> known_;
};

// Parses `body` as a JSON object; nullopt with state.error set otherwise.
std::optional<json::object> ParseObject(std::string_view body, ParseState& state) {
  boost::system::error_code error;
  json::value value = inferbox::ParseJson(body, error);
  if (error) {
    state.Fail("", fmt::format("the request body is not valid JSON: {}", error.message()));
    return std::nullopt;
  }
  if (!value.is_object()) {
    state.Fail("", fmt::format("the request body must be a JSON object, got {}", KindName(value)));
    return std::nullopt;
  }
  return std::move(value.get_object());
}

void ReadSampling(FieldReader& fields, v1::SamplingParams* sampling) {
  if (auto value = fields.Number("temperature"))
    sampling->set_temperature(static_cast<float>(*value));
  if (auto value = fields.Number("top_p")) sampling->set_top_p(static_cast<float>(*value));
  // vLLM's -1 also means "disabled".
  if (auto value = fields.Integer("top_k", -1, std::numeric_limits<uint32_t>::max()))
    sampling->set_top_k(*value < 0 ? 0 : static_cast<uint32_t>(*value));
  if (auto value = fields.Number("min_p")) sampling->set_min_p(static_cast<float>(*value));
  if (auto value = fields.Number("repetition_penalty"))
    sampling->set_repetition_penalty(static_cast<float>(*value));
  if (auto value = fields.Number("presence_penalty"))
    sampling->set_presence_penalty(static_cast<float>(*value));
  if (auto value = fields.Number("frequency_penalty"))
    sampling->set_frequency_penalty(static_cast<float>(*value));
  if (const json::value* seed = fields.Find("seed")) {
    // OpenAI seeds are signed 64-bit; the proto's are unsigned: keep the bit pattern.
    if (seed->is_int64())
      sampling->set_seed(static_cast<uint64_t>(seed->get_int64()));
    else if (seed->is_uint64())
      sampling->set_seed(seed->get_uint64());
    else
      fields.Fail("seed", fmt::format("must be an integer, got {}", KindName(*seed)));
  }
}

void ReadStopStrings(FieldReader& fields, v1::StopConditions* stop) {
  const json::value* value = fields.Find("stop");
  if (value == nullptr) return;
  if (value->is_string()) {
    stop->add_stop(std::string(value->get_string()));
    return;
  }
  if (!value->is_array()) {
    fields.Fail("stop",
                fmt::format("must be a string or an array of strings, got {}", KindName(*value)));
    return;
  }
  for (const json::value& item : value->get_array()) {
    if (!item.is_string()) {
      fields.Fail("stop", "must be a string or an array of strings");
      return;
    }
    stop->add_stop(std::string(item.get_string()));
  }
}

// Stop conditions shared by both endpoints, except max_tokens.
void ReadStopConditions(FieldReader& fields, v1::StopConditions* stop) {
  ReadStopStrings(fields, stop);
  if (const json::array* ids = fields.Array("stop_token_ids")) {
    for (const json::value& id : *ids) {
      const std::optional<uint32_t> token = AsTokenId(id);
      if (!token) {
        fields.Fail("stop_token_ids", "must be an array of token ids");
        return;
      }
      stop->add_stop_token_ids(*token);
    }
  }
  if (auto value = fields.Integer("min_tokens", 0, std::numeric_limits<uint32_t>::max()))
    stop->set_min_tokens(static_cast<uint32_t>(*value));
  if (auto value = fields.Bool("ignore_eos")) stop->set_ignore_eos(*value);
  if (auto value = fields.Bool("include_stop_str_in_output")) stop->set_include_stop_string(*value);
}

constexpr int64_t kMaxTokensLimit = std::numeric_limits<uint32_t>::max();

void ReadResponseOptions(FieldReader& fields, ResponseOptions* response) {
  response->stream = fields.Bool("stream").value_or(false);
  // Accepted without stream too (R1.2: Groq's 400 on it broke clients); it then has no effect.
  if (const json::object* options = fields.Object("stream_options")) {
    FieldReader nested = fields.Nested(*options, "stream_options");
    response->include_usage = nested.Bool("include_usage").value_or(false);
    nested.Accept("continuous_usage_stats");
  }
  response->include_usage = response->include_usage && response->stream;
}

void ReadChoiceCount(FieldReader& fields, std::string_view key) {
  if (auto n = fields.Integer(key, std::numeric_limits<int64_t>::min(),
                              std::numeric_limits<int64_t>::max());
      n && *n != 1) {
    fields.Fail(key, "only 1 is supported");
  }
}

std::optional<v1::Priority> ReadPriority(FieldReader& fields) {
  auto priority = fields.String("priority");
  if (!priority) return std::nullopt;
  if (*priority == "interactive") return v1::PRIORITY_INTERACTIVE;
  if (*priority == "batch") return v1::PRIORITY_BATCH;
  fields.Fail("priority", fmt::format("'{}' is not \"interactive\" or \"batch\"", *priority));
  return std::nullopt;
}

// A message's content: a string, or an array of {"type":"text","text":...} parts, joined
// with newlines (as vLLM does for text-only models).
void ReadContent(FieldReader& message, v1::ChatMessage* out) {
  const json::value* content = message.Find("content");
  if (content == nullptr) return;
  if (content->is_string()) {
    out->set_content(std::string(content->get_string()));
    return;
  }
  if (!content->is_array()) {
    message.Fail("content",
                 fmt::format("must be a string or an array of parts, got {}", KindName(*content)));
    return;
  }
  std::string text;
  const json::array& parts = content->get_array();
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string key = fmt::format("content[{}]", i);
    if (!parts[i].is_object()) {
      message.Fail(key, fmt::format("must be an object, got {}", KindName(parts[i])));
      return;
    }
    ParseState part_state;
    FieldReader part(parts[i].get_object(), message.Param(key) + ".", part_state);
    const auto type = part.String("type");
    if (type && *type != "text") {
      message.Fail(key + ".type",
                   fmt::format("'{}' is not supported; only \"text\" parts are", *type));
      return;
    }
    const auto part_text = part.String("text");
    if (part_state.error || !type || !part_text) {
      message.Fail(key, "must be {\"type\": \"text\", \"text\": <string>}");
      return;
    }
    if (i > 0) text += '\n';
    text += *part_text;
  }
  out->set_content(std::move(text));
}

void ReadToolCalls(FieldReader& message, v1::ChatMessage* out) {
  const json::array* calls = message.Array("tool_calls");
  if (calls == nullptr) return;
  for (size_t i = 0; i < calls->size(); ++i) {
    const std::string key = fmt::format("tool_calls[{}]", i);
    if (!(*calls)[i].is_object()) {
      message.Fail(key, "must be an object");
      return;
    }
    FieldReader call = message.Nested((*calls)[i].get_object(), key);
    v1::ToolCall* tool_call = out->add_tool_calls();
    tool_call->set_id(call.String("id").value_or(""));
    tool_call->set_type(call.String("type").value_or("function"));
    const json::object* function = call.Object("function");
    if (function == nullptr) {
      if (!call.failed()) call.Fail("function", "is required");
      return;
    }
    FieldReader function_fields = call.Nested(*function, "function");
    tool_call->set_function_name(function_fields.String("name").value_or(""));
    // A JSON string per the API; an object is taken as its serialization.
    if (const json::value* arguments = function_fields.Find("arguments")) {
      tool_call->set_arguments_json(arguments->is_string() ? std::string(arguments->get_string())
                                                           : json::serialize(*arguments));
    }
  }
}

void ReadMessages(FieldReader& fields, v1::ChatRequest* request) {
  const json::array* messages = fields.Array("messages");
  if (fields.failed()) return;
  if (messages == nullptr || messages->empty()) {
    fields.Fail("messages", "at least one message is required");
    return;
  }
  for (size_t i = 0; i < messages->size() && !fields.failed(); ++i) {
    const std::string key = fmt::format("messages[{}]", i);
    if (!(*messages)[i].is_object()) {
      fields.Fail(key, fmt::format("must be an object, got {}", KindName((*messages)[i])));
      return;
    }
    FieldReader message = fields.Nested((*messages)[i].get_object(), key);
    v1::ChatMessage* out = request->add_messages();
    if (auto role = message.String("role")) {
      // "developer" is OpenAI's newer name for system instructions (its reasoning models and
      // newer SDKs send it); chat templates know only "system".
      out->set_role(*role == "developer" ? "system" : *role);
    } else if (!message.failed()) {
      message.Fail("role", "is required");
    }
    ReadContent(message, out);
    if (auto name = message.String("name")) out->set_name(*name);
    if (auto id = message.String("tool_call_id")) out->set_tool_call_id(*id);
    ReadToolCalls(message, out);
  }
}

void ReadTools(FieldReader& fields, v1::ChatRequest* request) {
  const json::array* tools = fields.Array("tools");
  if (tools == nullptr) return;
  for (size_t i = 0; i < tools->size(); ++i) {
    const std::string key = fmt::format("tools[{}]", i);
    if (!(*tools)[i].is_object()) {
      fields.Fail(key, "must be an object");
      return;
    }
    FieldReader tool = fields.Nested((*tools)[i].get_object(), key);
    const std::string type = tool.String("type").value_or("function");
    if (type != "function") {
      tool.Fail("type", fmt::format("'{}' is not supported; only \"function\" tools are", type));
      return;
    }
    const json::object* function = tool.Object("function");
    if (function == nullptr) {
      if (!tool.failed()) tool.Fail("function", "is required");
      return;
    }
    FieldReader function_fields = tool.Nested(*function, "function");
    v1::Tool* out = request->add_tools();
    out->set_type("function");
    if (auto name = function_fields.String("name")) {
      out->mutable_function()->set_name(*name);
    } else if (!function_fields.failed()) {
      function_fields.Fail("name", "is required");
    }
    out->mutable_function()->set_description(function_fields.String("description").value_or(""));
    if (const json::object* parameters = function_fields.Object("parameters"))
      out->mutable_function()->set_parameters_json(json::serialize(*parameters));
    function_fields.Accept("strict");
  }
}

// tool_choice: "auto" (the default) and "none" (the tools are not offered) can be honoured;
// forcing a call needs constrained decoding, which the box does not have yet.
void ReadToolChoice(FieldReader& fields, v1::ChatRequest* request) {
  const json::value* choice = fields.Find("tool_choice");
  if (choice == nullptr) return;
  if (choice->is_string() && choice->get_string() == "auto") return;
  if (choice->is_string() && choice->get_string() == "none") {
    request->clear_tools();
    return;
  }
  fields.Fail("tool_choice", "only \"auto\" and \"none\" are supported");
}

void ReadResponseFormat(FieldReader& fields) {
  const json::object* format = fields.Object("response_format");
  if (format == nullptr) return;
  const json::value* type = format->if_contains("type");
  if (type != nullptr && type->is_string() && type->get_string() == "text") return;
  if (type != nullptr && type->is_string() &&
      (type->get_string() == "json_object" || type->get_string() == "json_schema")) {
    fields.Fail("response_format", fmt::format("type \"{}\" is not supported yet; only \"text\" is",
                                               std::string_view(type->get_string())));
    return;
  }
  fields.Fail("response_format", "type must be \"text\"");
}

// False when `ids` holds something other than token ids.
bool ReadTokenIds(const json::array& ids, v1::GenerateRequest* out) {
  v1::TokenIds* token_ids = out->mutable_token_ids();
  for (const json::value& id : ids) {
    const std::optional<uint32_t> token = AsTokenId(id);
    if (!token) return false;
    token_ids->add_ids(*token);
  }
  return true;
}

// prompt: a string, an array of token ids, or an array holding one of those (the batch form
// with a single prompt).
void ReadPrompt(FieldReader& fields, v1::GenerateRequest* out) {
  const json::value* prompt = fields.Find("prompt");
  if (prompt == nullptr) {
    if (!fields.failed()) fields.Fail("prompt", "is required");
    return;
  }
  if (prompt->is_string()) {
    out->set_text(std::string(prompt->get_string()));
    return;
  }
  constexpr std::string_view kind_problem =
      "must be a string or an array of token ids in [0, 2^32)";
  if (!prompt->is_array() || prompt->get_array().empty()) {
    fields.Fail("prompt", kind_problem);
    return;
  }
  const json::array& items = prompt->get_array();
  if (items[0].is_string() || items[0].is_array()) {
    if (items.size() > 1) {
      fields.Fail("prompt", "only one prompt per request is supported");
      return;
    }
    if (items[0].is_string()) {
      out->set_text(std::string(items[0].get_string()));
      return;
    }
    if (!ReadTokenIds(items[0].get_array(), out)) fields.Fail("prompt", kind_problem);
    return;
  }
  if (!ReadTokenIds(items, out)) fields.Fail("prompt", kind_problem);
}

}  // namespace

std::optional<ApiError> ParseChatCompletionRequest(std::string_view body,
                                                   ChatCompletionRequest* out) {
  ParseState state;
  const std::optional<json::object> object = ParseObject(body, state);
  if (!object) return state.error;
  {
    FieldReader fields(*object, "", state);
    v1::ChatRequest& request = out->request;
    if (auto model = fields.String("model")) {
      request.set_model(*model);
    } else if (!fields.failed()) {
      fields.Fail("model", "is required");
    }
    ReadMessages(fields, &request);
    ReadTools(fields, &request);
    ReadToolChoice(fields, &request);
    fields.Accept("parallel_tool_calls");
    ReadSampling(fields, request.mutable_sampling());
    ReadStopConditions(fields, request.mutable_stop());
    // max_completion_tokens replaced max_tokens in the OpenAI API; it wins when both come.
    const auto max_tokens = fields.Integer("max_tokens", 1, kMaxTokensLimit);
    const auto max_completion_tokens = fields.Integer("max_completion_tokens", 1, kMaxTokensLimit);
    if (auto limit = max_completion_tokens ? max_completion_tokens : max_tokens)
      request.mutable_stop()->set_max_tokens(static_cast<uint32_t>(*limit));
    const bool logprobs = fields.Bool("logprobs").value_or(false);
    const auto top_logprobs = fields.Integer("top_logprobs", 0, kMaxTopLogprobs);
    if (top_logprobs.value_or(0) > 0 && !logprobs)
      fields.Fail("top_logprobs", "needs \"logprobs\": true");
    request.mutable_logprobs()->set_enabled(logprobs);
    request.mutable_logprobs()->set_top_logprobs(static_cast<uint32_t>(top_logprobs.value_or(0)));
    ReadChoiceCount(fields, "n");
    ReadResponseOptions(fields, &out->response);
    ReadResponseFormat(fields);
    if (const json::object* kwargs = fields.Object("chat_template_kwargs"))
      request.set_chat_template_kwargs_json(json::serialize(*kwargs));
    if (auto add = fields.Bool("add_generation_prompt")) request.set_add_generation_prompt(*add);
    if (auto priority = ReadPriority(fields)) request.set_priority(*priority);
    fields.Accept("user");
  }
  out->ignored_fields = std::move(state.ignored_fields);
  return state.error;
}

std::optional<ApiError> ParseCompletionRequest(std::string_view body, CompletionRequest* out) {
  ParseState state;
  const std::optional<json::object> object = ParseObject(body, state);
  if (!object) return state.error;
  {
    FieldReader fields(*object, "", state);
    v1::GenerateRequest& request = out->request;
    if (auto model = fields.String("model")) {
      request.set_model(*model);
    } else if (!fields.failed()) {
      fields.Fail("model", "is required");
    }
    ReadPrompt(fields, &request);
    if (fields.Bool("echo").value_or(false)) fields.Fail("echo", "true is not supported");
    if (!fields.String("suffix").value_or("").empty()) fields.Fail("suffix", "is not supported");
    ReadSampling(fields, request.mutable_sampling());
    ReadStopConditions(fields, request.mutable_stop());
    // Absent: the legacy default of 16 tokens; null: up to the context length.
    if (!fields.Present("max_tokens")) {
      request.mutable_stop()->set_max_tokens(kDefaultCompletionMaxTokens);
    } else if (auto max_tokens = fields.Integer("max_tokens", 1, kMaxTokensLimit)) {
      request.mutable_stop()->set_max_tokens(static_cast<uint32_t>(*max_tokens));
    }
    // Legacy logprobs: the number of alternatives; 0 still returns the sampled tokens'.
    if (auto logprobs = fields.Integer("logprobs", 0, kMaxTopLogprobs)) {
      request.mutable_logprobs()->set_enabled(true);
      request.mutable_logprobs()->set_top_logprobs(static_cast<uint32_t>(*logprobs));
    }
    ReadChoiceCount(fields, "n");
    ReadChoiceCount(fields, "best_of");
    ReadResponseOptions(fields, &out->response);
    if (auto add = fields.Bool("add_special_tokens")) request.set_add_special_tokens(*add);
    if (auto priority = ReadPriority(fields)) request.set_priority(*priority);
    fields.Accept("user");
  }
  out->ignored_fields = std::move(state.ignored_fields);
  return state.error;
}

}  // namespace inferbox::daemon::openai
