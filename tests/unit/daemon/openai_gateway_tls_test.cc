// The OpenAI gateway over TLS (tls.h), on real loopback TCP against the scripted fake
// frontend: HTTPS requests and streams, a slow TLS client that holds a stream (the sink's
// sends that the socket did not take, repeated through the connection's thread), plain HTTP
// to the TLS port, client certificates, and the checks of the certificate files.
#include <chrono>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "inferbox/daemon/openai_gateway.h"
#include "inferbox/daemon/tls.h"
#include "openai_client.h"
#include "openai_fakes.h"
#include "subprocess.h"
#include "temp_dir.h"
#include "test_certificates.h"
#include "tls_client.h"

namespace inferbox::daemon {
namespace {

namespace v1 = inferbox::v1;
using ::testing::HasSubstr;
using namespace std::chrono_literals;
using namespace inferbox::daemon::openai_test;
using inferbox::testing::MakeTestCertificates;
using inferbox::testing::TempDir;
using inferbox::testing::TestCertificates;
using inferbox::testing::TlsClientContext;
using inferbox::testing::TlsConnection;

class OpenAiGatewayTlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new TempDir();
    certificates_ = new std::optional<TestCertificates>(MakeTestCertificates(scratch_->path()));
  }
  static void TearDownTestSuite() {
    delete certificates_;
    delete scratch_;
  }

  void SetUp() override {
    ASSERT_TRUE(certificates_->has_value()) << "no test certificates (is openssl installed?)";
    v1::ModelInfo model;
    model.set_id("m");
    model.set_state(v1::MODEL_STATE_READY);
    frontend_.SetModels({model});
    frontend_.SetScript(HelloScript());
  }

  const TestCertificates& certificates() const { return **certificates_; }

  TlsConfig Config(bool client_certificates = false) const {
    TlsConfig config{.certificate = certificates().server_cert,
                     .private_key = certificates().server_key};
    if (client_certificates) {
      config.client_ca = certificates().client_ca;
      config.http_requires_client_certificate = true;
    }
    return config;
  }

  void StartGateway(const TlsConfig& config) {
    auto credentials = LoadTlsCredentials(config);
    ASSERT_TRUE(credentials.ok()) << credentials.status().ToString();
    auto context = TlsServerContext::Create(*credentials);
    ASSERT_TRUE(context.ok()) << context.status().ToString();
    OpenAiGateway::Options options;
    options.tls = *context;
    auto started = OpenAiGateway::Start(options, frontend_, authenticator_);
    ASSERT_TRUE(started.ok()) << started.status().ToString();
    gateway_ = std::move(started).value();
  }

  std::string Url(std::string_view scheme, std::string_view path) const {
    return fmt::format("{}://localhost:{}{}", scheme, gateway_->port(), path);
  }

  static TempDir* scratch_;
  static std::optional<TestCertificates>* certificates_;
  FakeFrontend frontend_;
  FakeAuthenticator authenticator_;
  std::unique_ptr<OpenAiGateway> gateway_;
};

TempDir* OpenAiGatewayTlsTest::scratch_ = nullptr;
std::optional<TestCertificates>* OpenAiGatewayTlsTest::certificates_ = nullptr;

TEST_F(OpenAiGatewayTlsTest, HttpsServesCompletionsAndStreams) {
  ASSERT_NO_FATAL_FAILURE(StartGateway(Config()));
  Client client;
  client.TrustOnly(certificates().ca.string());
  const std::string body = R"({"model":"m","messages":[{"role":"user","content":"Hi"}]})";
  const Reply whole = client.Request("POST", Url("https", "/v1/chat/completions"), &body);
  ASSERT_EQ(whole.status, 200) << whole.error << whole.body;
  EXPECT_EQ(whole.Json().at("choices").at(0).at("message").at("content"), "Hello!");

  const std::string streamed_body =
      R"({"model":"m","messages":[{"role":"user","content":"Hi"}],"stream":true})";
  const Reply streamed =
      client.Request("POST", Url("https", "/v1/chat/completions"), &streamed_body);
  ASSERT_EQ(streamed.status, 200) << streamed.error;
  const Events events = ParseSse(streamed.body);
  ASSERT_FALSE(events.data.empty());
  EXPECT_EQ(events.data.back(), "[DONE]");
  EXPECT_EQ(streamed.num_connects, 0) << "the second request reuses the TLS connection";

  Client untrusting;
  untrusting.TrustOnly(certificates().client_ca.string());  // Not the server's CA.
  const Reply refused = untrusting.Request("GET", Url("https", "/health"), nullptr);
  EXPECT_EQ(refused.status, 0);
  EXPECT_THAT(refused.error, HasSubstr("certificate")) << "curl should not trust the server";
}

