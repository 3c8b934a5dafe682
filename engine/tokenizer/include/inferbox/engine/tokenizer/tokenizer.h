// Hugging Face tokenizers (tokenizer.json + tokenizer_config.json) for the byte-level BPE
// models the box serves: Qwen2/3, DeepSeek-V2/V3/R1, Llama 3.x. Encoding and decoding
// give the ids and text of Hugging Face's JavaScript implementation (@lenml/tokenizers,
// transformers.js), the reference tests/unit/engine/tokenizer compares against.
//
// A loaded Tokenizer is immutable apart from an internal word cache; every method may be
// called from any thread.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "inferbox/common/status.h"

namespace inferbox::engine {

using TokenId = int32_t;

class Tokenizer {
 public:
  // Reads <dir>/tokenizer.json and, when present, <dir>/tokenizer_config.json.
  static Result<std::unique_ptr<Tokenizer>> LoadFromDirectory(const std::filesystem::path& dir);
  // From the files' contents; `tokenizer_config_json` may be empty. Unsupported model types
  // or components are INVALID_ARGUMENT naming the component.
  static Result<std::unique_ptr<Tokenizer>> LoadFromJson(std::string_view tokenizer_json,
                                                         std::string_view tokenizer_config_json);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Text to ids. Added tokens (special or not) written in the text are recognised as such.
  // `add_special_tokens` adds what the post-processor and tokenizer_config.json ask for
  // (e.g. BOS).
  std::vector<TokenId> Encode(std::string_view text, bool add_special_tokens) const;

  // Ids to text. Invalid UTF-8 (a character cut between tokens) becomes U+FFFD. No
  // "clean-up of tokenization spaces": the text is exactly what the tokens spell.
  // INVALID_ARGUMENT for an id outside the vocabulary.
  Result<std::string> Decode(std::span<const TokenId> ids, bool skip_special_tokens) const;

  // Appends the bytes `id` contributes to decoded text (nothing for a skipped special
  // token). False for an id outside the vocabulary.
  bool AppendTokenBytes(TokenId id, bool skip_special_tokens, std::string& out) const;

  // Number of ids, including added tokens (largest id + 1).
  size_t vocab_size() const;
  std::optional<TokenId> TokenToId(std::string_view token) const;
  bool IsSpecial(TokenId id) const;
  std::optional<TokenId> bos_token_id() const;
  std::optional<TokenId> eos_token_id() const;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace inferbox::engine
