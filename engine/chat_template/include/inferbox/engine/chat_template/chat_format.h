// A model folder's chat template, ready to render requests: tokenizer_config.json's
// chat_template with the bos/eos token texts templates refer to.
#pragma once

#include <filesystem>
#include <string>

#include <boost/json/object.hpp>

#include "inferbox/common/status.h"
#include "inferbox/engine/chat_template/chat_template.h"
#include "inferbox/engine/tokenizer/tokenizer.h"

namespace inferbox::engine {

// The chat template of a model folder (tokenizer_config.json's chat_template) with the
// bos/eos token texts templates refer to (the texts of the tokenizer's bos/eos ids).
struct ChatFormat {
  ChatTemplate chat_template;
  std::string bos_token;
  std::string eos_token;
  // How the template tells the model to call tools (ToolCallFormatOf): "hermes", "deepseek",
  // "json", or empty when it does not say.
  std::string tool_call_format;

  // NOT_FOUND when the folder's tokenizer_config.json has no chat template (a base model);
  // INVALID_ARGUMENT when it cannot be read or parsed.
  static Result<ChatFormat> LoadFromDirectory(const std::filesystem::path& dir,
                                              const Tokenizer& tokenizer);

  // Renders with the template's usual variables plus `variables` (messages, tools,
  // add_generation_prompt, extra kwargs).
  Result<std::string> Render(boost::json::object variables) const;
};

// The tool-call format a chat template's source asks of the model, by the markers it writes:
//   "hermes":   <tool_call>{"name": ..., "arguments": {...}}</tool_call> (Qwen2.5, Qwen3);
//   "deepseek": <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>...<｜tool▁call▁end｜>...
//               (DeepSeek-V3 and V3.1);
//   "json":     a bare {"name": ..., "parameters": {...}} object (Llama 3.1 to 3.3);
// empty otherwise (the output is then never read as tool calls).
std::string ToolCallFormatOf(std::string_view template_source);

}  // namespace inferbox::engine
