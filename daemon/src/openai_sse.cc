#include "openai_sse.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <iterator>
#include <sstream>

#include <fmt/format.h>
#include <boost/beast/http.hpp>

namespace inferbox::daemon::openai {
namespace {

namespace http = boost::beast::http;
namespace v1 = inferbox::v1;

// The response's status line and headers.
std::string SseHeaders(unsigned version, bool keep_alive) {
  http::response<http::empty_body> response{http::status::ok, version};
  response.set(http::field::content_type, "text/event-stream");
  response.set(http::field::cache_control, "no-cache");
  response.set("X-Accel-Buffering", "no");  // nginx: pass events on as they come.
  response.keep_alive(keep_alive);
  if (version >= 11) response.chunked(true);
  std::ostringstream text;
  text << response.base();
  return text.str();
}

struct SplitText {
  std::string reasoning;
  std::string content;
  std::vector<ToolCall> tool_calls;  // At the finishing chunk.
};

// The chunk's text as reasoning and answer (OutputSplit); at the finishing chunk, whatever
// was held back too, and the tool calls.
SplitText SplitChunkText(OutputSplit& split, const v1::GenerateChunk& chunk) {
  const bool finished = chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED;
  SplitText parts;
  if (split.reasoning) {
    ReasoningSplitter::Parts pushed = split.reasoning->Push(chunk.text());
    if (finished) {
      ReasoningSplitter::Parts rest = split.reasoning->Finish();
      pushed.reasoning += rest.reasoning;
      pushed.content += rest.content;
    }
    parts.reasoning = std::move(pushed.reasoning);
    parts.content = std::move(pushed.content);
  } else {
    parts.content = chunk.text();
  }
  if (split.tools) {
    parts.content = split.tools->Push(parts.content);
    if (finished) {
      ToolCallExtractor::Result rest = split.tools->Finish();
      parts.content += rest.content;
      parts.tool_calls = std::move(rest.calls);
    }
  }
  return parts;
}

// The engine's finish reason, or tool_calls when the model stopped after calling tools.
v1::FinishReason FinishReasonWith(const std::vector<ToolCall>& calls, v1::FinishReason reason) {
  return !calls.empty() && reason == v1::FINISH_REASON_STOP ? v1::FINISH_REASON_TOOL_CALLS : reason;
}

}  // namespace

ConnectionWaiter::ConnectionWaiter(int socket)
    : socket_(socket), event_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}

void ConnectionWaiter::Wake() {
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t written = ::write(event_.get(), &one, sizeof(one));
}

