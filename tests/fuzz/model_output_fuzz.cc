// A model's output read for the OpenAI API (R6.13: what a model writes is shaped by what
// clients send): reasoning split off ("<think>...</think>") and tool calls read out, in
// every format the daemon reads. The input is the offered tool names (one per line), then
// after a NUL byte the output. However the output is cut into chunks (here: at the bytes the
// input itself picks), the result must be that of one whole chunk; and output that is not
// calls must come back as text, byte for byte.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_input.h"
#include "openai_reasoning.h"
#include "openai_tools.h"

namespace {

using inferbox::daemon::openai::ReasoningSplitter;
using inferbox::daemon::openai::ToolCallExtractor;

// `text` cut into chunks whose lengths come from its own bytes (1-16 each), or whole.
std::vector<std::string_view> Chunks(std::string_view text, bool whole) {
  if (whole) return {text};
  std::vector<std::string_view> chunks;
  size_t at = 0;
  while (at < text.size()) {
    const size_t length = 1 + static_cast<unsigned char>(text[at]) % 16;
    chunks.push_back(text.substr(at, length));
    at += length;
  }
  return chunks;
}

struct Split {
  std::string reasoning;
  std::string content;
};

Split SplitReasoning(std::string_view output, bool starts_in_reasoning, bool whole) {
  ReasoningSplitter splitter(starts_in_reasoning);
  Split split;
  for (const std::string_view chunk : Chunks(output, whole)) {
    auto parts = splitter.Push(chunk);
    split.reasoning += parts.reasoning;
    split.content += parts.content;
  }
  auto parts = splitter.Finish();
  split.reasoning += parts.reasoning;
  split.content += parts.content;
  return split;
}

struct Calls {
  std::string text;
  std::vector<std::string> calls;  // name, then arguments, of each call.
};

Calls ReadCalls(ToolCallExtractor extractor, std::string_view output, bool whole) {
  Calls result;
  for (const std::string_view chunk : Chunks(output, whole)) result.text += extractor.Push(chunk);
  auto finished = extractor.Finish();
  result.text += finished.content;
  for (const auto& call : finished.calls) {
    if (call.id.size() != 29 || !call.id.starts_with("call_")) inferbox::fuzz::Fail("a call id");
    result.calls.push_back(call.name);
    result.calls.push_back(call.arguments);
  }
  return result;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace inferbox;
  const auto parts = fuzz::SplitParts(fuzz::AsText(data, size), 2);
  std::vector<std::string> tool_names;
  for (std::string_view names = parts[0]; !names.empty();) {
    const size_t end = names.find('\n');
    tool_names.emplace_back(names.substr(0, end));
    names.remove_prefix(end == std::string_view::npos ? names.size() : end + 1);
  }
  const std::string_view output = parts[1];
  for (const bool starts_in_reasoning : {false, true}) {
    const Split whole = SplitReasoning(output, starts_in_reasoning, true);
    const Split chunked = SplitReasoning(output, starts_in_reasoning, false);
    if (whole.reasoning != chunked.reasoning || whole.content != chunked.content)
      fuzz::Fail("the reasoning split depends on how the output was chunked");
  }
  for (const std::string_view format : {"hermes", "deepseek", "json"}) {
    auto extractor = ToolCallExtractor::For(format, tool_names);
    if (!extractor) fuzz::Fail("a format the daemon reads has no extractor");
    const Calls whole = ReadCalls(*extractor, output, true);
    const Calls chunked = ReadCalls(*extractor, output, false);
    if (whole.text != chunked.text || whole.calls != chunked.calls)
      fuzz::Fail("the tool calls read depend on how the output was chunked");
    if (!whole.calls.empty()) fuzz::Reached(format.data());
    if (whole.calls.empty() && whole.text != output)
      fuzz::Fail("output that holds no calls did not come back as text");
  }
  return 0;
}
