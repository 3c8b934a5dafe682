// ReasoningSplitter: every way of cutting an output into chunks gives the same parts.
#include "openai_reasoning.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace inferbox::daemon::openai {
namespace {

TEST(ReasoningSplitterTest, EverySplitOfTheOutputGivesTheSameParts) {
  struct Case {
    bool starts_in_reasoning;
    std::string output;
    std::string reasoning;
    std::string content;
  };
  const std::vector<Case> cases = {
      {false, "<think>\nStep</think>\n\nAnswer", "Step", "Answer"},
      {false, "  <think>Step</think>Answer", "Step", "Answer"},
      {false, "Answer <think>", "", "Answer <think>"},
      {false, "<thin", "", "<thin"},
      {false, "<think>unfinished", "unfinished", ""},
      {true, "Step</think>\nAnswer", "Step", "Answer"},
      {true, "<think>\nStep</think>Answer", "Step", "Answer"},
      {true, "Step </thinking", "Step </thinking", ""},
      {true, "a</think>b</think>", "a", "b</think>"},
  };
  for (const Case& c : cases) {
    for (size_t first = 0; first <= c.output.size(); ++first) {
      for (size_t second = first; second <= c.output.size(); ++second) {
        ReasoningSplitter splitter(c.starts_in_reasoning);
        std::string reasoning;
        std::string content;
        for (const auto& piece : {c.output.substr(0, first), c.output.substr(first, second - first),
                                  c.output.substr(second)}) {
          const auto parts = splitter.Push(piece);
          reasoning += parts.reasoning;
          content += parts.content;
        }
        const auto rest = splitter.Finish();
        reasoning += rest.reasoning;
        content += rest.content;
        EXPECT_EQ(reasoning, c.reasoning) << c.output << " split at " << first << "," << second;
        EXPECT_EQ(content, c.content) << c.output << " split at " << first << "," << second;
      }
    }
  }
}

}  // namespace
}  // namespace inferbox::daemon::openai