// A person who typed http:// is told to use https://, not left with a reset connection.
TEST_F(OpenAiGatewayTlsTest, PlainHttpToTheTlsPortIsAnswered400NamingHttps) {
  ASSERT_NO_FATAL_FAILURE(StartGateway(Config()));
  Client client;
  const Reply reply = client.Request("GET", Url("http", "/health"), nullptr);
  ASSERT_EQ(reply.status, 400) << reply.error;
  EXPECT_THAT(reply.body, HasSubstr("this port serves HTTPS: use https://"));
  EXPECT_EQ(reply.Json().at("error").at("type"), "invalid_request_error");
}

// Events go out from the stream's own thread while the socket takes them; through TLS, a send
// the socket took part of is finished by the connection's thread with the same bytes first
// (OpenSSL refuses anything else). The slow client still gets every event, in order.
TEST_F(OpenAiGatewayTlsTest, ASlowTlsClientHoldsTheStreamAndGetsEveryEventInOrder) {
  ASSERT_NO_FATAL_FAILURE(StartGateway(Config()));
  constexpr int kChunks = 600;  // 9.6 MB: more than a socket's send buffer grows to.
  frontend_.SetScript(NumberedScript(kChunks));
  const TlsClientContext trust(certificates().ca);
  TlsConnection connection(gateway_->port(), trust, /*receive_buffer=*/4096);
  ASSERT_EQ(connection.handshake_error(), "");
  connection.Send(HttpPost("/v1/completions", R"({"model":"m","prompt":"Hi","stream":true})"));
  const std::shared_ptr<StreamProbe> probe = frontend_.WaitForStream();
  ASSERT_NE(probe, nullptr);
  std::this_thread::sleep_for(300ms);  // Not reading: the socket's buffers fill.
  ExpectEveryNumberedEventInOrder(connection.ReadUntil("\r\n0\r\n\r\n", 30s), kChunks);
  std::lock_guard lock(probe->mutex);
  EXPECT_GT(probe->resumes, 0) << "the stream was never held for the slow client";
  EXPECT_FALSE(probe->cancelled);
}

// A client that resets its connection mid-stream cancels the generation: the sink's send into
// the reset connection fails, and the stream is let go.
TEST_F(OpenAiGatewayTlsTest, ATlsClientLeavingMidStreamCancelsTheGeneration) {
  ASSERT_NO_FATAL_FAILURE(StartGateway(Config()));
  Script script;
  for (int i = 0; i < 2000; ++i) script.chunks.push_back(Chunk("<token>" + std::string(993, '.')));
  script.chunks.push_back(Final("!"));
  script.chunk_interval = 2ms;
  frontend_.SetScript(script);
  const TlsClientContext trust(certificates().ca);
  TlsConnection connection(gateway_->port(), trust);
  ASSERT_EQ(connection.handshake_error(), "");
  connection.Send(HttpPost("/v1/completions", R"({"model":"m","prompt":"Hi","stream":true})"));
  ASSERT_THAT(connection.ReadUntil("<token>", 10s), HasSubstr("<token>")) << "the stream started";
  const std::shared_ptr<StreamProbe> probe = frontend_.last_probe();
  ASSERT_NE(probe, nullptr);
  connection.Close();
  EXPECT_TRUE(probe->WaitCancelled(5s)) << "the stream should be cancelled once the client left";
}

// R1.6 through TLS: an error after the headers is one error event, and no [DONE].
TEST_F(OpenAiGatewayTlsTest, AnErrorAfterTheStreamStartedIsOneErrorEventAndNoDone) {
  ASSERT_NO_FATAL_FAILURE(StartGateway(Config()));
  frontend_.SetScript({.chunks = {Chunk("Hel")}, .end = UnavailableError("the engine died")});
  Client client;
  client.TrustOnly(certificates().ca.string());
  const std::string body =
      R"({"model":"m","messages":[{"role":"user","content":"Hi"}],"stream":true})";
  const Reply reply = client.Request("POST", Url("https", "/v1/chat/completions"), &body);
  ASSERT_EQ(reply.status, 200) << reply.error;
  const Events events = ParseSse(reply.body);
  ASSERT_EQ(events.data.size(), 3u) << reply.body;
  EXPECT_THAT(events.data[2], HasSubstr("the engine died"));
  EXPECT_EQ(reply.body.find("[DONE]"), std::string::npos)
      << "a failed stream must not look complete";
}

// Any plain request line is answered, not just the methods OpenSSL recognises.
TEST_F(OpenAiGatewayTlsTest, AnyPlainHttpMethodIsAnswered400) {
  ASSERT_NO_FATAL_FAILURE(StartGateway(Config()));
  RawConnection connection(gateway_->port());
  connection.Send("DELETE /v1/models HTTP/1.1\r\nHost: x\r\n\r\n");
  const std::string answer = connection.ReadUntil("use https://", 10s);
  EXPECT_THAT(answer, HasSubstr("HTTP/1.1 400"));
  EXPECT_THAT(answer, HasSubstr("this port serves HTTPS"));
}

