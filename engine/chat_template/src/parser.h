// Builds the AST from tokens with @huggingface/jinja's grammar and operator precedence, and
// rejects at load time what the interpreter does not implement: the message names the tag,
// filter, test or method ("unsupported filter 'xyz'").
#pragma once

#include <string_view>
#include <vector>

#include "ast.h"
#include "lexer.h"

namespace inferbox::engine::chat_template {

// Throws ParseError.
Program ParseTokens(std::vector<Token> tokens);

}  // namespace inferbox::engine::chat_template
