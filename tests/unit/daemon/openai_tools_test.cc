// ToolCallExtractor (daemon/src/openai_tools.h): a model's tool calls read out of its output
// in each format a chat template may ask for, fed in pieces as a stream brings them.
#include "openai_tools.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <boost/json.hpp>

namespace inferbox::daemon::openai {
namespace {

using ::testing::SizeIs;

struct Extracted {
  std::string streamed;  // What Push let through as answer, in order.
  ToolCallExtractor::Result finish;
};

// Feeds `text` in pieces of `piece` bytes (markers split anywhere), with these tools offered.
Extracted Extract(std::string_view format, std::string_view text, size_t piece,
                  std::vector<std::string> offered = {"get_weather", "get_time", "function", "f",
                                                      "a", "b"}) {
  std::optional<ToolCallExtractor> extractor = ToolCallExtractor::For(format, std::move(offered));
  EXPECT_TRUE(extractor.has_value()) << format;
  Extracted out;
  for (size_t at = 0; at < text.size(); at += piece) {
    out.streamed += extractor->Push(text.substr(at, piece));
  }
  out.finish = extractor->Finish();
  return out;
}

boost::json::value Arguments(const ToolCall& call) {
  return boost::json::parse(call.arguments);
}

TEST(ToolCallExtractor, HermesCallsAfterAnAnswerInAnyPieces) {
  const std::string_view output =
      "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
      "\"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": "
      "{\"zone\": \"CET\"}}\n</tool_call>";
  for (const size_t piece : {1, 2, 3, 7, 1000}) {
    const Extracted out = Extract("hermes", output, piece);
    EXPECT_EQ(out.streamed + out.finish.content, "Let me check.\n") << "piece " << piece;
    ASSERT_THAT(out.finish.calls, SizeIs(2)) << "piece " << piece;
    EXPECT_EQ(out.finish.calls[0].name, "get_weather");
    EXPECT_EQ(Arguments(out.finish.calls[0]), (boost::json::object{{"city", "Paris"}}));
    EXPECT_EQ(out.finish.calls[1].name, "get_time");
    EXPECT_TRUE(out.finish.calls[0].id.starts_with("call_"));
    EXPECT_EQ(out.finish.calls[0].id.size(), 29u);
    EXPECT_NE(out.finish.calls[0].id, out.finish.calls[1].id);
  }
}

TEST(ToolCallExtractor, TextThatOnlyLooksLikeTheMarkerIsAnswer) {
  // "<tool" then something else: held back only until it is known not to be the marker.
  const Extracted out = Extract("hermes", "a <tool> b <tool_ c <", 1);
  EXPECT_EQ(out.streamed + out.finish.content, "a <tool> b <tool_ c <");
  EXPECT_TRUE(out.finish.calls.empty());
  EXPECT_EQ(Extract("hermes", "plain answer", 4).streamed, "plain answer")
      << "no marker: all of it streams at once, nothing waits for the end";
}

TEST(ToolCallExtractor, ACallThatDoesNotParseIsAnswerNotLost) {
  for (const std::string_view output : {
           // Cut off by max_tokens.
           std::string_view("<tool_call>\n{\"name\": \"get_weather\", \"argum"),
           // Not JSON, no name, arguments that are not an object.
           std::string_view("<tool_call>call get_weather</tool_call>"),
           std::string_view("<tool_call>{\"arguments\": {}}</tool_call>"),
           std::string_view("<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>"),
           // A tool the request did not offer.
           std::string_view("<tool_call>{\"name\": \"rm_rf\", \"arguments\": {}}</tool_call>"),
       }) {
    const Extracted out = Extract("hermes", output, 5);
    EXPECT_EQ(out.streamed + out.finish.content, output);
    EXPECT_TRUE(out.finish.calls.empty()) << output;
  }
  // The last call left open by the model's end still counts (as vLLM reads it).
  const Extracted open = Extract("hermes", "<tool_call>{\"name\": \"f\", \"arguments\": {}}", 3);
  ASSERT_THAT(open.finish.calls, SizeIs(1));
  EXPECT_EQ(open.finish.calls[0].arguments, "{}");
}

TEST(ToolCallExtractor, DeepSeekV3AndV31Calls) {
  const std::string_view v3 =
      "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
      "```json\n{\"city\": \"Tokyo\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
  const std::string_view v31 =
      "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": "
      "\"Tokyo\"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{}"
      "<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
  for (const size_t piece : {1, 5, 1000}) {
    const Extracted a = Extract("deepseek", v3, piece);
    EXPECT_EQ(a.streamed + a.finish.content, "Checking.");
    ASSERT_THAT(a.finish.calls, SizeIs(1));
    EXPECT_EQ(a.finish.calls[0].name, "get_weather");
    EXPECT_EQ(Arguments(a.finish.calls[0]), (boost::json::object{{"city", "Tokyo"}}));

    const Extracted b = Extract("deepseek", v31, piece);
    EXPECT_EQ(b.streamed + b.finish.content, "");
    ASSERT_THAT(b.finish.calls, SizeIs(2));
    EXPECT_EQ(b.finish.calls[1].name, "get_time");
    EXPECT_EQ(b.finish.calls[1].arguments, "{}");
  }
  // V3.1, a tool that happens to be named "function": its body is the arguments.
  const Extracted named =
      Extract("deepseek",
              "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>{\"x\": 1}"
              "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
              4);
  ASSERT_THAT(named.finish.calls, SizeIs(1));
  EXPECT_EQ(named.finish.calls[0].name, "function");
}

TEST(ToolCallExtractor, JsonCallsAreTheWholeAnswerOrNone) {
  const Extracted call =
      Extract("json", "  {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}", 4);
  EXPECT_EQ(call.streamed, "") << "an answer that opens with '{' waits for the end";
  ASSERT_THAT(call.finish.calls, SizeIs(1));
  EXPECT_EQ(Arguments(call.finish.calls[0]), (boost::json::object{{"city", "Oslo"}}));

  const Extracted two = Extract(
      "json", "{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {}}", 6);
  ASSERT_THAT(two.finish.calls, SizeIs(2));
  EXPECT_EQ(two.finish.calls[1].name, "b");

  const Extracted prose = Extract("json", "The weather {is} fine", 3);
  EXPECT_EQ(prose.streamed, "The weather {is} fine") << "streams as it comes";
  EXPECT_TRUE(prose.finish.calls.empty());
  for (const std::string_view answer :
       {std::string_view("{\"answer\": 42}"),
        // A "name" does not make a call: the arguments must be there, and the tool offered.
        std::string_view("{\"name\": \"Alice\", \"age\": 30}"),
        std::string_view("{\"name\": \"get_weather\", \"age\": 30}"),
        std::string_view("{\"name\": \"Alice\", \"parameters\": {}}")}) {
    const Extracted object = Extract("json", answer, 3);
    EXPECT_EQ(object.streamed + object.finish.content, answer)
        << "a JSON answer that is not a call is the answer";
    EXPECT_TRUE(object.finish.calls.empty()) << answer;
  }
}

TEST(ToolCallExtractor, UnknownFormatsReadNothing) {
  EXPECT_FALSE(ToolCallExtractor::For("", {"f"}).has_value());
  EXPECT_FALSE(ToolCallExtractor::For("mistral", {"f"}).has_value());
}

}  // namespace
}  // namespace inferbox::daemon::openai
