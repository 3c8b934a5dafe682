#include "js_text.h"

#include <charconv>
#include <cmath>
#include <cstdlib>

#include <locale.h>
#include <wctype.h>

namespace inferbox::engine::chat_template {
namespace {

// Decodes one code point at `pos`, advancing it.
char32_t DecodeOne(std::string_view text, size_t& pos) {
  const auto byte = static_cast<unsigned char>(text[pos]);
  size_t length = 1;
  char32_t code_point = byte;
  if (byte >= 0xF0 && byte < 0xF8) {
    length = 4;
    code_point = byte & 0x07;
  } else if (byte >= 0xE0) {
    length = 3;
    code_point = byte & 0x0F;
  } else if (byte >= 0xC0) {
    length = 2;
    code_point = byte & 0x1F;
  } else if (byte >= 0x80) {
    ++pos;
    return 0xFFFD;
  }
  if (length > 1 && byte >= 0xF8) {
    ++pos;
    return 0xFFFD;
  }
  if (pos + length > text.size()) {
    ++pos;
    return 0xFFFD;
  }
  for (size_t i = 1; i < length; ++i) {
    const auto next = static_cast<unsigned char>(text[pos + i]);
    if ((next & 0xC0) != 0x80) {
      ++pos;
      return 0xFFFD;
    }
    code_point = (code_point << 6) | (next & 0x3F);
  }
  pos += length;
  return code_point;
}

}  // namespace

char32_t DecodeUtf8At(std::string_view text, size_t& pos) {
  return DecodeOne(text, pos);
}

std::vector<char32_t> DecodeUtf8(std::string_view text) {
  std::vector<char32_t> code_points;
  code_points.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) code_points.push_back(DecodeOne(text, pos));
  return code_points;
}

void AppendUtf8(char32_t code_point, std::string& out) {
  if (code_point < 0x80) {
    out.push_back(static_cast<char>(code_point));
  } else if (code_point < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (code_point >> 6)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else if (code_point < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (code_point >> 12)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (code_point >> 18)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  }
}

size_t Utf16Length(std::string_view text) {
  size_t length = 0;
  for (size_t pos = 0; pos < text.size();) length += DecodeOne(text, pos) >= 0x10000 ? 2 : 1;
  return length;
}

bool IsJsWhitespace(char32_t c) {
  return c == 0x09 || c == 0x0A || c == 0x0B || c == 0x0C || c == 0x0D || c == 0x20 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000 || c == 0xFEFF;
}

std::string_view TrimStart(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t next = pos;
    if (!IsJsWhitespace(DecodeOne(text, next))) break;
    pos = next;
  }
  return text.substr(pos);
}

std::string_view TrimEnd(std::string_view text) {
  size_t end = text.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
    size_t pos = start;
    if (!IsJsWhitespace(DecodeOne(text, pos)) || pos != end) break;
    end = start;
  }
  return text.substr(0, end);
}

std::string_view Trim(std::string_view text) {
  return TrimEnd(TrimStart(text));
}

namespace {

// glibc's C.UTF-8 carries Unicode's simple case mappings; a locale object (not the global
// locale) keeps this thread-safe.
locale_t Utf8Locale() {
  static const locale_t locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", locale_t{});
  return locale;
}

char32_t SimpleCase(char32_t c, bool upper) {
  if (c < 0x80) {
    if (upper && c >= 'a' && c <= 'z') return c - 'a' + 'A';
    if (!upper && c >= 'A' && c <= 'Z') return c - 'A' + 'a';
    return c;
  }
  const locale_t locale = Utf8Locale();
  if (locale == locale_t{}) return c;
  const auto wide = static_cast<wint_t>(c);
  return static_cast<char32_t>(upper ? towupper_l(wide, locale) : towlower_l(wide, locale));
}

bool IsLetter(char32_t c) {
  const locale_t locale = Utf8Locale();
  if (c < 0x80 || locale == locale_t{}) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  }
  return iswalpha_l(static_cast<wint_t>(c), locale) != 0;
}

// Unconditional one-to-many upper-case mappings of Unicode's SpecialCasing.txt.
const char* FullUpper(char32_t c) {
  switch (c) {
    case 0x00DF: return "SS";
    case 0x0149: return "\u02BCN";
    case 0xFB00: return "FF";
    case 0xFB01: return "FI";
    case 0xFB02: return "FL";
    case 0xFB03: return "FFI";
    case 0xFB04: return "FFL";
    case 0xFB05:
    case 0xFB06: return "ST";
    default: return nullptr;
  }
}

}  // namespace

std::string ToUpper(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : DecodeUtf8(text)) {
    if (const char* full = FullUpper(c)) {
      out += full;
    } else {
      AppendUtf8(SimpleCase(c, true), out);
    }
  }
  return out;
}

std::string ToLower(std::string_view text) {
  const std::vector<char32_t> code_points = DecodeUtf8(text);
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < code_points.size(); ++i) {
    const char32_t c = code_points[i];
    if (c == 0x0130) {
      out += "i\u0307";
    } else if (c == 0x03A3 && i > 0 && IsLetter(code_points[i - 1]) &&
               (i + 1 == code_points.size() || !IsLetter(code_points[i + 1]))) {
      AppendUtf8(0x03C2, out);  // final sigma
    } else {
      AppendUtf8(SimpleCase(c, false), out);
    }
  }
  return out;
}

