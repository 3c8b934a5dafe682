#include "inferbox/engine/tokenizer/incremental_decoder.h"

namespace inferbox::engine {

Result<std::string> IncrementalDecoder::Append(std::span<const TokenId> ids) {
  std::string text;
  for (const TokenId id : ids) {
    bytes_.clear();
    if (!tokenizer_.AppendTokenBytes(id, skip_special_tokens_, bytes_)) {
      return InvalidArgumentError("token id " + std::to_string(id) + " is outside the vocabulary");
    }
    utf8_.Feed(bytes_, text);
  }
  return text;
}

std::string IncrementalDecoder::Finish() {
  std::string text;
  utf8_.Finish(text);
  return text;
}

}  // namespace inferbox::engine
