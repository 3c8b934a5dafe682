#include "openai_socket.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <spdlog/spdlog.h>

#include "inferbox/daemon/tls.h"

namespace inferbox::daemon::openai {
namespace {

boost::system::error_code ErrnoCode(int error) {
  return {error, boost::system::system_category()};
}

// A socket BIO for TLS that sends with MSG_NOSIGNAL, as the plain path does: OpenSSL's own
// socket BIO calls write(), whose SIGPIPE on a connection the client reset would kill a
// process that does not ignore it. The BIO's data is the fd, which it does not own.
int SocketOf(BIO* bio) {
  return static_cast<int>(reinterpret_cast<intptr_t>(BIO_get_data(bio)));
}

int BioWrite(BIO* bio, const char* data, int size) {
  BIO_clear_retry_flags(bio);
  const ssize_t sent = ::send(SocketOf(bio), data, static_cast<size_t>(size), MSG_NOSIGNAL);
  if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
    BIO_set_retry_write(bio);
  return static_cast<int>(sent);
}

int BioRead(BIO* bio, char* data, int size) {
  BIO_clear_retry_flags(bio);
  const ssize_t received = ::recv(SocketOf(bio), data, static_cast<size_t>(size), 0);
  if (received < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
    BIO_set_retry_read(bio);
  return static_cast<int>(received);
}

long BioControl(BIO*, int command, long, void*) {
  return command == BIO_CTRL_FLUSH ? 1 : 0;  // Nothing is buffered here.
}

int BioCreate(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

const BIO_METHOD* NoSignalSocketMethod() {
  static BIO_METHOD* const method = [] {
    BIO_METHOD* made = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "inferbox socket");
    BIO_meth_set_write(made, &BioWrite);
    BIO_meth_set_read(made, &BioRead);
    BIO_meth_set_ctrl(made, &BioControl);
    BIO_meth_set_create(made, &BioCreate);
    return made;
  }();
  return method;
}

}  // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    reset();
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  reset();
}

void UniqueFd::reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Result<Signal> Signal::Create() {
  const int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) return InternalError(fmt::format("eventfd: {}", std::strerror(errno)));
  return Signal(UniqueFd(fd));
}

void Signal::Raise() const {
  const uint64_t one = 1;
  // The counter only needs to be non-zero; a full counter (EAGAIN) is raised already.
  [[maybe_unused]] const ssize_t written = ::write(fd_.get(), &one, sizeof(one));
}

bool Signal::is_raised() const {
  pollfd entry{fd_.get(), POLLIN, 0};
  return ::poll(&entry, 1, 0) > 0 && (entry.revents & POLLIN) != 0;
}

Result<UniqueFd> Listen(const std::string& host, uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* addresses = nullptr;
  const std::string service = std::to_string(port);
  const int resolved =
      ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &addresses);
  if (resolved != 0) {
    return InvalidArgumentError(
        fmt::format("HTTP listen address '{}': {}", host, ::gai_strerror(resolved)));
  }
  std::string last_error = "no address";
  UniqueFd listener;
  for (const addrinfo* address = addresses; address != nullptr; address = address->ai_next) {
    UniqueFd fd(::socket(address->ai_family, address->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                         address->ai_protocol));
    if (!fd.valid()) {
      last_error = std::strerror(errno);
      continue;
    }
    const int on = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (::bind(fd.get(), address->ai_addr, address->ai_addrlen) != 0 ||
        ::listen(fd.get(), SOMAXCONN) != 0) {
      last_error = std::strerror(errno);
      continue;
    }
    listener = std::move(fd);
    break;
  }
  ::freeaddrinfo(addresses);
  if (!listener.valid()) {
    return UnavailableError(
        fmt::format("cannot listen for HTTP on {}:{}: {}", host, port, last_error));
  }
  return listener;
}

uint16_t BoundPort(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return 0;
  if (address.ss_family == AF_INET)
    return ntohs(reinterpret_cast<const sockaddr_in*>(&address)->sin_port);
  if (address.ss_family == AF_INET6)
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&address)->sin6_port);
  return 0;
}

SocketStream::SocketStream(UniqueFd fd, const Signal& drain, const Signal& abort)
    : fd_(std::move(fd)), drain_(drain), abort_(abort) {}