TEST_F(OpenAiGatewayTlsTest, ClientCertificatesAreRequiredWhenConfigured) {
  ASSERT_NO_FATAL_FAILURE(StartGateway(Config(/*client_certificates=*/true)));
  const std::string request = "GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n";
  {
    const TlsClientContext anonymous(certificates().ca);
    TlsConnection connection(gateway_->port(), anonymous, 0, /*expect_refusal=*/true);
    EXPECT_NE(connection.handshake_error(), "") << "served a client without a certificate";
  }
  {
    const TlsClientContext rogue(certificates().ca, certificates().rogue_cert,
                                 certificates().rogue_key);
    TlsConnection connection(gateway_->port(), rogue, 0, /*expect_refusal=*/true);
    EXPECT_NE(connection.handshake_error(), "")
        << "served a client whose certificate the client CA did not sign";
  }
  const TlsClientContext admitted(certificates().ca, certificates().client_cert,
                                  certificates().client_key);
  TlsConnection connection(gateway_->port(), admitted);
  ASSERT_EQ(connection.handshake_error(), "");
  connection.Send(request);
  EXPECT_THAT(connection.ReadUntil("\"ok\"", 10s), HasSubstr("HTTP/1.1 200"));

  Client client;
  client.TrustOnly(certificates().ca.string(), certificates().client_cert.string(),
                   certificates().client_key.string());
  const Reply reply = client.Request("GET", Url("https", "/health/live"), nullptr);
  EXPECT_EQ(reply.status, 200) << reply.error;
}

// The files are checked before anything listens; each error names the key and the file.
TEST_F(OpenAiGatewayTlsTest, BadCertificateFilesAreClearErrors) {
  const auto error = [](const TlsConfig& config) {
    auto loaded = LoadTlsCredentials(config);
    EXPECT_FALSE(loaded.ok()) << "accepted " << config.certificate << " / " << config.private_key;
    return loaded.ok() ? std::string() : loaded.status().message();
  };
  TlsConfig config = Config();
  config.private_key = certificates().client_key;  // Another certificate's key.
  EXPECT_THAT(error(config), HasSubstr("is not the key of the certificate in"));

  config = Config();
  config.certificate = scratch_->path() / "missing.crt";
  EXPECT_THAT(error(config), HasSubstr("server.tls.certificate"));
  EXPECT_THAT(error(config), HasSubstr("missing.crt"));

  config = Config();
  config.certificate = certificates().server_key;  // A key, not a certificate.
  EXPECT_THAT(error(config), HasSubstr("holds no PEM certificate"));

  config = Config();
  config.private_key = certificates().server_cert;
  EXPECT_THAT(error(config), HasSubstr("holds no PEM private key"));

  const std::filesystem::path encrypted = scratch_->path() / "encrypted.key";
  const auto made = inferbox::testing::RunCommand(
      {inferbox::testing::OpenSslCommand(), "pkey", "-in", certificates().server_key.string(),
       "-aes256", "-passout", "pass:secret", "-out", encrypted.string()},
      scratch_->path());
  ASSERT_EQ(made.exit_code, 0) << made.err;
  config = Config();
  config.private_key = encrypted;
  EXPECT_THAT(error(config), HasSubstr("is encrypted"));

  config = Config(/*client_certificates=*/true);
  config.client_ca = certificates().server_key;
  EXPECT_THAT(error(config), HasSubstr("server.tls.client_ca"));

  // A chain whose intermediate is corrupt is refused, not shortened.
  const std::filesystem::path broken_chain = scratch_->path() / "broken-chain.crt";
  std::ofstream(broken_chain) << inferbox::testing::ReadTextFile(certificates().server_cert)
                              << "-----BEGIN CERTIFICATE-----\nnot base64\n"
                                 "-----END CERTIFICATE-----\n";
  config = Config();
  config.certificate = broken_chain;
  EXPECT_THAT(error(config), HasSubstr("certificate 2 of the chain cannot be read"));

  // What OpenSSL's policy refuses (Debian: an RSA key under 2048 bits) is a configuration
  // error at load, not a failure once the daemon listens.
  const std::filesystem::path weak_key = scratch_->path() / "weak.key";
  const std::filesystem::path weak_cert = scratch_->path() / "weak.crt";
  const auto weak = inferbox::testing::RunCommand(
      {inferbox::testing::OpenSslCommand(), "req", "-x509", "-newkey", "rsa:1024", "-noenc",
       "-keyout", weak_key.string(), "-out", weak_cert.string(), "-days", "3", "-subj", "/CN=weak"},
      scratch_->path());
  ASSERT_EQ(weak.exit_code, 0) << weak.err;
  EXPECT_THAT(error({.certificate = weak_cert, .private_key = weak_key}),
              HasSubstr("cannot be used"));

  auto good = LoadTlsCredentials(Config(/*client_certificates=*/true));
  ASSERT_TRUE(good.ok()) << good.status().ToString();
  EXPECT_EQ(good->subject, "CN=server");
  EXPECT_GT(good->not_after, std::chrono::system_clock::now() + 48h);
  EXPECT_LT(good->not_after, std::chrono::system_clock::now() + 73h);
  EXPECT_FALSE(good->client_ca_pem.empty());
}

}  // namespace
}  // namespace inferbox::daemon