ConnectionWaiter::Woke ConnectionWaiter::Wait(Clock::time_point until, const Signal& abort) {
  for (;;) {
    int timeout = -1;
    if (until != Clock::time_point::max()) {
      const auto now = Clock::now();
      if (now >= until) return Woke::kTimeout;
      timeout = static_cast<int>(std::min<int64_t>(
          std::chrono::ceil<std::chrono::milliseconds>(until - now).count(), 60'000));
    }
    std::array<pollfd, 3> waits{
        {{event_.get(), POLLIN, 0}, {socket_, POLLRDHUP, 0}, {abort.fd(), POLLIN, 0}}};
    const int ready = ::poll(waits.data(), waits.size(), timeout);
    if (ready < 0 && errno != EINTR) return Woke::kGone;
    if (ready <= 0) continue;
    if (waits[2].revents != 0) return Woke::kAborted;
    if (waits[1].revents != 0) return Woke::kGone;
    uint64_t count = 0;
    [[maybe_unused]] const ssize_t drained = ::read(event_.get(), &count, sizeof(count));
    return Woke::kSink;
  }
}

bool OutputCollector::OnChunk(v1::GenerateChunk& chunk) {
  std::lock_guard lock(mutex_);
  if (finished_) return true;
  SplitText parts = SplitChunkText(split_, chunk);
  output_.content += parts.content;
  output_.reasoning += parts.reasoning;
  output_.logprobs.MergeFrom(chunk.logprobs());
  if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
    // The finishing chunk ends the output (the stream's end with OK follows it).
    output_.tool_calls = std::move(parts.tool_calls);
    output_.finish_reason = FinishReasonWith(output_.tool_calls, chunk.finish_reason());
    output_.usage = chunk.usage();
    finished_ = true;
    waiter_.Wake();
  }
  return true;
}

void OutputCollector::OnEnd() {
  std::lock_guard lock(mutex_);
  ended_ = true;
  waiter_.Wake();
}

OutputCollector::Step OutputCollector::Wait(const Signal& abort) {
  for (;;) {
    {
      std::lock_guard lock(mutex_);
      if (finished_) return Step::kFinished;
      if (ended_) return Step::kEnded;
    }
    switch (waiter_.Wait(ConnectionWaiter::Clock::time_point::max(), abort)) {
      case ConnectionWaiter::Woke::kGone: return Step::kGone;
      case ConnectionWaiter::Woke::kAborted: return Step::kAborted;
      case ConnectionWaiter::Woke::kSink:
      case ConnectionWaiter::Woke::kTimeout: break;
    }
  }
}

SsePump::SsePump(SocketStream& stream, ResponseContext response, OutputSplit split,
                 unsigned version, bool keep_alive)
    : stream_(stream),
      response_(std::move(response)),
      version_(version),
      keep_alive_(keep_alive && version >= 11),
      chat_(response_.endpoint == Endpoint::kChatCompletions),
      waiter_(stream.fd()),
      last_write_(Clock::now()),
      split_(std::move(split)) {}

bool SsePump::OnChunk(v1::GenerateChunk& chunk) {
  std::lock_guard lock(mutex_);
  // Nobody writes any more, or the response is whole: let the generation end.
  if (closed_ || failed_ || finished_) return true;
  if (chat_ && !role_sent_) {
    AppendData(ChunkJson(response_, {.first = true}));
    role_sent_ = true;
  }
  const SplitText parts = SplitChunkText(split_, chunk);
  const bool finished = chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED;
  const bool calls = !parts.tool_calls.empty();
  if (!parts.content.empty() || !parts.reasoning.empty() || chunk.logprobs_size() > 0 || finished) {
    // Tool calls come in a chunk of their own before the finishing one, as OpenAI sends them.
    AppendData(ChunkJson(response_, {.content = parts.content,
                                     .reasoning = parts.reasoning,
                                     .logprobs = &chunk.logprobs(),
                                     .text_offset = text_offset_,
                                     .tool_calls = &parts.tool_calls,
                                     .finish_reason = calls ? v1::FINISH_REASON_UNSPECIFIED
                                                            : chunk.finish_reason()}));
    if (calls) {
      AppendData(ChunkJson(
          response_, {.finish_reason = FinishReasonWith(parts.tool_calls, chunk.finish_reason())}));
    }
  }
  text_offset_ += chunk.text().size();
  if (finished) {
    if (response_.include_usage) AppendData(UsageChunkJson(response_, chunk.usage()));
    AppendData("[DONE]");
    AppendEnd();
    finished_ = true;
  }
  if (!thread_writing_) SendLocked();
  held_ = !out_.empty() && !failed_;
  if (held_ || failed_ || finished_) waiter_.Wake();
  return !held_;
}

void SsePump::OnEnd() {
  std::lock_guard lock(mutex_);
  ended_ = true;
  waiter_.Wake();
}

SsePump::Step SsePump::Next(std::chrono::milliseconds keepalive_interval, const Signal& abort,
                            std::string* bytes) {
  for (;;) {
    Clock::time_point idle_at;
    {
      std::lock_guard lock(mutex_);
      if (failed_) return Step::kFailed;
      if (finished_ && out_.empty()) return Step::kFinished;
      if (ended_ && out_.empty()) return Step::kEnded;
      idle_at = last_write_ + keepalive_interval;
      // Decided here, under the lock: a chunk sent from the sink moves last_write_ without
      // waking this thread, and one that finished the response leaves no room for a comment.
      if (out_.empty() && !finished_ && Clock::now() >= idle_at) AppendFrame(": ping\n\n");
      if (!out_.empty()) {
        bytes->clear();
        bytes->swap(out_);
        thread_writing_ = true;
        return Step::kWrite;
      }
    }
    const ConnectionWaiter::Woke woke = waiter_.Wait(idle_at, abort);
    if (woke == ConnectionWaiter::Woke::kGone || woke == ConnectionWaiter::Woke::kAborted) {
      // The sink sends before it wakes this thread: a response that is already out is done.
      std::lock_guard lock(mutex_);
      if (finished_ && out_.empty()) return Step::kFinished;
      return woke == ConnectionWaiter::Woke::kGone ? Step::kGone : Step::kAborted;
    }
  }
}

bool SsePump::Written(bool ok) {
  std::lock_guard lock(mutex_);
  thread_writing_ = false;
  if (!ok) {
    failed_ = true;
    return false;
  }
  last_write_ = Clock::now();
  if (!out_.empty() || !held_) return false;
  held_ = false;
  return true;
}

bool SsePump::Fail(std::string_view json, std::string* bytes) {
  std::lock_guard lock(mutex_);
  closed_ = true;
  if (!headers_queued_) return false;
  AppendData(json);
  AppendEnd();
  bytes->clear();
  bytes->swap(out_);
  return true;
}

void SsePump::AppendData(std::string_view json) {
  AppendFrame(fmt::format("data: {}\n\n", json));
}

void SsePump::AppendFrame(std::string_view payload) {
  if (!headers_queued_) {
    out_ += SseHeaders(version_, keep_alive_);
    headers_queued_ = true;
  }
  if (version_ < 11) {
    out_ += payload;
    return;
  }
  fmt::format_to(std::back_inserter(out_), "{:x}\r\n", payload.size());
  out_ += payload;
  out_ += "\r\n";
}

void SsePump::AppendEnd() {
  if (version_ >= 11) out_ += "0\r\n\r\n";
}

void SsePump::SendLocked() {
  size_t sent = 0;
  while (sent < out_.size()) {
    const ssize_t n = stream_.TrySend(out_.data() + sent, out_.size() - sent);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    // What the socket did not take stays first in out_, as TrySend asks.
    if (n < 0) failed_ = true;  // The client is gone.
    break;
  }
  if (sent > 0) last_write_ = Clock::now();
  out_.erase(0, sent);
}

}  // namespace inferbox::daemon::openai