std::string CapitalizeFirst(std::string_view text) {
  if (text.empty()) return "";
  size_t pos = 0;
  const char32_t first = DecodeOne(text, pos);
  if (first >= 0x10000) return std::string(text);  // charAt(0) is half a surrogate pair
  return ToUpper(text.substr(0, pos)) + std::string(text.substr(pos));
}

std::string TitleCase(std::string_view text) {
  auto is_word = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  };
  std::string out(text);
  for (size_t i = 0; i < out.size(); ++i) {
    if (is_word(out[i]) && (i == 0 || !is_word(out[i - 1])) && out[i] >= 'a' && out[i] <= 'z') {
      out[i] = static_cast<char>(out[i] - 'a' + 'A');
    }
  }
  return out;
}

std::string JsNumberToString(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
  if (value == 0) return "0";
  std::string out = value < 0 ? "-" : "";
  char buffer[64];
  // Shortest round-trip digits, as ECMAScript's Number::toString requires.
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), std::fabs(value),
                                    std::chars_format::scientific);
  const std::string_view scientific(buffer, result.ptr - buffer);
  const size_t e_pos = scientific.find('e');
  std::string digits;
  for (char c : scientific.substr(0, e_pos)) {
    if (c != '.') digits.push_back(c);
  }
  const int exponent = std::atoi(std::string(scientific.substr(e_pos + 1)).c_str());
  const int k = static_cast<int>(digits.size());
  const int n = exponent + 1;
  if (k <= n && n <= 21) {
    out += digits + std::string(n - k, '0');
  } else if (0 < n && n <= 21) {
    out += digits.substr(0, n) + "." + digits.substr(n);
  } else if (-6 < n && n <= 0) {
    out += "0." + std::string(-n, '0') + digits;
  } else {
    out += digits.substr(0, 1);
    if (k > 1) out += "." + digits.substr(1);
    out += (n - 1 >= 0 ? "e+" : "e-") + std::to_string(std::abs(n - 1));
  }
  return out;
}

std::string JsToFixed1(double value) {
  if (!std::isfinite(value) || std::fabs(value) >= 1e21) return JsNumberToString(value);
  char buffer[64];
  const auto result =
      std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::fixed, 1);
  return std::string(buffer, result.ptr - buffer);
}

void AppendJsonQuoted(std::string_view text, bool ensure_ascii, std::string& out) {
  static constexpr char kHex[] = "0123456789abcdef";
  auto append_unit = [&](uint32_t unit) {
    out += "\\u";
    for (int shift = 12; shift >= 0; shift -= 4) out.push_back(kHex[(unit >> shift) & 0xF]);
  };
  out.push_back('"');
  for (size_t pos = 0; pos < text.size();) {
    const size_t start = pos;
    const char32_t c = DecodeOne(text, pos);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          append_unit(c);
        } else if (ensure_ascii && c >= 0x7F) {
          if (c >= 0x10000) {
            append_unit(0xD800 + ((c - 0x10000) >> 10));
            append_unit(0xDC00 + ((c - 0x10000) & 0x3FF));
          } else {
            append_unit(c);
          }
        } else if (c == 0xFFFD) {
          AppendUtf8(c, out);
        } else {
          out.append(text.substr(start, pos - start));
        }
    }
  }
  out.push_back('"');
}

bool JsParseInt(std::string_view text, double& value) {
  text = TrimStart(text);
  size_t pos = 0;
  bool negative = false;
  if (pos < text.size() && (text[pos] == '+' || text[pos] == '-')) negative = text[pos++] == '-';
  const size_t digits_start = pos;
  double number = 0;
  while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
    number = number * 10 + (text[pos++] - '0');
  }
  if (pos == digits_start) return false;
  value = negative ? -number : number;
  return true;
}

bool JsParseFloat(std::string_view text, double& value) {
  text = TrimStart(text);
  size_t pos = 0;
  if (pos < text.size() && (text[pos] == '+' || text[pos] == '-')) ++pos;
  if (text.substr(pos).starts_with("Infinity")) {
    value = text[0] == '-' ? -INFINITY : INFINITY;
    return true;
  }
  auto skip_digits = [&] {
    const size_t start = pos;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') ++pos;
    return pos - start;
  };
  size_t num_digits = skip_digits();
  if (pos < text.size() && text[pos] == '.') {
    ++pos;
    num_digits += skip_digits();
  }
  if (num_digits == 0) return false;
  if (pos < text.size() && (text[pos] == 'e' || text[pos] == 'E')) {
    size_t exponent_pos = pos + 1;
    if (exponent_pos < text.size() && (text[exponent_pos] == '+' || text[exponent_pos] == '-')) {
      ++exponent_pos;
    }
    if (exponent_pos < text.size() && text[exponent_pos] >= '0' && text[exponent_pos] <= '9') {
      pos = exponent_pos;
      skip_digits();
    }
  }
  value = std::strtod(std::string(text.substr(0, pos)).c_str(), nullptr);
  return true;
}

}  // namespace inferbox::engine::chat_template
