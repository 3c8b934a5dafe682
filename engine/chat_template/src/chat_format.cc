#include "inferbox/engine/chat_template/chat_format.h"
#include "inferbox/common/json.h"

#include <fmt/format.h>
#include <boost/json.hpp>

#include "inferbox/common/atomic_file.h"

namespace inferbox::engine {
namespace {

namespace json = boost::json;

std::string TokenText(const Tokenizer& tokenizer, std::optional<TokenId> id) {
  if (!id) return "";
  auto text = tokenizer.Decode(std::span(&*id, 1), false);
  return text.ok() ? *text : "";
}

}  // namespace

Result<ChatFormat> ChatFormat::LoadFromDirectory(const std::filesystem::path& dir,
                                                 const Tokenizer& tokenizer) {
  const std::filesystem::path path = dir / "tokenizer_config.json";
  auto text = ReadFile(path);
  if (!text.ok()) return text.status();
  boost::system::error_code error;
  const json::value config = inferbox::ParseJson(*text, error);
  if (auto problem = JsonObjectProblem(config, error); !problem.empty())
    return InvalidArgumentError(fmt::format("{}: {}", path.string(), problem));
  const json::value* source = config.as_object().if_contains("chat_template");
  if (source == nullptr)
    return NotFoundError(fmt::format("{} has no chat_template", path.string()));
  if (!source->is_string()) {
    // Named templates (a list of {name, template}) are not served yet.
    return InvalidArgumentError(
        fmt::format("{}: chat_template is not a single template string", path.string()));
  }
  auto parsed = ChatTemplate::Parse(std::string_view(source->as_string()));
  if (!parsed.ok()) return parsed.status();
  return ChatFormat{std::move(parsed).value(), TokenText(tokenizer, tokenizer.bos_token_id()),
                    TokenText(tokenizer, tokenizer.eos_token_id()),
                    ToolCallFormatOf(std::string_view(source->as_string()))};
}

std::string ToolCallFormatOf(std::string_view template_source) {
  if (template_source.find("<tool_call>") != std::string_view::npos) {
    // Qwen3-Coder's <tool_call><function=NAME><parameter=...> is another form: not read.
    return template_source.find("<function=") != std::string_view::npos ? "" : "hermes";
  }
  if (template_source.find("<｜tool▁call▁begin｜>") != std::string_view::npos) return "deepseek";
  // Meta's templates: 'Respond in the format {"name": function name, "parameters": ...}'.
  if (template_source.find("\"parameters\": dictionary of argument name") !=
      std::string_view::npos) {
    return "json";
  }
  return "";
}

Result<std::string> ChatFormat::Render(json::object variables) const {
  if (!variables.contains("bos_token")) variables["bos_token"] = bos_token;
  if (!variables.contains("eos_token")) variables["eos_token"] = eos_token;
  return chat_template.Render(variables);
}

}  // namespace inferbox::engine
