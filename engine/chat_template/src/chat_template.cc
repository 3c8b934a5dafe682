#include "inferbox/engine/chat_template/chat_template.h"

#include <exception>
#include <string>
#include <utility>

#include "ast.h"
#include "interpreter.h"
#include "lexer.h"
#include "parser.h"

namespace inferbox::engine {

using chat_template::Interpreter;
using chat_template::ParseError;
using chat_template::Program;
using chat_template::Scope;
using chat_template::TemplateError;
using chat_template::Value;

ChatTemplate::ChatTemplate(std::shared_ptr<const Program> program) : program_(std::move(program)) {}

Result<ChatTemplate> ChatTemplate::Parse(std::string_view source) {
  try {
    auto program =
        std::make_shared<Program>(chat_template::ParseTokens(chat_template::Tokenize(source)));
    return ChatTemplate(std::move(program));
  } catch (const ParseError& error) {
    return InvalidArgumentError("chat template line " + std::to_string(error.line) + ": " +
                                error.message);
  } catch (const TemplateError& error) {
    return InvalidArgumentError("chat template: " + error.message);
  } catch (const std::exception& error) {  // std::bad_alloc: a template too large to hold.
    return InvalidArgumentError(std::string("chat template: ") + error.what());
  }
}

Result<std::string> ChatTemplate::Render(const boost::json::object& variables) const {
  try {
    Scope globals(nullptr);
    chat_template::DeclareGlobals(globals);
    for (const auto& entry : variables) {
      // The reference's Environment.set refuses to redeclare a global.
      if (globals.IsDeclaredHere(entry.key())) {
        return InvalidArgumentError("Variable already declared: " + std::string(entry.key()));
      }
      globals.Set(std::string(entry.key()), Value::FromJson(entry.value()));
    }
    Interpreter interpreter;
    return interpreter.Run(*program_, globals);
  } catch (const TemplateError& error) {
    return InvalidArgumentError(error.message);
  } catch (const std::exception& error) {
    // std::bad_alloc, std::length_error: a value the sandbox's limits let grow too large for
    // this process; the render fails, the engine goes on.
    return InvalidArgumentError(std::string("the chat template could not render: ") + error.what());
  }
}

}  // namespace inferbox::engine
