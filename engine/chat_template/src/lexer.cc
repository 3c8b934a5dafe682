#include "lexer.h"

#include <utility>

#include "js_text.h"

namespace inferbox::engine::chat_template {
namespace {

// Preprocessed text with the original line of every byte.
struct LinedText {
  std::string text;
  std::vector<int> lines;

  void Append(char c, int line) {
    text.push_back(c);
    lines.push_back(line);
  }
};

bool IsAsciiSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// Byte length of the JavaScript whitespace character at `pos`, or 0.
size_t WhitespaceLength(std::string_view text, size_t pos) {
  if (pos >= text.size()) return 0;
  const auto byte = static_cast<unsigned char>(text[pos]);
  if (byte < 0x80) return IsAsciiSpace(text[pos]) ? 1 : 0;
  size_t length = byte >= 0xF0 ? 4 : byte >= 0xE0 ? 3 : 2;
  if (pos + length > text.size()) return 0;
  const auto code_points = DecodeUtf8(text.substr(pos, length));
  return code_points.size() == 1 && IsJsWhitespace(code_points[0]) ? length : 0;
}

// Byte length of the JavaScript whitespace character that ends just before `end`, or 0.
size_t WhitespaceLengthBefore(std::string_view text, size_t end) {
  if (end == 0) return 0;
  size_t start = end - 1;
  while (start > 0 && end - start < 4 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) {
    --start;
  }
  return WhitespaceLength(text, start) == end - start ? end - start : 0;
}

bool IsLineTerminatorBefore(std::string_view text, size_t pos) {
  if (pos == 0) return true;
  const char previous = text[pos - 1];
  if (previous == '\n' || previous == '\r') return true;
  return pos >= 3 && text.substr(pos - 3, 2) == "\xE2\x80" &&
         (text[pos - 1] == '\xA8' || text[pos - 1] == '\xA9');
}

LinedText Preprocess(std::string_view source) {
  LinedText input;
  int line = 1;
  for (char c : source) {
    input.Append(c, line);
    if (c == '\n') ++line;
  }
  if (!input.text.empty() && input.text.back() == '\n') {
    input.text.pop_back();
    input.lines.pop_back();
  }

  // lstrip_blocks: /^[ \t]*({[#%-])/gm -> "$1".
  LinedText stripped;
  const std::string& a = input.text;
  for (size_t i = 0; i < a.size(); ++i) {
    if (IsLineTerminatorBefore(a, i)) {
      size_t j = i;
      while (j < a.size() && (a[j] == ' ' || a[j] == '\t')) ++j;
      if (j + 1 < a.size() && a[j] == '{' &&
          (a[j + 1] == '#' || a[j + 1] == '%' || a[j + 1] == '-')) {
        i = j;
      }
    }
    stripped.Append(a[i], input.lines[i]);
  }

  // trim_blocks: /([#%-]})\n/g -> "$1".
  LinedText trimmed;
  const std::string& b = stripped.text;
  for (size_t i = 0; i < b.size();) {
    if (i + 2 < b.size() && (b[i] == '#' || b[i] == '%' || b[i] == '-') && b[i + 1] == '}' &&
        b[i + 2] == '\n') {
      trimmed.Append(b[i], stripped.lines[i]);
      trimmed.Append(b[i + 1], stripped.lines[i + 1]);
      i += 3;
      continue;
    }
    trimmed.Append(b[i], stripped.lines[i]);
    ++i;
  }

  // /(\s*){%(-?)\s*(?:end)?generation\s*(-?)%}(\s*)/gs -> kept surrounding whitespace.
  LinedText out;
  const std::string& c = trimmed.text;
  size_t last_match_end = 0;
  for (size_t i = 0; i < c.size();) {
    if (c.compare(i, 2, "{%") == 0) {
      size_t j = i + 2;
      const bool strip_before = j < c.size() && c[j] == '-';
      if (strip_before) ++j;
      while (size_t length = WhitespaceLength(c, j)) j += length;
      if (c.compare(j, 3, "end") == 0) j += 3;
      if (c.compare(j, 10, "generation") == 0) {
        j += 10;
        while (size_t length = WhitespaceLength(c, j)) j += length;
        const bool strip_after = j < c.size() && c[j] == '-';
        if (strip_after) ++j;
        if (c.compare(j, 2, "%}") == 0) {
          j += 2;
          if (strip_before) {
            size_t keep = out.text.size();
            while (keep > last_match_end) {
              const size_t length = WhitespaceLengthBefore(out.text, keep);
              if (length == 0 || keep - length < last_match_end) break;
              keep -= length;
            }
            out.text.resize(keep);
            out.lines.resize(keep);
          }
          while (size_t length = WhitespaceLength(c, j)) {
            for (size_t k = 0; k < length && !strip_after; ++k)
              out.Append(c[j + k], trimmed.lines[j + k]);
            j += length;
          }
          i = j;
          last_match_end = out.text.size();
          continue;
        }
      }
    }
    out.Append(c[i], trimmed.lines[i]);
    ++i;
  }
  return out;
}

constexpr std::pair<std::string_view, TokenType> kOrderedMappingTable[] = {
    {"{%", TokenType::kOpenStatement},
    {"%}", TokenType::kCloseStatement},
    {"{{", TokenType::kOpenExpression},
    {"}}", TokenType::kCloseExpression},
    {"(", TokenType::kOpenParen},
    {")", TokenType::kCloseParen},
    {"{", TokenType::kOpenCurlyBracket},
    {"}", TokenType::kCloseCurlyBracket},
    {"[", TokenType::kOpenSquareBracket},
    {"]", TokenType::kCloseSquareBracket},
    {",", TokenType::kComma},
    {".", TokenType::kDot},
    {":", TokenType::kColon},
    {"|", TokenType::kPipe},
    {"<=", TokenType::kComparisonOperator},
    {">=", TokenType::kComparisonOperator},
    {"==", TokenType::kComparisonOperator},
    {"!=", TokenType::kComparisonOperator},
    {"<", TokenType::kComparisonOperator},
    {">", TokenType::kComparisonOperator},
    {"+", TokenType::kAdditiveOperator},
    {"-", TokenType::kAdditiveOperator},
    {"~", TokenType::kAdditiveOperator},
    {"**", TokenType::kExponentiationOperator},
    {"*", TokenType::kMultiplicativeOperator},
    {"//", TokenType::kMultiplicativeOperator},
    {"/", TokenType::kMultiplicativeOperator},
    {"%", TokenType::kMultiplicativeOperator},
    {"=", TokenType::kEquals},
};

bool IsDigit(char c) {
  return c >= '0' && c <= '9';
}
bool IsWordChar(char c) {
  return IsDigit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

class Lexer {
 public:
  explicit Lexer(LinedText source) : source_(std::move(source)), src_(source_.text) {}

  std::vector<Token> Run() {
    while (pos_ < src_.size()) Step();
    return std::move(tokens_);
  }

 private:
  int LineAt(size_t pos) const {
    if (source_.lines.empty()) return 1;
    return source_.lines[std::min(pos, source_.lines.size() - 1)];
  }
  [[noreturn]] void Fail(const std::string& message) const {
    throw ParseError{LineAt(pos_), message};
  }
  char At(size_t pos) const { return pos < src_.size() ? src_[pos] : '\0'; }
  bool LastIs(TokenType type) const { return !tokens_.empty() && tokens_.back().type == type; }
  void Push(TokenType type, std::string value, size_t start) {
    tokens_.push_back(Token{type, std::move(value), LineAt(start)});
  }

  void AppendHexEscape(char kind, std::string& out) {
    const size_t length = kind == 'x' ? 2 : 4;
    if (pos_ + length > src_.size()) Fail("invalid hexadecimal escape sequence");
    uint32_t unit = 0;
    for (size_t i = 0; i < length; ++i) {
      const char h = src_[pos_ + i];
      const int digit = IsDigit(h)               ? h - '0'
                        : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                        : (h >= 'A' && h <= 'F') ? h - 'A' + 10
                                                 : -1;
      if (digit < 0) Fail("invalid hexadecimal escape sequence");
      unit = unit * 16 + static_cast<uint32_t>(digit);
    }
    pos_ += length;
    if (unit >= 0xDC00 && unit < 0xE000 && pending_high_surrogate_ != 0) {
      AppendUtf8(0x10000 + ((pending_high_surrogate_ - 0xD800) << 10) + (unit - 0xDC00), out);
      pending_high_surrogate_ = 0;
      return;
    }
    pending_high_surrogate_ = 0;
    if (unit >= 0xD800 && unit < 0xDC00) {
      pending_high_surrogate_ = unit;
      return;
    }
    AppendUtf8(unit, out);
  }

  template <typename Predicate>
  std::string ConsumeWhile(Predicate predicate) {
    std::string out;
    while (pos_ < src_.size() && predicate(src_[pos_])) {
      if (src_[pos_] == '\\') {
        ++pos_;
        if (pos_ >= src_.size()) Fail("unexpected end of input");
        const char escaped = src_[pos_++];
        if (escaped == 'x' || escaped == 'u') {
          AppendHexEscape(escaped, out);
          continue;
        }
        pending_high_surrogate_ = 0;
        switch (escaped) {
          case 'n': out.push_back('\n'); break;
          case 't': out.push_back('\t'); break;
          case 'r': out.push_back('\r'); break;
          case 'b': out.push_back('\b'); break;
          case 'f': out.push_back('\f'); break;
          case 'v': out.push_back('\v'); break;
          case '\'': out.push_back('\''); break;
          case '"': out.push_back('"'); break;
          case '\\': out.push_back('\\'); break;
          default: Fail(std::string("unexpected escaped character '") + escaped + "'");
        }
        continue;
      }
      pending_high_surrogate_ = 0;
      out.push_back(src_[pos_++]);
      if (pos_ >= src_.size()) Fail("unexpected end of input");
    }
    return out;
  }

  void StripTrailingWhitespace() {
    if (LastIs(TokenType::kText)) {
      tokens_.back().value = std::string(TrimEnd(tokens_.back().value));
      if (tokens_.back().value.empty()) tokens_.pop_back();
    }
  }

  void SkipLeadingWhitespace() {
    while (size_t length = WhitespaceLength(src_, pos_)) pos_ += length;
  }

  void Step() {
    const size_t start = pos_;
    if (tokens_.empty() || LastIs(TokenType::kCloseStatement) ||
        LastIs(TokenType::kCloseExpression) || LastIs(TokenType::kComment)) {
      while (pos_ < src_.size() &&
             !(src_[pos_] == '{' &&
               (At(pos_ + 1) == '%' || At(pos_ + 1) == '{' || At(pos_ + 1) == '#'))) {
        ++pos_;
      }
      if (pos_ > start) {
        Push(TokenType::kText, src_.substr(start, pos_ - start), start);
        return;
      }
    }
    if (src_.compare(pos_, 2, "{#") == 0) {
      pos_ += 2;
      const bool strip_before = At(pos_) == '-';
      if (strip_before) ++pos_;
      std::string comment;
      while (At(pos_) != '#' || At(pos_ + 1) != '}') {
        if (pos_ + 2 >= src_.size()) Fail("missing end of comment tag");
        comment.push_back(src_[pos_++]);
      }
      const bool strip_after = !comment.empty() && comment.back() == '-';
      if (strip_after) comment.pop_back();
      if (strip_before) StripTrailingWhitespace();
      Push(TokenType::kComment, comment, start);
      pos_ += 2;
      if (strip_after) SkipLeadingWhitespace();
      return;
    }
    if (src_.compare(pos_, 3, "{%-") == 0) {
      StripTrailingWhitespace();
      Push(TokenType::kOpenStatement, "{%", start);
      pos_ += 3;
      return;
    }
    if (src_.compare(pos_, 3, "{{-") == 0) {
      StripTrailingWhitespace();
      Push(TokenType::kOpenExpression, "{{", start);
      curly_bracket_depth_ = 0;
      pos_ += 3;
      return;
    }
    SkipLeadingWhitespace();
    const size_t token_start = pos_;
    if (src_.compare(pos_, 3, "-%}") == 0) {
      Push(TokenType::kCloseStatement, "%}", token_start);
      pos_ += 3;
      SkipLeadingWhitespace();
      return;
    }
    if (src_.compare(pos_, 3, "-}}") == 0) {
      Push(TokenType::kCloseExpression, "}}", token_start);
      pos_ += 3;
      SkipLeadingWhitespace();
      return;
    }
    if (pos_ >= src_.size()) return;
    const char c = src_[pos_];
    if (c == '-' || c == '+') {
      if (tokens_.empty() || LastIs(TokenType::kText))
        Fail(std::string("unexpected character '") + c + "'");
      const TokenType last = tokens_.back().type;
      if (last != TokenType::kIdentifier && last != TokenType::kNumericLiteral &&
          last != TokenType::kStringLiteral && last != TokenType::kCloseParen &&
          last != TokenType::kCloseSquareBracket) {
        ++pos_;
        std::string number = ConsumeWhile(IsDigit);
        if (!number.empty() && At(pos_) == '.' && IsDigit(At(pos_ + 1))) {
          ++pos_;
          number += "." + ConsumeWhile(IsDigit);
        }
        if (number.empty()) {
          Push(TokenType::kUnaryOperator, std::string(1, c), token_start);
        } else {
          Push(TokenType::kNumericLiteral, std::string(1, c) + number, token_start);
        }
        return;
      }
    }
    for (const auto& [sequence, type] : kOrderedMappingTable) {
      if (sequence == "}}" && curly_bracket_depth_ > 0) continue;
      if (src_.compare(pos_, sequence.size(), sequence) == 0) {
        Push(type, std::string(sequence), token_start);
        if (type == TokenType::kOpenExpression) {
          curly_bracket_depth_ = 0;
        } else if (type == TokenType::kOpenCurlyBracket) {
          ++curly_bracket_depth_;
        } else if (type == TokenType::kCloseCurlyBracket) {
          --curly_bracket_depth_;
        }
        pos_ += sequence.size();
        return;
      }
    }
    if (c == '\'' || c == '"') {
      ++pos_;
      std::string text = ConsumeWhile([c](char d) { return d != c; });
      Push(TokenType::kStringLiteral, std::move(text), token_start);
      ++pos_;
      return;
    }
    if (IsDigit(c)) {
      std::string number = ConsumeWhile(IsDigit);
      if (!LastIs(TokenType::kDot) && At(pos_) == '.' && IsDigit(At(pos_ + 1))) {
        ++pos_;
        number += "." + ConsumeWhile(IsDigit);
      }
      Push(TokenType::kNumericLiteral, std::move(number), token_start);
      return;
    }
    if (IsWordChar(c)) {
      Push(TokenType::kIdentifier, ConsumeWhile(IsWordChar), token_start);
      return;
    }
    Fail(std::string("unexpected character '") + c + "'");
  }

  LinedText source_;
  const std::string& src_;
  size_t pos_ = 0;
  int curly_bracket_depth_ = 0;
  uint32_t pending_high_surrogate_ = 0;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> Tokenize(std::string_view source) {
  return Lexer(Preprocess(source)).Run();
}

}  // namespace inferbox::engine::chat_template
