// The SSE response of a streamed completion, written from the generation's own events, and
// the whole output of one that is not streamed, gathered from them.
//
// A connection's thread used to wait on the generation and write each chunk itself: a
// thread wake (and a sleep) a token per stream, most of the daemon's CPU at 256 streams
// (perf: ~40% of it in the scheduler and futexes). SsePump is the generation's Sink
// instead: each chunk is formatted and sent on the thread that received it (a gRPC thread),
// with one non-blocking send when the socket takes the bytes at once, which it does unless
// the client reads slower than tokens come. Only then, and for the keep-alive comments, the
// client going away, the gateway's stop, the end and errors, does the connection's thread
// wake: it writes what the socket did not take (with the write timeout, the stream held
// meanwhile: once the engine call's flow-control window is full, the engine waits) and
// answers errors as before.
#pragma once

#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "inferbox/daemon/frontend.h"
#include "openai_json.h"
#include "openai_reasoning.h"
#include "openai_socket.h"
#include "openai_tools.h"

namespace inferbox::daemon::openai {

// Where a connection's thread waits while a generation's sink works on another thread: until
// the sink wakes it, the client hangs up, the gateway's abort is raised, or a time.
class ConnectionWaiter {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Woke { kSink, kTimeout, kGone, kAborted };

  explicit ConnectionWaiter(int socket);
  // False when it could not be made (no eventfd).
  bool ok() const { return event_.valid(); }
  // Any thread.
  void Wake();
  // Only the peer's hang-up of the socket counts (POLLRDHUP; POLLHUP and POLLERR always
  // come): bytes a client sends ahead (its next request) wait for the next request's read.
  Woke Wait(Clock::time_point until, const Signal& abort);

 private:
  const int socket_;
  UniqueFd event_;
};

// How a chat completion's output text is taken apart as it comes: reasoning (when the model
// reasons), answer text, and at the end the tool calls in it (when the request offered tools
// and the model's format is known). Neither: the text is all answer.
struct OutputSplit {
  std::optional<ReasoningSplitter> reasoning;
  std::optional<ToolCallExtractor> tools;
};

// The whole output of a generation for a response that is not streamed, gathered by its sink
// on the thread that receives the chunks; the connection's thread wakes once, at the end.
class OutputCollector final : public GenerationStream::Sink {
 public:
  enum class Step { kFinished, kEnded, kGone, kAborted };

  OutputCollector(int socket, OutputSplit split) : waiter_(socket), split_(std::move(split)) {}
  bool ok() const { return waiter_.ok(); }

  bool OnChunk(inferbox::v1::GenerateChunk& chunk) override;
  void OnEnd() override;

  // Until the finishing chunk came (kFinished: output() is whole), the generation ended
  // without it (kEnded: status() says why), the client hung up or `abort` was raised.
  Step Wait(const Signal& abort);
  const CompletionOutput& output() const { return output_; }

 private:
  ConnectionWaiter waiter_;
  std::mutex mutex_;
  OutputSplit split_;
  CompletionOutput output_;
  bool finished_ = false;
  bool ended_ = false;
};

class SsePump final : public GenerationStream::Sink {
 public:
  using Clock = std::chrono::steady_clock;

  // What the connection's thread is to do next (Next).
  enum class Step {
    kWrite,     // Write *bytes (the socket did not take them at once), then call Written.
    kFinished,  // The whole response is out: [DONE] and the body's end included.
    kEnded,     // The generation ended without its finishing chunk: status() says why.
    kFailed,    // A send failed: the client is gone.
    kGone,      // The client closed the connection.
    kAborted,   // `abort` was raised.
  };

  // `stream`: the connection, which outlives the pump's sends (the generation, which calls
  // the pump, ends before the connection does); the sink sends through it only while the
  // connection's thread does not (between Next's kWrite and Written). HTTP/1.0 clients get
  // the raw stream, HTTP/1.1 clients chunks.
  SsePump(SocketStream& stream, ResponseContext response, OutputSplit split, unsigned version,
          bool keep_alive);

  // False when the pump could not be made (no eventfd): answer 500.
  bool ok() const { return waiter_.ok(); }

  bool OnChunk(inferbox::v1::GenerateChunk& chunk) override;
  void OnEnd() override;

  // Waits until there is something for the connection's thread to do. kWrite moves the
  // bytes to write into *bytes (a keep-alive comment where nothing was written for
  // `keepalive_interval`); the sink only appends until Written. A response whose last bytes
  // are out is kFinished even if the client hangs up or `abort` is raised at that moment.
  Step Next(std::chrono::milliseconds keepalive_interval, const Signal& abort, std::string* bytes);
  // After kWrite's bytes went out (`ok`) or failed. True when the generation was held for
  // them and is to be resumed.
  bool Written(bool ok);
  // The thread takes over for an error: the sink drops what comes from now on. False when
  // none of the response (its headers) has been queued: the error can still be a plain HTTP
  // response. Else *bytes is what is left to write: the bytes not sent yet, then `json` as one
  // data event and the body's end (HTTP/1.1).
  bool Fail(std::string_view json, std::string* bytes);

  bool keep_alive() const { return keep_alive_; }

 private:
  void AppendData(std::string_view json);
  void AppendFrame(std::string_view payload);
  void AppendEnd();
  // Sends out_ without blocking while the socket takes it.
  void SendLocked();

  SocketStream& stream_;
  const ResponseContext response_;
  const unsigned version_;
  const bool keep_alive_;
  const bool chat_;
  ConnectionWaiter waiter_;

  std::mutex mutex_;
  // Bytes of the response the socket has not taken yet, in order.
  std::string out_;
  bool headers_queued_ = false;
  // The connection's thread is writing bytes it took: the sink only appends.
  bool thread_writing_ = false;
  // OnChunk returned false (bytes waiting): the thread resumes the generation once they are out.
  bool held_ = false;
  bool finished_ = false;
  bool ended_ = false;
  bool failed_ = false;
  bool closed_ = false;
  Clock::time_point last_write_;
  // The sink's formatting state.
  OutputSplit split_;
  bool role_sent_ = false;
  size_t text_offset_ = 0;
};

}  // namespace inferbox::daemon::openai
