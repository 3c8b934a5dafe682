#include "openai_reasoning.h"

#include <algorithm>

namespace inferbox::daemon::openai {
namespace {

constexpr std::string_view kOpenTag = "<think>";
constexpr std::string_view kCloseTag = "</think>";

bool IsNewline(char c) {
  return c == '\n' || c == '\r';
}

// Length of the longest suffix of `text` that is a proper prefix of `tag`.
size_t PartialTagSuffix(std::string_view text, std::string_view tag) {
  for (size_t length = std::min(text.size(), tag.size() - 1); length > 0; --length) {
    if (text.substr(text.size() - length) == tag.substr(0, length)) return length;
  }
  return 0;
}

}  // namespace

ReasoningSplitter::Parts ReasoningSplitter::Push(std::string_view text) {
  Parts parts;
  std::string buffer = std::move(pending_);
  pending_.clear();
  buffer.append(text);
  std::string_view rest = buffer;
  for (;;) {
    switch (state_) {
      case State::kStart: {
        const size_t first = std::min(rest.find_first_not_of(" \t\r\n"), rest.size());
        const std::string_view candidate = rest.substr(first);
        if (candidate.starts_with(kOpenTag)) {
          rest = candidate.substr(kOpenTag.size());
          state_ = State::kAfterOpenTag;
          break;
        }
        if (kOpenTag.starts_with(candidate)) {  // Only whitespace, or a partial "<think>".
          pending_ = rest;
          return parts;
        }
        state_ = starts_in_reasoning_ ? State::kReasoning : State::kContent;
        break;
      }
      case State::kAfterOpenTag:
      case State::kAfterCloseTag: {
        while (!rest.empty() && IsNewline(rest.front())) rest.remove_prefix(1);
        if (rest.empty()) return parts;
        state_ = state_ == State::kAfterOpenTag ? State::kReasoning : State::kContent;
        break;
      }
      case State::kReasoning: {
        const size_t close = rest.find(kCloseTag);
        if (close != std::string_view::npos) {
          parts.reasoning.append(rest.substr(0, close));
          rest = rest.substr(close + kCloseTag.size());
          state_ = State::kAfterCloseTag;
          break;
        }
        const size_t held = PartialTagSuffix(rest, kCloseTag);
        parts.reasoning.append(rest.substr(0, rest.size() - held));
        pending_ = rest.substr(rest.size() - held);
        return parts;
      }
      case State::kContent: parts.content.append(rest); return parts;
    }
  }
}

ReasoningSplitter::Parts ReasoningSplitter::Finish() {
  Parts parts;
  const bool reasoning =
      state_ == State::kReasoning || (state_ == State::kStart && starts_in_reasoning_);
  (reasoning ? parts.reasoning : parts.content) = std::move(pending_);
  pending_.clear();
  return parts;
}

}  // namespace inferbox::daemon::openai
