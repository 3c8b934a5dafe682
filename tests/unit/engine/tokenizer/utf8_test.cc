#include "inferbox/engine/tokenizer/utf8.h"

#include <gtest/gtest.h>

namespace inferbox::engine {
namespace {

const std::string kReplacement = "\xEF\xBF\xBD";

TEST(Utf8, ValidTextPassesThrough) {
  const std::string text = "a é 中 😀";
  EXPECT_EQ(DecodeUtf8Lossy(text), text);
}

TEST(Utf8, InvalidSubpartsBecomeOneReplacementEach) {
  // As TextDecoder / Python errors="replace": a truncated sequence is one U+FFFD, a stray
  // continuation byte is one, an overlong lead is one per byte.
  EXPECT_EQ(DecodeUtf8Lossy("\xE4\xB8"), kReplacement);
  EXPECT_EQ(DecodeUtf8Lossy("a\xE4\xB8"
                            "b"),
            "a" + kReplacement + "b");
  EXPECT_EQ(DecodeUtf8Lossy("\x80"), kReplacement);
  EXPECT_EQ(DecodeUtf8Lossy("\xC0\xAF"), kReplacement + kReplacement);
  EXPECT_EQ(DecodeUtf8Lossy("\xED\xA0\x80"), kReplacement + kReplacement + kReplacement)
      << "surrogates are invalid in UTF-8";
  EXPECT_EQ(DecodeUtf8Lossy("\xF0\x9F\x98"), kReplacement);
}

TEST(Utf8, FeedingInPiecesEqualsFeedingAtOnce) {
  const std::string bytes = "x\xF0\x9F\x98\x80y\xE4\xB8\xAD\xE4\xB8z\x80\xC3\xA9";
  const std::string whole = DecodeUtf8Lossy(bytes);
  for (size_t cut = 0; cut <= bytes.size(); ++cut) {
    Utf8Decoder decoder;
    std::string out;
    decoder.Feed(std::string_view(bytes).substr(0, cut), out);
    decoder.Feed(std::string_view(bytes).substr(cut), out);
    decoder.Finish(out);
    EXPECT_EQ(out, whole) << "cut at byte " << cut;
  }
}

TEST(Utf8, HoldsBackAnIncompleteCharacter) {
  Utf8Decoder decoder;
  std::string out;
  decoder.Feed("a\xF0\x9F", out);
  EXPECT_EQ(out, "a");
  EXPECT_FALSE(decoder.at_boundary());
  decoder.Feed("\x98\x80", out);
  EXPECT_EQ(out, "a\xF0\x9F\x98\x80");
  EXPECT_TRUE(decoder.at_boundary());
}

}  // namespace
}  // namespace inferbox::engine
