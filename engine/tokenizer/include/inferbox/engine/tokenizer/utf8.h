// UTF-8 decoding with replacement, exactly as the WHATWG Encoding Standard (TextDecoder,
// Python's errors="replace") does it: each maximal invalid subpart becomes one U+FFFD.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace inferbox::engine {

// Incremental decoder state; feeding bytes in pieces gives the same text as feeding them
// at once.
class Utf8Decoder {
 public:
  // Appends the decoded text of `bytes` to `out`, holding back an incomplete sequence at
  // the end.
  void Feed(std::string_view bytes, std::string& out);
  // Ends the input: an incomplete sequence held back becomes U+FFFD.
  void Finish(std::string& out);
  // True when no incomplete sequence is held back.
  bool at_boundary() const { return bytes_needed_ == 0; }

 private:
  void Reset();

  unsigned code_point_ = 0;
  int bytes_needed_ = 0;
  int bytes_seen_ = 0;
  unsigned char lower_ = 0x80;
  unsigned char upper_ = 0xBF;
};

// Decodes a whole byte string with replacement.
std::string DecodeUtf8Lossy(std::string_view bytes);

// Appends the UTF-8 encoding of `code_point` to `out`.
void AppendUtf8(char32_t code_point, std::string& out);

}  // namespace inferbox::engine
