// A tokenizer from untrusted files (R6.12) and text from untrusted clients (R6.13). The input
// is tokenizer.json, tokenizer_config.json and a text, separated by NUL bytes. A tokenizer
// that loads must encode the text to ids inside its vocabulary, decode them again, and stream
// them through an IncrementalDecoder whose deltas are exactly the whole decode.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_input.h"
#include "inferbox/engine/tokenizer/incremental_decoder.h"
#include "inferbox/engine/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace inferbox;
  const auto parts = fuzz::SplitParts(fuzz::AsText(data, size), 3);
  auto loaded = engine::Tokenizer::LoadFromJson(parts[0], parts[1]);
  if (!loaded.ok()) return 0;
  fuzz::Reached("loaded");
  const engine::Tokenizer& tokenizer = **loaded;
  const size_t vocab_size = tokenizer.vocab_size();
  for (const bool add_special_tokens : {false, true}) {
    const std::vector<engine::TokenId> ids = tokenizer.Encode(parts[2], add_special_tokens);
    for (const engine::TokenId id : ids) {
      if (id < 0 || static_cast<size_t>(id) >= vocab_size)
        fuzz::Fail("Encode gave an id outside the vocabulary");
    }
    for (const bool skip_special_tokens : {false, true}) {
      auto text = tokenizer.Decode(ids, skip_special_tokens);
      if (!text.ok()) fuzz::Fail("Decode refused ids that Encode gave");
      engine::IncrementalDecoder decoder(tokenizer, skip_special_tokens);
      std::string streamed;
      for (const engine::TokenId id : ids) {
        auto delta = decoder.Append({&id, 1});
        if (!delta.ok()) fuzz::Fail("IncrementalDecoder refused ids that Encode gave");
        streamed += *delta;
      }
      streamed += decoder.Finish();
      if (streamed != *text) fuzz::Fail("the streamed deltas differ from Decode");
    }
  }
  // Ids a client may send (prompt token ids): out of range is an error, never a crash.
  const std::vector<engine::TokenId> any_ids = {-1, 0, static_cast<engine::TokenId>(vocab_size),
                                                static_cast<engine::TokenId>(vocab_size) - 1};
  (void)tokenizer.Decode(any_ids, false);
  std::string bytes;
  for (const engine::TokenId id : any_ids) (void)tokenizer.AppendTokenBytes(id, true, bytes);
  return 0;
}
