// The tokenizer on a small hand-made byte-level BPE, where every expected id can be worked
// out by hand; tokenizer_reference_test.cc holds it to the reference on real models.
#include "inferbox/engine/tokenizer/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <boost/json.hpp>

#include "inferbox/engine/tokenizer/incremental_decoder.h"
#include "inferbox/engine/tokenizer/utf8.h"

namespace inferbox::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// GPT-2's byte-to-unicode alphabet, written independently of the implementation.
std::string ByteLevelChar(int byte) {
  static const std::vector<std::string> alphabet = [] {
    std::vector<std::string> result(256);
    int shifted = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      std::string utf8;
      AppendUtf8(static_cast<char32_t>(printable ? b : 256 + shifted++), utf8);
      result[static_cast<size_t>(b)] = utf8;
    }
    return result;
  }();
  return alphabet[static_cast<size_t>(byte)];
}

std::string Spell(std::string_view bytes) {
  std::string out;
  for (const char c : bytes) out += ByteLevelChar(static_cast<unsigned char>(c));
  return out;
}

// Vocabulary: the 256 bytes (id = byte), then "he" 256, "ll" 257, "hell" 258, "hello" 259,
// " w" 260; the added special token "<|end|>" 300 and the plain added token "[X]" 301.
boost::json::object TinyTokenizer() {
  boost::json::object vocab;
  for (int b = 0; b < 256; ++b) vocab[Spell(std::string(1, static_cast<char>(b)))] = b;
  vocab[Spell("he")] = 256;
  vocab[Spell("ll")] = 257;
  vocab[Spell("hell")] = 258;
  vocab[Spell("hello")] = 259;
  vocab[Spell(" w")] = 260;
  boost::json::array merges;
  for (const auto& [left, right] : std::vector<std::pair<std::string, std::string>>{
           {"l", "l"}, {"h", "e"}, {"he", "ll"}, {"hell", "o"}, {" ", "w"}}) {
    merges.push_back(boost::json::value(Spell(left) + " " + Spell(right)));
  }
  boost::json::object root;
  root["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}};
  root["normalizer"] = nullptr;
  root["pre_tokenizer"] = boost::json::parse(R"({"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": " ?\\p{L}+|\\s+|[^\\s\\p{L}]+"}, "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]})");
  root["post_processor"] = boost::json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<|end|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]})");
  root["decoder"] = boost::json::parse(R"({"type": "ByteLevel"})");
  root["added_tokens"] = boost::json::parse(R"([
      {"id": 300, "content": "<|end|>", "special": true, "lstrip": false, "rstrip": false},
      {"id": 301, "content": "[X]", "special": false, "lstrip": true, "rstrip": true}])");
  return root;
}

std::unique_ptr<Tokenizer> Load(const boost::json::object& root, std::string_view config = "") {
  auto tokenizer = Tokenizer::LoadFromJson(boost::json::serialize(root), config);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status().ToString();
  return tokenizer.ok() ? std::move(tokenizer).value() : nullptr;
}

TEST(Tokenizer, MergesByRankIntoWholeWords) {
  auto tokenizer = Load(TinyTokenizer());
  ASSERT_TRUE(tokenizer);
  // "hello" merges l+l (rank 0), h+e (1), he+ll (2), hell+o (3); " world" gives " w" then
  // single bytes (no merge for "or", "rl", "ld").
  EXPECT_THAT(tokenizer->Encode("hello world", false), ElementsAre(259, 260, 'o', 'r', 'l', 'd'));
  EXPECT_THAT(tokenizer->Encode("hell", false), ElementsAre(258));
  EXPECT_THAT(tokenizer->Encode("lll", false), ElementsAre(257, 'l')) << "leftmost pair first";
}

TEST(Tokenizer, AddedTokensAreMatchedInTextAndStripAsConfigured) {
  auto tokenizer = Load(TinyTokenizer());
  ASSERT_TRUE(tokenizer);
  EXPECT_THAT(tokenizer->Encode("hello<|end|>he", false), ElementsAre(259, 300, 256));
  // "[X]" has lstrip and rstrip: the spaces around it vanish.
  EXPECT_THAT(tokenizer->Encode("he  [X]  he", false), ElementsAre(256, 301, 256));
  // A partial added token is ordinary text.
  EXPECT_THAT(tokenizer->Encode("<|end", false), ElementsAre('<', '|', 'e', 'n', 'd'));
}

TEST(Tokenizer, SpecialTokensFromThePostProcessor) {
  auto tokenizer = Load(TinyTokenizer());
  ASSERT_TRUE(tokenizer);
  EXPECT_THAT(tokenizer->Encode("he", true), ElementsAre(300, 256));
  EXPECT_THAT(tokenizer->Encode("", true), ElementsAre(300));
  EXPECT_TRUE(tokenizer->Encode("", false).empty());
}

TEST(Tokenizer, ConfigAddBosWhenThePostProcessorAddsNothing) {
  auto root = TinyTokenizer();
  root["post_processor"] = boost::json::parse(R"({"type": "ByteLevel"})");
  auto tokenizer =
      Load(root, R"({"add_bos_token": true, "bos_token": "<|end|>", "eos_token": "[X]"})");
  ASSERT_TRUE(tokenizer);
  EXPECT_THAT(tokenizer->Encode("he", true), ElementsAre(300, 256));
  EXPECT_EQ(tokenizer->bos_token_id(), 300);
  EXPECT_EQ(tokenizer->eos_token_id(), 301);
}