SocketStream::~SocketStream() {
  if (ssl_ && !tls_failed_ && SSL_is_init_finished(ssl_.get())) {
    ERR_clear_error();
    SSL_shutdown(ssl_.get());  // One non-blocking try: close_notify, if the socket takes it.
    ERR_clear_error();
  }
}

void SocketStream::SslFree::operator()(ssl_st* ssl) const {
  SSL_free(ssl);
}

SocketStream::Handshake SocketStream::AcceptTls(ssl_ctx_st* context, std::string* why) {
  // A TLS client opens with a handshake record (0x16); a capital letter is the request line
  // of plain HTTP (OpenSSL itself recognises only a few methods).
  for (;;) {
    unsigned char first = 0;
    const ssize_t peeked = ::recv(fd_.get(), &first, 1, MSG_PEEK);
    if (peeked == 1) {
      if (first >= 'A' && first <= 'Z') return Handshake::kPlainHttp;
      break;
    }
    boost::system::error_code ec;
    if (peeked == 0) {
      *why = "the client closed the connection";
      return Handshake::kFailed;
    }
    if (errno == EINTR) continue;
    if ((errno != EAGAIN && errno != EWOULDBLOCK) || !Wait(POLLIN, wake_on_drain_, ec)) {
      *why = ec ? ec.message() : std::strerror(errno);
      return Handshake::kFailed;
    }
  }
  ssl_.reset(SSL_new(context));
  BIO* bio = ssl_ ? BIO_new(NoSignalSocketMethod()) : nullptr;
  if (bio == nullptr) {
    tls_failed_ = true;
    *why = "cannot start TLS: " + TakeOpenSslErrors();
    return Handshake::kFailed;
  }
  BIO_set_data(bio, reinterpret_cast<void*>(static_cast<intptr_t>(fd_.get())));
  SSL_set_bio(ssl_.get(), bio, bio);  // One reference, for both directions.
  SSL_set_accept_state(ssl_.get());
  for (;;) {
    ERR_clear_error();
    const int result = SSL_do_handshake(ssl_.get());
    if (result == 1) return Handshake::kDone;
    const int error = SSL_get_error(ssl_.get(), result);
    if (error == SSL_ERROR_SSL) {
      const unsigned long first = ERR_peek_error();
      tls_failed_ = true;
      if (ERR_GET_LIB(first) == ERR_LIB_SSL &&
          (ERR_GET_REASON(first) == SSL_R_HTTP_REQUEST ||
           ERR_GET_REASON(first) == SSL_R_HTTPS_PROXY_REQUEST)) {
        ERR_clear_error();
        return Handshake::kPlainHttp;
      }
      *why = TakeOpenSslErrors();
      return Handshake::kFailed;
    }
    boost::system::error_code ec;
    if (!WaitForTls(result, ec)) {
      tls_failed_ = true;
      *why = ec == boost::asio::error::eof ? "the client closed the connection" : ec.message();
      return Handshake::kFailed;
    }
  }
}

bool SocketStream::WaitForTls(int result, boost::system::error_code& ec) {
  switch (SSL_get_error(ssl_.get(), result)) {
    case SSL_ERROR_WANT_READ: return Wait(POLLIN, wake_on_drain_, ec);
    case SSL_ERROR_WANT_WRITE: return Wait(POLLOUT, false, ec);
    case SSL_ERROR_ZERO_RETURN: ec = boost::asio::error::eof; break;
    case SSL_ERROR_SYSCALL:
      ec = errno != 0 ? ErrnoCode(errno) : boost::asio::error::eof;
      tls_failed_ = true;
      break;
    default:
      spdlog::debug("TLS connection failed: {}", TakeOpenSslErrors());
      ec = boost::asio::error::connection_reset;
      tls_failed_ = true;
      break;
  }
  ERR_clear_error();
  return false;
}

