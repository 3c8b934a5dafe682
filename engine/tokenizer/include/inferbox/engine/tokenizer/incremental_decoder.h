// Streaming detokenization: turns a growing sequence of ids into text deltas. A delta never
// ends inside a UTF-8 character (bytes of a character split across tokens wait for the rest),
// and the deltas concatenate to exactly Tokenizer::Decode of all ids. One per request;
// not thread-safe.
#pragma once

#include <span>
#include <string>

#include "inferbox/engine/tokenizer/tokenizer.h"
#include "inferbox/engine/tokenizer/utf8.h"

namespace inferbox::engine {

class IncrementalDecoder {
 public:
  // `tokenizer` must outlive the decoder.
  IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
      : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

  // Adds ids; returns the text that became final. INVALID_ARGUMENT for an id outside the
  // vocabulary, after which the decoder must not be used.
  Result<std::string> Append(std::span<const TokenId> ids);

  // Ends the sequence: returns the held-back tail (U+FFFD if it is an incomplete character).
  std::string Finish();

 private:
  const Tokenizer& tokenizer_;
  const bool skip_special_tokens_;
  Utf8Decoder utf8_;
  std::string bytes_;  // Scratch buffer, reused between calls.
};

}  // namespace inferbox::engine
