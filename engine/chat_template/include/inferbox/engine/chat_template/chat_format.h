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

  // NOT_FOUND when the folder's tokenizer_config.json has no chat template (a base model);
  // INVALID_ARGUMENT when it cannot be read or parsed.
  static Result<ChatFormat> LoadFromDirectory(const std::filesystem::path& dir,
                                              const Tokenizer& tokenizer);

  // Renders with the template's usual variables plus `variables` (messages, tools,
  // add_generation_prompt, extra kwargs).
  Result<std::string> Render(boost::json::object variables) const;
};

}  // namespace inferbox::engine
