// POSIX socket pieces of the OpenAI gateway: an owned fd, a wake-up signal, the listening
// socket, and a connected socket (plain TCP or TLS) as a Beast synchronous stream whose every
// wait is bounded by a deadline and by the gateway's stop signals.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/buffer.hpp>
#include <boost/asio/error.hpp>
#include <boost/system/error_code.hpp>
#include <boost/system/system_error.hpp>

#include "inferbox/common/status.h"

struct ssl_st;
struct ssl_ctx_st;

namespace inferbox::daemon::openai {

// Owns a file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd();

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void reset();

 private:
  int fd_ = -1;
};

// A one-way latch any thread may raise and any number of threads may poll() for: an eventfd
// that stays readable once raised.
class Signal {
 public:
  static Result<Signal> Create();
  void Raise() const;
  bool is_raised() const;
  int fd() const { return fd_.get(); }

 private:
  explicit Signal(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

// A listening TCP socket on host:port (port 0: any free port), non-blocking, close-on-exec.
Result<UniqueFd> Listen(const std::string& host, uint16_t port);
// The port a bound socket got.
uint16_t BoundPort(int fd);

// A connected, non-blocking TCP socket as a Beast SyncReadStream/SyncWriteStream, in the clear
// or, after AcceptTls, through TLS. Each read_some/write_some waits at most until the deadline
// (error timed_out), and gives up with operation_aborted when `abort` is raised, or, for reads
// while `wake_on_drain` is set, when `drain` is raised. Used by one thread at a time.
class SocketStream {
 public:
  using Clock = std::chrono::steady_clock;

  SocketStream(UniqueFd fd, const Signal& drain, const Signal& abort);
  // Sends TLS's close_notify (without waiting) before the socket closes.
  ~SocketStream();
  SocketStream(const SocketStream&) = delete;
  SocketStream& operator=(const SocketStream&) = delete;

  int fd() const { return fd_.get(); }
  bool is_tls() const { return ssl_ != nullptr; }

  enum class Handshake { kDone, kPlainHttp, kFailed };
  // Serves TLS on `context` from now on: completes the server's handshake, waiting as reads
  // do. kPlainHttp: the client spoke plain HTTP to this TLS port (nothing was answered yet).
  // kFailed: *why says what went wrong (a bad or missing client certificate, a protocol the
  // client lacks, the client leaving, the deadline).
  Handshake AcceptTls(ssl_ctx_st* context, std::string* why);

  // Sends what the socket takes of `data` without waiting (through TLS, at most one record,
  // kMaxSendBytes): the bytes sent (0 when the socket takes none now), or -1 when the
  // connection failed. A TLS send the socket took only part of
  // must be repeated with the same bytes first (more may follow): a caller keeps what was not
  // sent, in order, and sends it before anything else, by TrySend or write_some.
  static constexpr size_t kMaxSendBytes = 16384;  // One TLS record.
  ssize_t TrySend(const char* data, size_t size);

  // Ends the sending direction (TLS close_notify, then shutdown(SHUT_WR)); reads go on.
  void ShutdownSend();

  void set_deadline(Clock::time_point deadline) { deadline_ = deadline; }
  void set_wake_on_drain(bool wake) { wake_on_drain_ = wake; }

  template <typename MutableBufferSequence>
  size_t read_some(const MutableBufferSequence& buffers, boost::system::error_code& ec) {
    for (auto it = boost::asio::buffer_sequence_begin(buffers);
         it != boost::asio::buffer_sequence_end(buffers); ++it) {
      const boost::asio::mutable_buffer buffer(*it);
      if (buffer.size() > 0) return Receive(buffer.data(), buffer.size(), ec);
    }
    ec = {};
    return 0;
  }

  template <typename ConstBufferSequence>
  size_t write_some(const ConstBufferSequence& buffers, boost::system::error_code& ec) {
    std::array<iovec, 16> iov;
    size_t count = 0;
    for (auto it = boost::asio::buffer_sequence_begin(buffers);
         it != boost::asio::buffer_sequence_end(buffers) && count < iov.size(); ++it) {
      const boost::asio::const_buffer buffer(*it);
      if (buffer.size() == 0) continue;
      iov[count++] = {const_cast<void*>(buffer.data()), buffer.size()};
    }
    if (count == 0) {
      ec = {};
      return 0;
    }
    return Send(iov.data(), count, ec);
  }

  // The throwing forms complete the Beast stream concepts; the gateway never calls them.
  template <typename MutableBufferSequence>
  size_t read_some(const MutableBufferSequence& buffers) {
    boost::system::error_code ec;
    const size_t n = read_some(buffers, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }
  template <typename ConstBufferSequence>
  size_t write_some(const ConstBufferSequence& buffers) {
    boost::system::error_code ec;
    const size_t n = write_some(buffers, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }

 private:
  size_t Receive(void* data, size_t size, boost::system::error_code& ec);
  size_t Send(const iovec* iov, size_t count, boost::system::error_code& ec);
  size_t ReceiveTls(void* data, size_t size, boost::system::error_code& ec);
  size_t SendTls(const iovec* iov, size_t count, boost::system::error_code& ec);
  // After an SSL call returned `result`: true when it is to be repeated once the socket is
  // ready (waited for here); false with `ec` set (eof for the peer's close_notify).
  bool WaitForTls(int result, boost::system::error_code& ec);
  // Waits until the socket has `events`; false with `ec` set on deadline, stop or error.
  bool Wait(short events, bool wake_on_drain, boost::system::error_code& ec);

  UniqueFd fd_;
  const Signal& drain_;
  const Signal& abort_;
  Clock::time_point deadline_ = Clock::time_point::max();
  bool wake_on_drain_ = false;
  struct SslFree {
    void operator()(ssl_st* ssl) const;
  };
  std::unique_ptr<ssl_st, SslFree> ssl_;
  // A TLS connection that failed: no close_notify.
  bool tls_failed_ = false;
  // Several buffers go into one TLS record (kMaxSendBytes).
  std::vector<char> staging_;
};

}  // namespace inferbox::daemon::openai
