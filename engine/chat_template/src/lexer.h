// Splits a template into tokens the way @huggingface/jinja's tokenize() does, after the same
// preprocessing (trim_blocks and lstrip_blocks on, as its Template sets them; the final
// newline dropped; {% generation %} tags removed).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace inferbox::engine::chat_template {

enum class TokenType {
  kText,
  kNumericLiteral,
  kStringLiteral,
  kIdentifier,
  kEquals,
  kOpenParen,
  kCloseParen,
  kOpenStatement,
  kCloseStatement,
  kOpenExpression,
  kCloseExpression,
  kOpenSquareBracket,
  kCloseSquareBracket,
  kOpenCurlyBracket,
  kCloseCurlyBracket,
  kComma,
  kDot,
  kColon,
  kPipe,
  kAdditiveOperator,
  kMultiplicativeOperator,
  kExponentiationOperator,
  kComparisonOperator,
  kUnaryOperator,
  kComment,
};

struct Token {
  TokenType type;
  std::string value;
  int line;  // 1-based, in the template as given (before preprocessing)
};

// Throws ParseError on malformed input.
std::vector<Token> Tokenize(std::string_view source);

// A load-time error: the message names the construct; `line` is 1-based.
struct ParseError {
  int line;
  std::string message;
};

}  // namespace inferbox::engine::chat_template
