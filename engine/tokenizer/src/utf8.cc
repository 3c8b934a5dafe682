#include "inferbox/engine/tokenizer/utf8.h"

namespace inferbox::engine {

void AppendUtf8(char32_t code_point, std::string& out) {
  if (code_point < 0x80) {
    out += static_cast<char>(code_point);
  } else if (code_point < 0x800) {
    out += static_cast<char>(0xC0 | (code_point >> 6));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else if (code_point < 0x10000) {
    out += static_cast<char>(0xE0 | (code_point >> 12));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (code_point >> 18));
    out += static_cast<char>(0x80 | ((code_point >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  }
}

void Utf8Decoder::Reset() {
  code_point_ = 0;
  bytes_needed_ = 0;
  bytes_seen_ = 0;
  lower_ = 0x80;
  upper_ = 0xBF;
}

void Utf8Decoder::Feed(std::string_view bytes, std::string& out) {
  constexpr char32_t kReplacement = 0xFFFD;
  for (size_t i = 0; i < bytes.size(); ++i) {
    const auto byte = static_cast<unsigned char>(bytes[i]);
    if (bytes_needed_ == 0) {
      if (byte <= 0x7F) {
        out += static_cast<char>(byte);
      } else if (byte >= 0xC2 && byte <= 0xDF) {
        bytes_needed_ = 1;
        code_point_ = byte & 0x1F;
      } else if (byte >= 0xE0 && byte <= 0xEF) {
        if (byte == 0xE0) lower_ = 0xA0;
        if (byte == 0xED) upper_ = 0x9F;
        bytes_needed_ = 2;
        code_point_ = byte & 0x0F;
      } else if (byte >= 0xF0 && byte <= 0xF4) {
        if (byte == 0xF0) lower_ = 0x90;
        if (byte == 0xF4) upper_ = 0x8F;
        bytes_needed_ = 3;
        code_point_ = byte & 0x07;
      } else {
        AppendUtf8(kReplacement, out);
      }
      continue;
    }
    if (byte < lower_ || byte > upper_) {
      // The sequence so far is one maximal invalid subpart; this byte starts afresh.
      Reset();
      AppendUtf8(kReplacement, out);
      --i;
      continue;
    }
    lower_ = 0x80;
    upper_ = 0xBF;
    code_point_ = (code_point_ << 6) | (byte & 0x3F);
    if (++bytes_seen_ == bytes_needed_) {
      AppendUtf8(code_point_, out);
      Reset();
    }
  }
}

void Utf8Decoder::Finish(std::string& out) {
  if (bytes_needed_ != 0) {
    Reset();
    AppendUtf8(0xFFFD, out);
  }
}

std::string DecodeUtf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  Utf8Decoder decoder;
  decoder.Feed(bytes, out);
  decoder.Finish(out);
  return out;
}

}  // namespace inferbox::engine
