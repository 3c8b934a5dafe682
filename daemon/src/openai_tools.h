// Reads a chat model's tool calls out of its output for the OpenAI API's tool_calls, chunk by
// chunk, in the format its chat template asks for (the engine names it: ToolCallFormatOf).
// From a call's opening markup on, the output is held back from the answer text; at the end
// it becomes the calls, or, when it does not parse as calls (cut off by max_tokens,
// malformed), answer text again: nothing the model wrote is lost.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace inferbox::daemon::openai {

struct ToolCall {
  std::string id;  // "call_" and 24 random letters and digits.
  std::string name;
  std::string arguments;  // A JSON object, as text (the OpenAI API carries it as a string).
};

class ToolCallExtractor {
 public:
  enum class Format {
    kHermes,  // <tool_call>{"name": ..., "arguments": {...}}</tool_call>, one or more.
    kDeepSeek,  // <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>...<｜tool▁call▁end｜>...
    kJson,  // The whole answer one {"name": ..., "parameters": {...}} object (or several,
            // separated by ';').
  };

  // Null for a format this does not read ("" included). `tool_names`: the tools the request
  // offered; a call to any other is not a call (it stays answer text).
  static std::optional<ToolCallExtractor> For(std::string_view format,
                                              std::vector<std::string> tool_names);

  // The part of `text` (answer text, reasoning already split off) that is answer for sure.
  std::string Push(std::string_view text);

  struct Result {
    std::string content;  // Held-back text that is answer after all.
    std::vector<ToolCall> calls;
  };
  // At the end of the output.
  Result Finish();

 private:
  ToolCallExtractor(Format format, std::vector<std::string> tool_names)
      : format_(format), tool_names_(std::move(tool_names)) {}

  Format format_;
  std::vector<std::string> tool_names_;
  bool opened_ = false;   // A call's opening markup was seen: everything since is held.
  bool decided_ = false;  // kJson: the answer's first non-space character was seen.
  std::string held_;
};

}  // namespace inferbox::daemon::openai
