// A TLS client on a raw socket for tests (OpenSSL), for what curl hides: a client that reads
// slowly (a small receive buffer), exact bytes, a handshake's failure.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

namespace inferbox::testing {

// What a client trusts (the server's CA) and presents (a certificate, if given).
class TlsClientContext {
 public:
  explicit TlsClientContext(const std::filesystem::path& ca,
                            const std::filesystem::path& certificate = {},
                            const std::filesystem::path& key = {})
      : context_(SSL_CTX_new(TLS_client_method())) {
    EXPECT_EQ(SSL_CTX_load_verify_locations(context_, ca.c_str(), nullptr), 1);
    SSL_CTX_set_verify(context_, SSL_VERIFY_PEER, nullptr);
    if (!certificate.empty()) {
      EXPECT_EQ(SSL_CTX_use_certificate_chain_file(context_, certificate.c_str()), 1);
      EXPECT_EQ(SSL_CTX_use_PrivateKey_file(context_, key.c_str(), SSL_FILETYPE_PEM), 1);
    }
  }
  ~TlsClientContext() { SSL_CTX_free(context_); }
  TlsClientContext(const TlsClientContext&) = delete;
  TlsClientContext& operator=(const TlsClientContext&) = delete;

  SSL_CTX* get() const { return context_; }

 private:
  SSL_CTX* context_;
};

class TlsConnection {
 public:
  // Connects to 127.0.0.1:`port` and completes the handshake (handshake_error() says why
  // not). `receive_buffer`: SO_RCVBUF in bytes (0: the system's). `expect_refusal`: the
  // server is expected to refuse this client's certificate, which TLS 1.3 reports only after
  // the client's side of the handshake is done: wait up to 10 s for that alert.
  TlsConnection(uint16_t port, const TlsClientContext& context, int receive_buffer = 0,
                bool expect_refusal = false)
      : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    if (receive_buffer > 0) {
      EXPECT_EQ(::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof(receive_buffer)),
                0);
    }
    timeval timeout{10, 0};  // A handshake the server never answers fails the test, not hangs.
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    ssl_ = SSL_new(context.get());
    SSL_set_fd(ssl_, fd_);
    SSL_set_tlsext_host_name(ssl_, "localhost");
    SSL_set1_host(ssl_, "localhost");
    ERR_clear_error();
    if (SSL_connect(ssl_) != 1) {
      handshake_error_ = Errors();
      return;
    }
    if (!expect_refusal) return;
    // A server that accepted sends session tickets, then nothing: the peek times out.
    char byte;
    const int peeked = SSL_peek(ssl_, &byte, 1);
    const int error = SSL_get_error(ssl_, peeked);
    if (peeked <= 0 && error != SSL_ERROR_WANT_READ &&
        !(error == SSL_ERROR_SYSCALL && errno == EAGAIN))
      handshake_error_ = Errors();
    ERR_clear_error();
  }
  ~TlsConnection() { Close(); }
  // Closes the socket without TLS's close_notify (unread bytes make it a reset).
  void Close() {
    SSL_free(ssl_);
    ssl_ = nullptr;
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  TlsConnection(const TlsConnection&) = delete;
  TlsConnection& operator=(const TlsConnection&) = delete;

  // Empty when the handshake succeeded.
  const std::string& handshake_error() const { return handshake_error_; }

  void Send(const std::string& text) {
    ASSERT_EQ(SSL_write(ssl_, text.data(), static_cast<int>(text.size())),
              static_cast<int>(text.size()));
  }

  // Reads until `needle` shows up, the peer closes, or the timeout passes.
  std::string ReadUntil(const std::string& needle, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    size_t searched = 0;
    while (received_.find(needle, searched) == std::string::npos) {
      searched = received_.size() >= needle.size() ? received_.size() - needle.size() + 1 : 0;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      if (SSL_pending(ssl_) == 0) {
        pollfd entry{fd_, POLLIN, 0};
        if (::poll(&entry, 1, static_cast<int>(left.count())) <= 0) break;
      }
      char buffer[4096];
      const int n = SSL_read(ssl_, buffer, sizeof(buffer));
      if (n <= 0) break;
      received_.append(buffer, static_cast<size_t>(n));
    }
    return received_;
  }

 private:
  static std::string Errors() {
    std::string text;
    while (const unsigned long error = ERR_get_error()) {
      char buffer[256];
      ERR_error_string_n(error, buffer, sizeof(buffer));
      text += std::string(buffer) + "; ";
    }
    return text.empty() ? "the handshake failed" : text;
  }

  int fd_;
  SSL* ssl_ = nullptr;
  std::string handshake_error_;
  std::string received_;
};

}  // namespace inferbox::testing
