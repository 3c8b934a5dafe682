// Splits a chat model's output into reasoning ("<think>...</think>") and answer text, chunk
// by chunk, for the OpenAI API's reasoning_content. A tag may arrive split across chunks:
// text that could be the start of a tag is held back until the next chunk decides it.
#pragma once

#include <string>
#include <string_view>

namespace inferbox::daemon::openai {

class ReasoningSplitter {
 public:
  struct Parts {
    std::string reasoning;
    std::string content;
  };

  // `starts_in_reasoning`: the chat prompt already opened the reasoning block, so the output
  // is reasoning from its first byte up to "</think>". Otherwise the output is reasoning only
  // when it starts with "<think>" (after optional whitespace). Either way the tags and the
  // newlines right after them are dropped.
  explicit ReasoningSplitter(bool starts_in_reasoning)
      : starts_in_reasoning_(starts_in_reasoning) {}

  // The parts of `text` that can be told apart now.
  Parts Push(std::string_view text);
  // At the end of the output: whatever was held back.
  Parts Finish();

 private:
  enum class State {
    kStart,          // Nothing decided yet: the output may open with "<think>".
    kReasoning,      // Inside the reasoning block.
    kAfterOpenTag,   // Just after "<think>": newlines are dropped.
    kAfterCloseTag,  // Just after "</think>": newlines are dropped.
    kContent,        // The answer.
  };

  bool starts_in_reasoning_;
  State state_ = State::kStart;
  // Held-back text: a possible "<think>" in kStart, a possible "</think>" in kReasoning.
  std::string pending_;
};

}  // namespace inferbox::daemon::openai