ssize_t SocketStream::TrySend(const char* data, size_t size) {
  if (size == 0) return 0;
  if (!ssl_) {
    for (;;) {
      const ssize_t sent = ::send(fd_.get(), data, size, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (sent >= 0) return sent;
      if (errno == EINTR) continue;
      return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
    }
  }
  ERR_clear_error();
  const int sent = SSL_write(ssl_.get(), data, static_cast<int>(std::min(size, kMaxSendBytes)));
  if (sent > 0) return sent;
  const int error = SSL_get_error(ssl_.get(), sent);
  ERR_clear_error();
  if (error == SSL_ERROR_WANT_WRITE || error == SSL_ERROR_WANT_READ) return 0;
  tls_failed_ = true;
  return -1;
}

void SocketStream::ShutdownSend() {
  if (ssl_ && !tls_failed_) {
    ERR_clear_error();
    SSL_shutdown(ssl_.get());
    ERR_clear_error();
  }
  ::shutdown(fd_.get(), SHUT_WR);
}

size_t SocketStream::ReceiveTls(void* data, size_t size, boost::system::error_code& ec) {
  const int length = static_cast<int>(std::min<size_t>(size, 1 << 30));
  for (;;) {
    // Bytes already decrypted are returned before the socket is polled.
    ERR_clear_error();
    const int received = SSL_read(ssl_.get(), data, length);
    if (received > 0) {
      ec = {};
      return static_cast<size_t>(received);
    }
    if (!WaitForTls(received, ec)) return 0;
  }
}

size_t SocketStream::SendTls(const iovec* iov, size_t count, boost::system::error_code& ec) {
  const char* data = static_cast<const char*>(iov[0].iov_base);
  size_t size = std::min(iov[0].iov_len, kMaxSendBytes);
  if (count > 1 && size < kMaxSendBytes) {
    // Small buffers (Beast's chunk framing) go out as one record, not one each.
    staging_.clear();
    for (size_t i = 0; i < count && staging_.size() < kMaxSendBytes; ++i) {
      const auto* begin = static_cast<const char*>(iov[i].iov_base);
      const size_t take = std::min(iov[i].iov_len, kMaxSendBytes - staging_.size());
      staging_.insert(staging_.end(), begin, begin + take);
    }
    data = staging_.data();
    size = staging_.size();
  }
  for (;;) {
    ERR_clear_error();
    const int sent = SSL_write(ssl_.get(), data, static_cast<int>(size));
    if (sent > 0) {
      ec = {};
      return static_cast<size_t>(sent);
    }
    if (!WaitForTls(sent, ec)) return 0;
  }
}

size_t SocketStream::Receive(void* data, size_t size, boost::system::error_code& ec) {
  if (ssl_) return ReceiveTls(data, size, ec);
  for (;;) {
    const ssize_t received = ::recv(fd_.get(), data, size, 0);
    if (received > 0) {
      ec = {};
      return static_cast<size_t>(received);
    }
    if (received == 0) {
      ec = boost::asio::error::eof;
      return 0;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      ec = ErrnoCode(errno);
      return 0;
    }
    if (!Wait(POLLIN, wake_on_drain_, ec)) return 0;
  }
}

size_t SocketStream::Send(const iovec* iov, size_t count, boost::system::error_code& ec) {
  if (ssl_) return SendTls(iov, count, ec);
  msghdr message{};
  message.msg_iov = const_cast<iovec*>(iov);
  message.msg_iovlen = count;
  for (;;) {
    const ssize_t sent = ::sendmsg(fd_.get(), &message, MSG_NOSIGNAL);
    if (sent >= 0) {
      ec = {};
      return static_cast<size_t>(sent);
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      ec = ErrnoCode(errno);
      return 0;
    }
    if (!Wait(POLLOUT, false, ec)) return 0;
  }
}

bool SocketStream::Wait(short events, bool wake_on_drain, boost::system::error_code& ec) {
  for (;;) {
    const auto now = Clock::now();
    if (now >= deadline_) {
      ec = boost::asio::error::timed_out;
      return false;
    }
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline_ - now).count();
    const int timeout_ms = static_cast<int>(std::min<int64_t>(left, 60'000));
    std::array<pollfd, 3> entries{{{fd_.get(), events, 0},
                                   {abort_.fd(), POLLIN, 0},
                                   {wake_on_drain ? drain_.fd() : -1, POLLIN, 0}}};
    const int ready = ::poll(entries.data(), entries.size(), timeout_ms);
    if (ready < 0) {
      if (errno == EINTR) continue;
      ec = ErrnoCode(errno);
      return false;
    }
    if (entries[1].revents != 0 || entries[2].revents != 0) {
      ec = boost::asio::error::operation_aborted;
      return false;
    }
    if (entries[0].revents != 0) return true;
  }
}

}  // namespace inferbox::daemon::openai
