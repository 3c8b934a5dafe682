// The `Split` pre-tokenizer's regular expressions, run with PCRE2 so that they match as
// the reference (JavaScript `RegExp` with the `u` flag) matches.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "inferbox/common/status.h"

namespace inferbox::engine {

class RegexSplitter {
 public:
  // Compiles a tokenizer.json Split pattern. JavaScript and PCRE2 differ in what `\s`
  // means (JS adds U+FEFF, PCRE2 adds U+0085) and JS lacks `(?i:...)`, which the
  // reference rewrites; the pattern is translated so both match the same strings.
  static Result<std::unique_ptr<RegexSplitter>> Compile(std::string_view pattern);
  ~RegexSplitter();

  // "Isolated" behaviour: every match and every gap between matches becomes a piece, in
  // order; empty pieces are dropped. `text` must be valid UTF-8 (Tokenizer::Encode makes it
  // so): the match skips PCRE2's check, a pass over the text per match. Thread-safe.
  void Split(std::string_view text, std::vector<std::string_view>& pieces) const;

  struct Compiled;

 private:
  explicit RegexSplitter(std::unique_ptr<Compiled> compiled);
  std::unique_ptr<Compiled> compiled_;
};

// The translation Compile applies (exposed for tests).
Result<std::string> TranslateJsPattern(std::string_view pattern);

}  // namespace inferbox::engine
