#include "openai_tools.h"

#include <algorithm>
#include <random>

#include <boost/json.hpp>

#include "inferbox/common/json.h"

namespace inferbox::daemon::openai {
namespace {

namespace json = boost::json;

constexpr std::string_view kHermesOpen = "<tool_call>";
constexpr std::string_view kHermesClose = "</tool_call>";
constexpr std::string_view kDeepSeekCallsOpen = "<｜tool▁calls▁begin｜>";
constexpr std::string_view kDeepSeekCallsClose = "<｜tool▁calls▁end｜>";
constexpr std::string_view kDeepSeekCallOpen = "<｜tool▁call▁begin｜>";
constexpr std::string_view kDeepSeekCallClose = "<｜tool▁call▁end｜>";
constexpr std::string_view kDeepSeekSeparator = "<｜tool▁sep｜>";
constexpr std::string_view kSpace = " \t\r\n";

std::string_view Trim(std::string_view text) {
  const size_t first = text.find_first_not_of(kSpace);
  if (first == std::string_view::npos) return {};
  return text.substr(first, text.find_last_not_of(kSpace) - first + 1);
}

// The length of the longest end of `text` that is a start of `marker` (shorter than it).
size_t PartialMarkerAtEnd(std::string_view text, std::string_view marker) {
  for (size_t length = std::min(text.size(), marker.size() - 1); length > 0; --length) {
    if (text.ends_with(marker.substr(0, length))) return length;
  }
  return 0;
}

std::string NewCallId() {
  static constexpr std::string_view kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  thread_local std::mt19937_64 random{std::random_device{}()};
  std::string id = "call_";
  for (int i = 0; i < 24; ++i) id.push_back(kAlphabet[random() % kAlphabet.size()]);
  return id;
}

std::optional<json::value> ParseJson(std::string_view text) {
  boost::system::error_code error;
  json::value value = inferbox::ParseJson(text, error);
  if (error) return std::nullopt;
  return value;
}

using ToolNames = std::vector<std::string>;

bool Offered(const ToolNames& names, std::string_view name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// {"name": "...", "<arguments_key>": {...} or "{...}"} as a call to an offered tool. Without
// arguments: a call with none, unless `arguments_required`.
std::optional<ToolCall> CallFromObject(const json::value& value,
                                       std::initializer_list<std::string_view> arguments_keys,
                                       const ToolNames& names, bool arguments_required) {
  if (!value.is_object()) return std::nullopt;
  const json::object& object = value.get_object();
  const json::value* name = object.if_contains("name");
  if (name == nullptr || !name->is_string() || !Offered(names, name->get_string())) {
    return std::nullopt;
  }
  const json::value* arguments = nullptr;
  for (std::string_view key : arguments_keys) {
    if ((arguments = object.if_contains(key)) != nullptr) break;
  }
  ToolCall call{.id = NewCallId(), .name = std::string(name->get_string())};
  if (arguments == nullptr && arguments_required) return std::nullopt;
  if (arguments == nullptr || arguments->is_null()) {
    call.arguments = "{}";
  } else if (arguments->is_object()) {
    call.arguments = json::serialize(*arguments);
  } else if (arguments->is_string()) {
    // Some models write the arguments as a JSON string already; it must hold an object.
    const auto parsed = ParseJson(arguments->get_string());
    if (!parsed || !parsed->is_object()) return std::nullopt;
    call.arguments = json::serialize(*parsed);
  } else {
    return std::nullopt;
  }
  return call;
}

// One or more <tool_call>...</tool_call> blocks (the last may be left open by the model's
// end), with text that is not a call between or after them as content.
std::optional<ToolCallExtractor::Result> ParseHermes(std::string_view text,
                                                     const ToolNames& names) {
  ToolCallExtractor::Result result;
  while (!text.empty()) {
    const size_t open = text.find(kHermesOpen);
    if (open == std::string_view::npos) {
      result.content += Trim(text);
      break;
    }
    result.content += Trim(text.substr(0, open));
    text.remove_prefix(open + kHermesOpen.size());
    const size_t close = text.find(kHermesClose);
    const auto parsed = ParseJson(Trim(text.substr(0, close)));
    if (!parsed) return std::nullopt;
    auto call = CallFromObject(*parsed, {"arguments", "parameters"}, names, false);
    if (!call) return std::nullopt;
    result.calls.push_back(std::move(*call));
    if (close == std::string_view::npos) break;
    text.remove_prefix(close + kHermesClose.size());
  }
  return result;
}

// <｜tool▁calls▁begin｜> then calls, each
// <｜tool▁call▁begin｜>HEAD<｜tool▁sep｜>BODY<｜tool▁call▁end｜>: DeepSeek-V3 writes HEAD
// "function" and BODY "NAME\n```json\nARGUMENTS\n```", V3.1 HEAD NAME and BODY ARGUMENTS.
std::optional<ToolCallExtractor::Result> ParseDeepSeek(std::string_view text,
                                                       const ToolNames& names) {
  ToolCallExtractor::Result result;
  if (!text.starts_with(kDeepSeekCallsOpen)) return std::nullopt;
  text.remove_prefix(kDeepSeekCallsOpen.size());
  for (;;) {
    text = Trim(text);
    if (text.empty()) break;
    if (text.starts_with(kDeepSeekCallsClose)) {
      result.content += Trim(text.substr(kDeepSeekCallsClose.size()));
      break;
    }
    if (!text.starts_with(kDeepSeekCallOpen)) return std::nullopt;
    text.remove_prefix(kDeepSeekCallOpen.size());
    const size_t close = text.find(kDeepSeekCallClose);
    std::string_view call = text.substr(0, close);
    text = close == std::string_view::npos ? std::string_view()
                                           : text.substr(close + kDeepSeekCallClose.size());
    const size_t separator = call.find(kDeepSeekSeparator);
    if (separator == std::string_view::npos) return std::nullopt;
    std::string_view head = Trim(call.substr(0, separator));
    std::string_view body = call.substr(separator + kDeepSeekSeparator.size());
    std::string_view name = head;
    // V3's "function" head is followed by the name on a line of its own; V3.1's body is the
    // arguments (a tool named "function" in V3.1 starts its body with '{').
    if (head == "function" && !Trim(body).starts_with("{")) {
      const size_t newline = body.find('\n');
      if (newline == std::string_view::npos) return std::nullopt;
      name = Trim(body.substr(0, newline));
      body = Trim(body.substr(newline + 1));
      if (body.starts_with("```")) {
        const size_t fence_end = body.find('\n');
        body = fence_end == std::string_view::npos ? std::string_view() : body.substr(fence_end);
      }
      if (const size_t fence = body.rfind("```"); fence != std::string_view::npos) {
        body = body.substr(0, fence);
      }
    }
    const auto arguments = ParseJson(Trim(body));
    if (!Offered(names, name) || !arguments || !arguments->is_object()) return std::nullopt;
    result.calls.push_back(
        {.id = NewCallId(), .name = std::string(name), .arguments = json::serialize(*arguments)});
  }
  if (result.calls.empty()) return std::nullopt;
  return result;
}

// The whole answer as one call object, or several separated by ';'.
std::optional<ToolCallExtractor::Result> ParseJsonCalls(std::string_view text,
                                                        const ToolNames& names) {
  std::vector<json::value> objects;
  if (auto whole = ParseJson(Trim(text))) {
    objects.push_back(std::move(*whole));
  } else {
    for (size_t start = 0; start <= text.size();) {
      const size_t end = std::min(text.find(';', start), text.size());
      const std::string_view part = Trim(text.substr(start, end - start));
      start = end + 1;
      if (part.empty()) continue;
      auto parsed = ParseJson(part);
      if (!parsed) return std::nullopt;
      objects.push_back(std::move(*parsed));
    }
  }
  ToolCallExtractor::Result result;
  for (const json::value& object : objects) {
    // A JSON answer that merely has a "name" is not a call: the arguments must be there.
    auto call = CallFromObject(object, {"parameters", "arguments"}, names, true);
    if (!call) return std::nullopt;
    result.calls.push_back(std::move(*call));
  }
  if (result.calls.empty()) return std::nullopt;
  return result;
}

}  // namespace

std::optional<ToolCallExtractor> ToolCallExtractor::For(std::string_view format,
                                                        std::vector<std::string> tool_names) {
  if (format == "hermes") return ToolCallExtractor(Format::kHermes, std::move(tool_names));
  if (format == "deepseek") return ToolCallExtractor(Format::kDeepSeek, std::move(tool_names));
  if (format == "json") return ToolCallExtractor(Format::kJson, std::move(tool_names));
  return std::nullopt;
}

std::string ToolCallExtractor::Push(std::string_view text) {
  if (opened_) {
    held_ += text;
    return "";
  }
  held_ += text;
  if (format_ == Format::kJson) {
    if (decided_) return std::exchange(held_, std::string());
    const size_t first = held_.find_first_not_of(kSpace);
    if (first == std::string::npos) return "";  // Only space so far: undecided.
    decided_ = true;
    opened_ = held_[first] == '{';
    return opened_ ? "" : std::exchange(held_, std::string());
  }
  const std::string_view marker = format_ == Format::kHermes ? kHermesOpen : kDeepSeekCallsOpen;
  if (const size_t at = held_.find(marker); at != std::string::npos) {
    opened_ = true;
    std::string answer = held_.substr(0, at);
    held_.erase(0, at);
    return answer;
  }
  // What could be the start of the marker waits for the next text.
  const size_t keep = PartialMarkerAtEnd(held_, marker);
  std::string answer = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return answer;
}

ToolCallExtractor::Result ToolCallExtractor::Finish() {
  std::string held = std::exchange(held_, std::string());
  if (!opened_) return {.content = std::move(held)};
  std::optional<Result> parsed;
  switch (format_) {
    case Format::kHermes: parsed = ParseHermes(held, tool_names_); break;
    case Format::kDeepSeek: parsed = ParseDeepSeek(held, tool_names_); break;
    case Format::kJson: parsed = ParseJsonCalls(held, tool_names_); break;
  }
  if (!parsed) return {.content = std::move(held)};
  return std::move(*parsed);
}

}  // namespace inferbox::daemon::openai
