#include "regex_split.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace inferbox::engine {
namespace {

// JavaScript's \s: WhiteSpace and LineTerminator of ECMA-262, as class-body ranges.
constexpr std::string_view kJsWhitespace =
    "\\t-\\r \\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}"
    "\\x{3000}\\x{FEFF}";

// Rewrites the reference applies before compiling (transformers.js, tokenizers.js).
constexpr std::pair<std::string_view, std::string_view> kReferenceRewrites[] = {
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)", "(?:'([sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD]))"},
};

struct CodeDeleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};

}  // namespace

struct RegexSplitter::Compiled {
  std::unique_ptr<pcre2_code, CodeDeleter> code;
};

Result<std::string> TranslateJsPattern(std::string_view pattern) {
  std::string rewritten(pattern);
  for (const auto& [from, to] : kReferenceRewrites) {
    for (size_t at = rewritten.find(from); at != std::string::npos;
         at = rewritten.find(from, at + to.size())) {
      rewritten.replace(at, from.size(), to);
    }
  }

  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < rewritten.size(); ++i) {
    const char c = rewritten[i];
    if (c == '\\' && i + 1 < rewritten.size()) {
      const char next = rewritten[i + 1];
      ++i;
      if (next == 's') {
        out += in_class ? std::string(kJsWhitespace) : "[" + std::string(kJsWhitespace) + "]";
      } else if (next == 'S') {
        if (in_class) {
          return InvalidArgumentError(
              "pattern uses \\S inside a character class, which is not supported");
        }
        out += "[^" + std::string(kJsWhitespace) + "]";
      } else {
        out += c;
        out += next;
      }
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal in both dialects.
      if (i + 1 < rewritten.size() && rewritten[i + 1] == '^') out += rewritten[++i];
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

Result<std::unique_ptr<RegexSplitter>> RegexSplitter::Compile(std::string_view pattern) {
  auto translated = TranslateJsPattern(pattern);
  if (!translated.ok()) return translated.status();
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated->data()), translated->size(),
                    PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    return InvalidArgumentError("Split pattern does not compile at offset " +
                                std::to_string(error_offset) + ": " +
                                reinterpret_cast<const char*>(message));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // Falls back to the interpreter if JIT is absent.
  auto compiled = std::make_unique<Compiled>();
  compiled->code.reset(code);
  return std::unique_ptr<RegexSplitter>(new RegexSplitter(std::move(compiled)));
}

RegexSplitter::RegexSplitter(std::unique_ptr<Compiled> compiled) : compiled_(std::move(compiled)) {}
RegexSplitter::~RegexSplitter() = default;

void RegexSplitter::Split(std::string_view text, std::vector<std::string_view>& pieces) const {
  // Match data per call: the compiled pattern is shared between threads, match data is not.
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> match(
      pcre2_match_data_create_from_pattern(compiled_->code.get(), nullptr));
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t previous_end = 0;
  size_t offset = 0;
  while (offset <= text.size()) {
    const int result = pcre2_match(compiled_->code.get(), subject, text.size(), offset,
                                   PCRE2_NO_UTF_CHECK, match.get(), nullptr);
    if (result < 0) break;  // PCRE2_ERROR_NOMATCH (or a resource limit: keep the rest whole).
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match.get());
    const size_t start = ovector[0];
    const size_t end = ovector[1];
    if (start > previous_end) pieces.push_back(text.substr(previous_end, start - previous_end));
    if (end > start) {
      pieces.push_back(text.substr(start, end - start));
      previous_end = end;
      offset = end;
    } else {
      // An empty match: step over one whole character, as JS matchAll does with `u`.
      previous_end = start;
      offset = start + 1;
      while (offset < text.size() && (static_cast<unsigned char>(text[offset]) & 0xC0) == 0x80) {
        ++offset;
      }
    }
  }
  if (previous_end < text.size()) pieces.push_back(text.substr(previous_end));
}

}  // namespace inferbox::engine
