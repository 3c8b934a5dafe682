#include "inferbox/daemon/tls.h"

#include <sys/stat.h>

#include <ctime>
#include <vector>

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include "inferbox/common/atomic_file.h"

namespace inferbox::daemon {
namespace {

struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Free {
  void operator()(X509* certificate) const { X509_free(certificate); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
struct CtxFree {
  void operator()(SSL_CTX* context) const { SSL_CTX_free(context); }
};
using Certificate = std::unique_ptr<X509, X509Free>;
using PrivateKey = std::unique_ptr<EVP_PKEY, PkeyFree>;

// OpenSSL asks for a passphrase on the terminal unless told there is none.
int NoPassphrase(char*, int, int, void*) {
  return 0;
}

std::unique_ptr<BIO, BioFree> MemoryBio(const std::string& text) {
  return std::unique_ptr<BIO, BioFree>(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

// Every certificate in `pem`, in order, up to the first that cannot be read; none when it
// holds none. *complete (if given) is false when a CERTIFICATE block was not read (a corrupt
// intermediate would otherwise shorten the chain silently).
std::vector<Certificate> ReadCertificates(const std::string& pem, bool* complete = nullptr) {
  std::vector<Certificate> certificates;
  auto bio = MemoryBio(pem);
  while (X509* certificate = PEM_read_bio_X509(bio.get(), nullptr, &NoPassphrase, nullptr))
    certificates.emplace_back(certificate);
  ERR_clear_error();  // The read that ended the loop leaves "no start line".
  if (complete != nullptr) {
    size_t num_blocks = 0;
    constexpr std::string_view kBegin = "-----BEGIN CERTIFICATE-----";
    for (size_t at = pem.find(kBegin); at != std::string::npos; at = pem.find(kBegin, at + 1))
      ++num_blocks;
    *complete = num_blocks == certificates.size();
  }
  return certificates;
}

PrivateKey ReadPrivateKey(const std::string& pem) {
  auto bio = MemoryBio(pem);
  return PrivateKey(PEM_read_bio_PrivateKey(bio.get(), nullptr, &NoPassphrase, nullptr));
}

std::string SubjectOf(X509* certificate) {
  std::unique_ptr<BIO, BioFree> out(BIO_new(BIO_s_mem()));
  X509_NAME_print_ex(out.get(), X509_get_subject_name(certificate), 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  const long size = BIO_get_mem_data(out.get(), &data);
  return std::string(data, static_cast<size_t>(size));
}

std::chrono::system_clock::time_point NotAfter(X509* certificate) {
  std::tm end{};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(certificate), &end) != 1) return {};
  return std::chrono::system_clock::from_time_t(timegm(&end));
}

Result<std::string> ReadPem(const std::filesystem::path& path, std::string_view key) {
  auto text = ReadFile(path);
  if (!text.ok()) return text.status().WithContext(fmt::format("server.tls.{}", key));
  return text;
}

int SelectHttp11(SSL*, const unsigned char** out, unsigned char* out_length,
                 const unsigned char* offered, unsigned int offered_length, void*) {
  static const unsigned char kHttp11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, out_length, kHttp11, sizeof(kHttp11), offered,
                            offered_length) != OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_NOACK;  // No ALPN in the answer: the client assumes HTTP/1.1.
  }
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

}  // namespace

std::string TakeOpenSslErrors() {
  std::string text;
  while (const unsigned long error = ERR_get_error()) {
    char buffer[256];
    ERR_error_string_n(error, buffer, sizeof(buffer));
    if (!text.empty()) text += "; ";
    text += buffer;
  }
  return text.empty() ? "no detail from OpenSSL" : text;
}

Result<TlsCredentials> LoadTlsCredentials(const TlsConfig& config) {
  TlsCredentials credentials;
  auto chain = ReadPem(config.certificate, "certificate");
  if (!chain.ok()) return chain.status();
  credentials.certificate_chain_pem = std::move(chain).value();
  bool complete = true;
  const std::vector<Certificate> certificates =
      ReadCertificates(credentials.certificate_chain_pem, &complete);
  if (!complete) {
    return InvalidArgumentError(
        fmt::format("server.tls.certificate: {}: certificate {} of the chain cannot be read",
                    config.certificate.string(), certificates.size() + 1));
  }
  if (certificates.empty()) {
    return InvalidArgumentError(fmt::format(
        "server.tls.certificate: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        config.certificate.string()));
  }

  auto key_text = ReadPem(config.private_key, "private_key");
  if (!key_text.ok()) return key_text.status();
  credentials.private_key_pem = std::move(key_text).value();
  const PrivateKey key = ReadPrivateKey(credentials.private_key_pem);
  if (!key) {
    const std::string detail = TakeOpenSslErrors();
    if (credentials.private_key_pem.find("ENCRYPTED") != std::string::npos) {
      return InvalidArgumentError(fmt::format(
          "server.tls.private_key: {} is encrypted; inferboxd starts unattended and needs it "
          "unencrypted (openssl pkey -in <encrypted> -out {}), readable by its user only",
          config.private_key.string(), config.private_key.string()));
    }
    return InvalidArgumentError(
        fmt::format("server.tls.private_key: {} holds no PEM private key "
                    "({})",
                    config.private_key.string(), detail));
  }
  if (X509_check_private_key(certificates.front().get(), key.get()) != 1) {
    ERR_clear_error();
    return InvalidArgumentError(fmt::format(
        "server.tls.private_key: {} is not the key of the certificate in {} (server.tls."
        "certificate)",
        config.private_key.string(), config.certificate.string()));
  }
  struct stat info {};
  if (::stat(config.private_key.c_str(), &info) == 0 && (info.st_mode & S_IROTH) != 0) {
    spdlog::warn(
        "server.tls.private_key: {} is readable by every user of this host (mode {:04o}); "
        "make it readable by inferboxd's user only (chmod 0640, group inferbox)",
        config.private_key.string(), info.st_mode & 07777);
  }

  if (config.client_ca) {
    auto ca = ReadPem(*config.client_ca, "client_ca");
    if (!ca.ok()) return ca.status();
    if (ReadCertificates(*ca).empty()) {
      return InvalidArgumentError(fmt::format("server.tls.client_ca: {} holds no PEM certificate",
                                              config.client_ca->string()));
    }
    credentials.client_ca_pem = std::move(ca).value();
  }
  credentials.http_requires_client_certificate = config.http_requires_client_certificate;
  credentials.subject = SubjectOf(certificates.front().get());
  credentials.not_after = NotAfter(certificates.front().get());
  // What OpenSSL's policy refuses (an RSA key under 2048 bits, a SHA-1 signed intermediate at
  // Debian's security level 2) is refused here, as a configuration error, not at listen time.
  if (auto context = TlsServerContext::Create(credentials); !context.ok()) return context.status();
  return credentials;
}

Result<std::shared_ptr<const TlsServerContext>> TlsServerContext::Create(
    const TlsCredentials& credentials) {
  std::unique_ptr<SSL_CTX, CtxFree> context(SSL_CTX_new(TLS_server_method()));
  if (!context) return InternalError("cannot make a TLS context: " + TakeOpenSslErrors());
  SSL_CTX_set_min_proto_version(context.get(), TLS1_2_VERSION);
  SSL_CTX_set_options(context.get(), SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                         SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
  // A send the socket did not take whole is tried again later with more bytes, from another
  // buffer (openai_socket.h); each returns what went out.
  SSL_CTX_set_mode(context.get(), SSL_MODE_ENABLE_PARTIAL_WRITE |
                                      SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                      SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_alpn_select_cb(context.get(), &SelectHttp11, nullptr);

  std::vector<Certificate> chain = ReadCertificates(credentials.certificate_chain_pem);
  const PrivateKey key = ReadPrivateKey(credentials.private_key_pem);
  if (chain.empty() || !key || SSL_CTX_use_certificate(context.get(), chain.front().get()) != 1 ||
      SSL_CTX_use_PrivateKey(context.get(), key.get()) != 1 ||
      SSL_CTX_check_private_key(context.get()) != 1) {
    return InvalidArgumentError("server.tls: the certificate or key cannot be used: " +
                                TakeOpenSslErrors());
  }
  for (size_t i = 1; i < chain.size(); ++i) {
    if (SSL_CTX_add1_chain_cert(context.get(), chain[i].get()) != 1)
      return InvalidArgumentError("server.tls.certificate: bad chain: " + TakeOpenSslErrors());
  }

  const bool verify_clients = credentials.http_requires_client_certificate;
  if (verify_clients) {
    X509_STORE* store = SSL_CTX_get_cert_store(context.get());
    for (const Certificate& ca : ReadCertificates(credentials.client_ca_pem)) {
      if (X509_STORE_add_cert(store, ca.get()) != 1 ||
          SSL_CTX_add_client_CA(context.get(), ca.get()) != 1) {
        return InvalidArgumentError("server.tls.client_ca: " + TakeOpenSslErrors());
      }
    }
    SSL_CTX_set_verify(context.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    // Session resumption with client certificates needs a context id.
    static const unsigned char kSessionContext[] = "inferbox-http";
    SSL_CTX_set_session_id_context(context.get(), kSessionContext, sizeof(kSessionContext) - 1);
  }
  return std::shared_ptr<const TlsServerContext>(
      new TlsServerContext(context.release(), verify_clients));
}

TlsServerContext::~TlsServerContext() {
  SSL_CTX_free(context_);
}

}  // namespace inferbox::daemon
