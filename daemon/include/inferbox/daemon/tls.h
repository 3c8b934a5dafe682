// TLS for inferboxd's gRPC and HTTP listeners ([server.tls]): the server's certificate and
// key, and optionally the CA whose client certificates it accepts (mutual TLS), read from PEM
// files and checked together before anything listens, so that a wrong file is a clear
// startup error rather than handshakes that fail later.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "inferbox/common/status.h"

struct ssl_ctx_st;

namespace inferbox::daemon {

// [server.tls]. Unset certificate: the listeners speak plain TCP.
struct TlsConfig {
  // PEM: the server certificate first, then any intermediates.
  std::filesystem::path certificate;
  // PEM, unencrypted (the daemon starts unattended); readable by the daemon's user only.
  std::filesystem::path private_key;
  // PEM CA certificates. Set: gRPC clients must present a certificate one of them signed
  // (CONVENTIONS R2.8, mutual TLS for the admin API); HTTP clients too when
  // http_requires_client_certificate.
  std::optional<std::filesystem::path> client_ca;
  bool http_requires_client_certificate = false;

  bool enabled() const { return !certificate.empty(); }
  bool operator==(const TlsConfig&) const = default;
};

// What the listeners serve with: the files' text, checked.
struct TlsCredentials {
  std::string certificate_chain_pem;
  std::string private_key_pem;
  // Empty: clients are not asked for certificates.
  std::string client_ca_pem;
  bool http_requires_client_certificate = false;
  // The server certificate's subject (one line) and validity end, for logs and metrics.
  std::string subject;
  std::chrono::system_clock::time_point not_after;
};

// Reads and checks the files of `config` (enabled): each parses as PEM, the key is the
// certificate's, the CA file holds at least one certificate. Errors name the key and the
// file: "server.tls.private_key: /etc/inferbox/tls/server.key does not match
// server.tls.certificate".
Result<TlsCredentials> LoadTlsCredentials(const TlsConfig& config);

// An OpenSSL server context (TLS 1.2 and later, no renegotiation, ALPN http/1.1) for the
// HTTP listener. Immutable once made: any thread may start connections on it.
class TlsServerContext {
 public:
  static Result<std::shared_ptr<const TlsServerContext>> Create(const TlsCredentials& credentials);
  TlsServerContext(const TlsServerContext&) = delete;
  TlsServerContext& operator=(const TlsServerContext&) = delete;
  ~TlsServerContext();

  ssl_ctx_st* native() const { return context_; }
  bool requires_client_certificate() const { return requires_client_certificate_; }

 private:
  TlsServerContext(ssl_ctx_st* context, bool requires_client_certificate)
      : context_(context), requires_client_certificate_(requires_client_certificate) {}

  ssl_ctx_st* context_;
  bool requires_client_certificate_;
};

// The messages of OpenSSL's error queue for this thread, "; "-joined (the queue is emptied).
std::string TakeOpenSslErrors();

}  // namespace inferbox::daemon
