// Public API requests as the engine receives them (R6.13: no request parameter may reach an
// engine assert). The input is a character, 'g' (Generate) or 'c' (Chat), and the request in
// protobuf's JSON mapping. A request the RequestBuilder accepts is then sampled for a few
// steps over logits the input picks, with its stop conditions: every token must lie in the
// vocabulary, every log-probability must be a number, and the run must stop by max_tokens.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include <boost/json.hpp>

#include "fuzz_input.h"
#include "inferbox/engine/chat_template/chat_format.h"
#include "inferbox/engine/sampling/sampler.h"
#include "inferbox/engine/sampling/stop.h"
#include "inferbox/engine/server/request_builder.h"
#include "inferbox/engine/tokenizer/incremental_decoder.h"

namespace {

using namespace inferbox;

// A byte-level BPE tokenizer of the 256 bytes, "he" (256) and "ll" (257), and the special
// tokens <|im_start|> (258), <|im_end|> (259) and <|endoftext|> (260).
const engine::Tokenizer& TinyTokenizer() {
  static const std::unique_ptr<engine::Tokenizer> tokenizer = [] {
    // GPT-2's byte-to-character map, which byte-level BPE vocabularies are written in.
    std::vector<std::string> spelling(256);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      const int code = printable ? b : next++;
      std::string utf8;
      if (code < 0x80) {
        utf8 = std::string(1, static_cast<char>(code));
      } else {
        utf8 += static_cast<char>(0xC0 | (code >> 6));
        utf8 += static_cast<char>(0x80 | (code & 0x3F));
      }
      spelling[b] = utf8;
    }
    boost::json::object vocab;
    for (int b = 0; b < 256; ++b) vocab[spelling[b]] = b;
    vocab["he"] = 256;
    vocab["ll"] = 257;
    boost::json::object root;
    root["model"] = {
        {"type", "BPE"}, {"vocab", vocab}, {"merges", boost::json::array{"h e", "l l"}}};
    root["normalizer"] = nullptr;
    root["pre_tokenizer"] = {
        {"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
    root["post_processor"] = nullptr;
    root["decoder"] = {{"type", "ByteLevel"}};
    boost::json::array added;
    int id = 258;
    for (const char* content : {"<|im_start|>", "<|im_end|>", "<|endoftext|>"}) {
      added.push_back({{"id", id++},
                       {"content", content},
                       {"special", true},
                       {"lstrip", false},
                       {"rstrip", false}});
    }
    root["added_tokens"] = added;
    auto loaded = engine::Tokenizer::LoadFromJson(boost::json::serialize(root), "");
    if (!loaded.ok()) fuzz::Fail("the tiny tokenizer does not load");
    return std::move(loaded).value();
  }();
  return *tokenizer;
}

// A ChatML template with tools, as Qwen's.
constexpr char kTemplate[] = R"({%- if tools %}<|im_start|>system
{{ messages[0].content if messages[0].role == 'system' else '' }}
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}<|im_end|>
{% endif %}
{%- for message in messages %}<|im_start|>{{ message.role }}
{{ message.content }}
{%- if message.tool_calls %}{% for call in message.tool_calls %}
<tool_call>{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}</tool_call>
{%- endfor %}{% endif %}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %})";

const engine::RequestBuilder& Builder() {
  static const engine::RequestBuilder builder = [] {
    auto parsed = engine::ChatTemplate::Parse(kTemplate);
    if (!parsed.ok()) fuzz::Fail("the chat template does not parse");
    engine::ChatFormat chat{.chat_template = std::move(parsed).value(),
                            .bos_token = "",
                            .eos_token = "<|endoftext|>",
                            .tool_call_format = "hermes"};
    engine::ModelConfig model;
    model.vocab_size = static_cast<int64_t>(TinyTokenizer().vocab_size());
    model.max_position_embeddings = 512;
    engine::GenerationConfig generation;
    generation.temperature = 0.7f;
    return engine::RequestBuilder(TinyTokenizer(), std::move(chat), model, generation, {259, 260},
                                  512);
  }();
  return builder;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string json(reinterpret_cast<const char*>(data) + 1, size - 1);
  Result<engine::RequestOptions> built = InvalidArgumentError("");
  if (data[0] == 'c') {
    inferbox::v1::ChatRequest request;
    if (auto parsed = google::protobuf::util::JsonStringToMessage(json, &request); !parsed.ok()) {
      fuzz::Reached(parsed.ToString());
      return 0;
    }
    built = Builder().FromChat(request);
  } else {
    inferbox::v1::GenerateRequest request;
    if (!google::protobuf::util::JsonStringToMessage(json, &request).ok()) return 0;
    built = Builder().FromCompletion(request);
  }
  if (!built.ok()) {
    fuzz::Reached(built.status().message());
    return 0;
  }
  fuzz::Reached("built");
  const engine::RequestOptions& options = *built;
  const auto vocab_size = static_cast<int32_t>(TinyTokenizer().vocab_size());
  for (const int32_t id : options.prompt) {
    if (id < 0 || id >= vocab_size) fuzz::Fail("a prompt id outside the vocabulary");
  }
  if (options.stop.max_tokens <= 0 ||
      options.stop.max_tokens + static_cast<int64_t>(options.prompt.size()) > 512) {
    fuzz::Fail("max_tokens is not clamped to the context");
  }
  engine::Sampler sampler(options.sampling, options.prompt);
  engine::StopStringMatcher stops(options.stop_strings, options.include_stop_string);
  engine::IncrementalDecoder decoder(TinyTokenizer(), options.skip_special_tokens);
  std::vector<float> logits(static_cast<size_t>(vocab_size));
  for (int64_t step = 1;; ++step) {
    for (size_t i = 0; i < logits.size(); ++i) {
      logits[i] = static_cast<float>(data[(i + static_cast<size_t>(step)) % size]) / 16.0f - 8.0f;
    }
    const engine::TokenChoice choice = sampler.Next(logits);
    if (choice.token < 0 || choice.token >= vocab_size)
      fuzz::Fail("a sampled token outside the vocabulary");
    if (std::isnan(choice.logprob)) fuzz::Fail("a log-probability that is NaN");
    if (choice.top_logprobs.size() > static_cast<size_t>(options.sampling.num_top_logprobs))
      fuzz::Fail("more top log-probabilities than asked for");
    auto delta = decoder.Append({&choice.token, 1});
    if (!delta.ok()) fuzz::Fail("a sampled token does not decode");
    (void)stops.Feed(*delta);
    if (engine::CheckTokenStop(options.stop, choice.token, step) != engine::FinishReason::kNone ||
        stops.stopped()) {
      break;
    }
    if (step >= options.stop.max_tokens) fuzz::Fail("the generation did not stop at max_tokens");
  }
  (void)stops.Flush();
  return 0;
}