TEST(Tokenizer, DecodeSpellsBytesAndSkipsSpecialTokensOnRequest) {
  auto tokenizer = Load(TinyTokenizer());
  ASSERT_TRUE(tokenizer);
  const std::vector<TokenId> ids = {300, 259, 260, 'o', 301};
  EXPECT_EQ(*tokenizer->Decode(ids, false), "<|end|>hello wo[X]");
  EXPECT_EQ(*tokenizer->Decode(ids, true), "hello wo[X]") << "[X] is added but not special";
  const std::vector<TokenId> unknown = {259, 4000};
  auto result = tokenizer->Decode(unknown, false);
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.status().message(), HasSubstr("4000"));
}

TEST(Tokenizer, RoundTripsTextWithMultibyteCharacters) {
  auto tokenizer = Load(TinyTokenizer());
  ASSERT_TRUE(tokenizer);
  for (const std::string text : {"hello 中文 😀!", "\n\t hello  \r\n", "ünïcödé"}) {
    EXPECT_EQ(*tokenizer->Decode(tokenizer->Encode(text, false), false), text);
  }
}

// Prompt text is not always valid UTF-8 (a template that slices a string, a client's bytes);
// the split regex must never see it raw (PCRE2 without its UTF check crashed on this text).
TEST(Tokenizer, InvalidUtf8IsEncodedAsItsReplacementCharacters) {
  auto tokenizer = Load(TinyTokenizer());
  ASSERT_TRUE(tokenizer);
  std::string text =
      "h\xC8"
      "47 \xF0\x9F w\xFF";
  for (int i = 0; i < 64; ++i)
    text +=
        "\xC8"
        "4 he\xE4\xB8";
  const auto ids = tokenizer->Encode(text, false);
  EXPECT_EQ(ids, tokenizer->Encode(DecodeUtf8Lossy(text), false));
  EXPECT_EQ(*tokenizer->Decode(ids, false), DecodeUtf8Lossy(text));
}

TEST(IncrementalDecoder, NeverEmitsHalfACharacterAndMatchesDecode) {
  auto tokenizer = Load(TinyTokenizer());
  ASSERT_TRUE(tokenizer);
  // "😀" is four byte tokens here: the first three must produce nothing.
  const auto ids = tokenizer->Encode("he😀llo中", false);
  IncrementalDecoder decoder(*tokenizer, false);
  std::string streamed;
  std::vector<std::string> deltas;
  for (const TokenId id : ids) {
    auto delta = decoder.Append(std::span<const TokenId>(&id, 1));
    ASSERT_TRUE(delta.ok());
    EXPECT_EQ(DecodeUtf8Lossy(*delta), *delta) << "delta is not whole UTF-8";
    deltas.push_back(*delta);
    streamed += *delta;
  }
  streamed += decoder.Finish();
  EXPECT_EQ(streamed, *tokenizer->Decode(ids, false));
  EXPECT_EQ(deltas[1], "") << "first byte of the emoji alone";
  EXPECT_EQ(deltas[4], "😀");
}

TEST(IncrementalDecoder, CutCharacterAtTheEndBecomesReplacement) {
  auto tokenizer = Load(TinyTokenizer());
  ASSERT_TRUE(tokenizer);
  const std::vector<TokenId> ids = {'h', 0xE4, 0xB8};  // "h" and two of the three bytes of 中.
  IncrementalDecoder decoder(*tokenizer, false);
  EXPECT_EQ(*decoder.Append(ids), "h");
  EXPECT_EQ(decoder.Finish(), "\xEF\xBF\xBD");
  EXPECT_EQ(*tokenizer->Decode(ids, false), "h\xEF\xBF\xBD");
}

TEST(TokenizerLoad, UnsupportedComponentsAreNamed) {
  auto root = TinyTokenizer();
  root["model"].as_object()["type"] = "WordPiece";
  auto result = Tokenizer::LoadFromJson(boost::json::serialize(root), "");
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.status().message(), HasSubstr("model type \"WordPiece\" is not supported"));

  root = TinyTokenizer();
  root["pre_tokenizer"] = boost::json::parse(R"({"type": "Metaspace"})");
  result = Tokenizer::LoadFromJson(boost::json::serialize(root), "");
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.status().message(), HasSubstr("pre_tokenizer type \"Metaspace\""));

  root = TinyTokenizer();
  root["normalizer"] = boost::json::parse(R"({"type": "Lowercase"})");
  result = Tokenizer::LoadFromJson(boost::json::serialize(root), "");
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.status().message(), HasSubstr("normalizer type \"Lowercase\""));
}

TEST(TokenizerLoad, MalformedFilesAreErrorsNotCrashes) {
  for (const std::string_view text :
       {"", "[]", "{", "{\"model\": 3}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": [5]}}"}) {
    EXPECT_FALSE(Tokenizer::LoadFromJson(text, "").ok()) << text;
  }
  auto root = TinyTokenizer();
  root["pre_tokenizer"] = boost::json::parse(
      R"({"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"})");
  auto result = Tokenizer::LoadFromJson(boost::json::serialize(root), "");
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.status().message(), HasSubstr("does not compile"));
  // A pre_tokenizer that is not an object (Boost.JSON threw from as_object(), and nothing
  // caught it: the engine ended at load), at the top and inside a Sequence.
  for (const std::string_view pre_tokenizer :
       {"[]", "7", R"({"type": "Sequence", "pretokenizers": [1]})"}) {
    root = TinyTokenizer();
    root["pre_tokenizer"] = boost::json::parse(pre_tokenizer);
    result = Tokenizer::LoadFromJson(boost::json::serialize(root), "");
    ASSERT_FALSE(result.ok()) << pre_tokenizer;
    EXPECT_THAT(result.status().message(), HasSubstr("a pre_tokenizer must be an object"));
  }
}

}  // namespace
}  // namespace inferbox::engine
