// Text operations with the semantics of JavaScript's String and Number, which the reference
// renderer (@huggingface/jinja) uses. Strings are UTF-8; where JavaScript counts UTF-16 code
// units or code points, these functions say which.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace inferbox::engine::chat_template {

// Decodes UTF-8 into code points; an invalid byte decodes as U+FFFD.
std::vector<char32_t> DecodeUtf8(std::string_view text);
// Decodes the code point at `pos` and advances `pos` past it.
char32_t DecodeUtf8At(std::string_view text, size_t& pos);
void AppendUtf8(char32_t code_point, std::string& out);

// Number of UTF-16 code units, as JavaScript's String.length.
size_t Utf16Length(std::string_view text);

// JavaScript's WhiteSpace and LineTerminator set (String.trim, regular-expression \s).
bool IsJsWhitespace(char32_t code_point);
std::string_view TrimStart(std::string_view text);
std::string_view TrimEnd(std::string_view text);
std::string_view Trim(std::string_view text);

// String.prototype.toUpperCase/toLowerCase: Unicode's simple mappings plus the common
// one-to-many ones (ß -> SS) and final sigma.
std::string ToUpper(std::string_view text);
std::string ToLower(std::string_view text);
// charAt(0).toUpperCase() + slice(1).
std::string CapitalizeFirst(std::string_view text);
// /\b\w/g upper-cased, as @huggingface/jinja's title().
std::string TitleCase(std::string_view text);

// Number.prototype.toString() and Number.prototype.toFixed(1) for whole numbers.
std::string JsNumberToString(double value);
std::string JsToFixed1(double value);

// JSON.stringify of a string; with ensure_ascii, every UTF-16 unit from U+007F up is \uXXXX.
void AppendJsonQuoted(std::string_view text, bool ensure_ascii, std::string& out);

// parseInt(text, 10) and parseFloat(text); false where JavaScript gives NaN.
bool JsParseInt(std::string_view text, double& value);
bool JsParseFloat(std::string_view text, double& value);

}  // namespace inferbox::engine::chat_template
