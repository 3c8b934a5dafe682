// Chat templates from untrusted model folders (R6.12: a sandbox, no code execution) rendered
// with messages from untrusted clients (R6.13). The input is the template source, then
// (after a NUL byte) the render's variables as a JSON object; without them, a conversation
// with a system prompt, tools, a tool call and its result. Parse and Render must give a
// result or an error, never crash, hang or exhaust memory (libFuzzer's -timeout and
// -rss_limit_mb in scripts/fuzz.sh).
#include <cstddef>
#include <cstdint>

#include <boost/json.hpp>

#include "fuzz_input.h"
#include "inferbox/common/json.h"
#include "inferbox/engine/chat_template/chat_format.h"
#include "inferbox/engine/chat_template/chat_template.h"

namespace {

const boost::json::object& DefaultVariables() {
  static const boost::json::object variables = boost::json::parse(R"({
    "messages": [
      {"role": "system", "content": "You are terse."},
      {"role": "user", "content": "Weather in Paris?"},
      {"role": "assistant", "content": "", "reasoning_content": "Use the tool.",
       "tool_calls": [{"id": "call_1", "type": "function",
                       "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
      {"role": "tool", "tool_call_id": "call_1", "content": "{\"c\": 21}"},
      {"role": "user", "content": "Thanks"}],
    "tools": [{"type": "function", "function": {"name": "weather", "description": "Now",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                              "required": ["city"]}}}],
    "add_generation_prompt": true, "enable_thinking": false,
    "bos_token": "<s>", "eos_token": "</s>"})")
                                                   .as_object();
  return variables;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace inferbox;
  const auto parts = fuzz::SplitParts(fuzz::AsText(data, size), 2);
  (void)engine::ToolCallFormatOf(parts[0]);
  auto parsed = engine::ChatTemplate::Parse(parts[0]);
  if (!parsed.ok()) {
    fuzz::Reached(parsed.status().message());
    return 0;
  }
  fuzz::Reached("parsed");
  boost::system::error_code error;
  const boost::json::value variables = ParseJson(parts[1], error);  // As the engine parses.
  if (!error && variables.is_object()) {
    auto rendered = parsed->Render(variables.as_object());
    fuzz::Reached(rendered.ok() ? "rendered (given variables)" : rendered.status().message());
  } else {
    auto rendered = parsed->Render(DefaultVariables());
    fuzz::Reached(rendered.ok() ? "rendered" : rendered.status().message());
  }
  return 0;
}
