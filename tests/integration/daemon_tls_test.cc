// TLS on the real daemon ([server.tls], CONVENTIONS R2.8/R6.9): gRPC and the OpenAI HTTP API
// served with the configured certificate to clients that trust its CA, plain-text clients
// refused; mutual TLS on gRPC (a client without a certificate the client CA signed fails the
// handshake), inferboxctl with its --tls-* options; a non-loopback listener starts with TLS
// and keys and is refused without keys; bad files stop the start with EX_CONFIG and a STATUS.
#include <signal.h>

#include <fstream>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "daemon_fixture.h"
#include "http_client.h"
#include "inferbox/v1/admin.grpc.pb.h"
#include "inferbox/v1/inference.grpc.pb.h"
#include "openai_client.h"
#include "test_certificates.h"
#include "tiny_model.h"

namespace inferbox::testing {
namespace {

namespace api = ::inferbox::v1;
using daemon::openai_test::Client;
using daemon::openai_test::Events;
using daemon::openai_test::ParseSse;
using daemon::openai_test::Reply;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

class DaemonTlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new TempDir();
    certificates_ = new std::optional<TestCertificates>(MakeTestCertificates(scratch_->path()));
    MakeTinyModel(scratch_->path() / "model", "qwen3", {"--arch", "qwen3", "--seed", "5"},
                  scratch_->path());
  }
  static void TearDownTestSuite() {
    delete certificates_;
    delete scratch_;
  }
  void SetUp() override {
    ASSERT_TRUE(certificates_->has_value()) << "no test certificates (is openssl installed?)";
  }

  const TestCertificates& certificates() const { return **certificates_; }

  // [server.tls] with the test certificates; `extra`: more keys of the table.
  std::string TlsTable(const std::string& extra = "") const {
    return fmt::format("[server.tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n{}",
                       certificates().server_cert.string(), certificates().server_key.string(),
                       extra);
  }
  std::string ModelTables() const {
    return "[engines]\nexecutable = \"" + std::string(INFERBOX_ENGINE_PATH) +
           "\"\n[[models]]\nname = \"tiny\"\npath = \"" + (scratch_->path() / "model").string() +
           "\"\nkv_cache_gib = 0.1\n";
  }

  // Trusts the test server CA; presents `certificate` and `key` when given.
  std::shared_ptr<grpc::ChannelCredentials> GrpcTls(const std::filesystem::path& certificate = {},
                                                    const std::filesystem::path& key = {}) const {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = ReadTextFile(certificates().ca);
    if (!certificate.empty()) {
      options.pem_cert_chain = ReadTextFile(certificate);
      options.pem_private_key = ReadTextFile(key);
    }
    return grpc::SslCredentials(options);
  }

  // A GetStatus over `credentials`: its status (the handshake's failure is UNAVAILABLE).
  static grpc::Status Status(const std::string& address,
                             const std::shared_ptr<grpc::ChannelCredentials>& credentials,
                             api::GetStatusResponse* response = nullptr) {
    auto admin = api::Admin::NewStub(grpc::CreateChannel(address, credentials));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 5s);
    api::GetStatusResponse ignored;
    return admin->GetStatus(&context, {}, response != nullptr ? response : &ignored);
  }

  CommandResult Ctl(const std::string& address, std::vector<std::string> arguments) {
    arguments.insert(arguments.begin(), {INFERBOXCTL_PATH, "--address", address});
    return RunCommand(arguments, dir_.path());
  }

  static TempDir* scratch_;
  static std::optional<TestCertificates>* certificates_;
  TempDir dir_;
};

TempDir* DaemonTlsTest::scratch_ = nullptr;
std::optional<TestCertificates>* DaemonTlsTest::certificates_ = nullptr;

TEST_F(DaemonTlsTest, GrpcAndHttpsServeWithTheCertificateAndPlainClientsAreRefused) {
  DaemonProcess daemon(dir_, {.config_text = TestConfig() + TlsTable() + ModelTables(),
                              .grpc_credentials = GrpcTls()});
  ASSERT_TRUE(daemon.WaitReady());
  ASSERT_TRUE(daemon.WaitInferenceServing());

  // gRPC: a generation through TLS, as a plain one would run.
  auto inference = api::Inference::NewStub(grpc::CreateChannel(daemon.grpc_address(), GrpcTls()));
  const ChatResult chat = RunChat(*inference, TinyChat(8));
  ASSERT_TRUE(chat.status.ok()) << chat.status.error_message();
  EXPECT_EQ(chat.tokens, 8u);
  const grpc::Status plain = Status(daemon.grpc_address(), grpc::InsecureChannelCredentials());
  EXPECT_EQ(plain.error_code(), grpc::StatusCode::UNAVAILABLE)
      << "a plain-text gRPC client was served by a TLS listener";

  // HTTPS: a streamed chat completion with usage, the same 8 tokens.
  Client client;
  client.TrustOnly(certificates().ca.string());
  const std::string body =
      R"({"model":"tiny","messages":[{"role":"user","content":"Write me a poem about the sea."}],)"
      R"("max_tokens":8,"ignore_eos":true,"temperature":0,"stream":true,)"
      R"("stream_options":{"include_usage":true}})";
  const Reply streamed =
      client.Request("POST", "https://" + daemon.http_address() + "/v1/chat/completions", &body);
  ASSERT_EQ(streamed.status, 200) << streamed.error << streamed.body;
  const Events events = ParseSse(streamed.body);
  ASSERT_GE(events.data.size(), 2u);
  EXPECT_EQ(events.data.back(), "[DONE]");
  EXPECT_THAT(events.data[events.data.size() - 2], HasSubstr(R"("completion_tokens":8)"));

  Client plain_http;
  const Reply refused =
      plain_http.Request("GET", "http://" + daemon.http_address() + "/health", nullptr);
  EXPECT_EQ(refused.status, 400) << refused.error;
  EXPECT_THAT(refused.body, HasSubstr("use https://"));

  // Status says how each listener is secured.
  api::GetStatusResponse status;
  ASSERT_TRUE(Status(daemon.grpc_address(), GrpcTls(), &status).ok());
  for (const auto& listener : status.listeners()) {
    EXPECT_EQ(listener.security(), listener.name() == "metrics" ? "" : "TLS") << listener.name();
  }
  EXPECT_THAT(daemon.Logs(),
              HasSubstr("TLS on the gRPC and HTTP listeners: certificate CN=server"));

  // The certificate's expiry, for the alert rules: the test CA made it valid for three days.
  const HttpResponse metrics = HttpGet("http://" + daemon.metrics_address() + "/metrics");
  ASSERT_EQ(metrics.status, 200) << metrics.error;
  const std::string name = "\ninferbox_tls_certificate_expiry_timestamp_seconds ";
  const size_t at = metrics.body.find(name);
  ASSERT_NE(at, std::string::npos) << "no certificate expiry on /metrics";
  const double expiry = std::stod(metrics.body.substr(at + name.size()));
  const double now = std::chrono::duration_cast<std::chrono::seconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
  EXPECT_GT(expiry, now + 2 * 86400);
  EXPECT_LT(expiry, now + 3 * 86400 + 60);
}

// The official `openai` npm client over HTTPS, trusting the box's CA as users' Node
// applications do (NODE_EXTRA_CA_CERTS): every check of the conformance script, streams too.
TEST_F(DaemonTlsTest, TheOfficialOpenAiClientWorksOverHttps) {
  DaemonProcess daemon(dir_, {.config_text = TestConfig() + TlsTable() + ModelTables(),
                              .grpc_credentials = GrpcTls()});
  ASSERT_TRUE(daemon.WaitReady());
  ASSERT_TRUE(daemon.WaitInferenceServing());
  const CommandResult result = RunCommand(
      {INFERBOX_NODE, std::string(INFERBOX_REFERENCE_DIR) + "/openai_conformance.mjs", "--base-url",
       "https://" + daemon.http_address() + "/v1", "--model", "tiny", "--concurrent", "20"},
      dir_.path(), 240s, {"NODE_EXTRA_CA_CERTS=" + certificates().ca.string()});
  EXPECT_EQ(result.exit_code, 0) << result.out << result.err << "\ndaemon log:\n"
                                 << daemon.Logs().substr(0, 20000);
  EXPECT_THAT(result.out, HasSubstr("ok 20 concurrent streams"));
  EXPECT_THAT(result.out, HasSubstr("PASS"));
}

// R2.8: with client_ca, a gRPC client without a certificate that CA signed fails the
// handshake; HTTP stays TLS without client certificates unless it asks for them too.
TEST_F(DaemonTlsTest, MutualTlsOnGrpcRefusesClientsWithoutTheClientCasCertificate) {
  const std::string ca = "client_ca = \"" + certificates().client_ca.string() + "\"\n";
  DaemonProcess daemon(
      dir_, {.config_text = TestConfig() + TlsTable(ca),
             .grpc_credentials = GrpcTls(certificates().client_cert, certificates().client_key)});
  ASSERT_TRUE(daemon.WaitReady());

  EXPECT_TRUE(
      Status(daemon.grpc_address(), GrpcTls(certificates().client_cert, certificates().client_key))
          .ok());
  EXPECT_EQ(Status(daemon.grpc_address(), GrpcTls()).error_code(), grpc::StatusCode::UNAVAILABLE)
      << "served a gRPC client without a certificate";
  EXPECT_EQ(
      Status(daemon.grpc_address(), GrpcTls(certificates().rogue_cert, certificates().rogue_key))
          .error_code(),
      grpc::StatusCode::UNAVAILABLE)
      << "served a gRPC client whose certificate the client CA did not sign";

  Client client;
  client.TrustOnly(certificates().ca.string());
  const Reply live =
      client.Request("GET", "https://" + daemon.http_address() + "/health/live", nullptr);
  EXPECT_EQ(live.status, 200) << live.error;

  // inferboxctl: with its certificate, status shows the listeners' security; without, it
  // fails and says which options it needs.
  const CommandResult admitted =
      Ctl(daemon.grpc_address(), {"--tls-ca", certificates().ca.string(), "--tls-cert",
                                  certificates().client_cert.string(), "--tls-key",
                                  certificates().client_key.string(), "status"});
  EXPECT_EQ(admitted.exit_code, 0) << admitted.err;
  EXPECT_THAT(admitted.out, HasSubstr("(TLS, client certificates required)"));
  // The audit log names the caller's certificate (from gRPC's AuthContext, R2.8).
  const CommandResult audit =
      Ctl(daemon.grpc_address(), {"--tls-ca", certificates().ca.string(), "--tls-cert",
                                  certificates().client_cert.string(), "--tls-key",
                                  certificates().client_key.string(), "audit", "--json"});
  EXPECT_EQ(audit.exit_code, 0) << audit.err;
  EXPECT_THAT(audit.out, HasSubstr("(certificate admin.inferbox.test)"));
  const CommandResult anonymous = Ctl(
      daemon.grpc_address(), {"--timeout", "2", "--tls-ca", certificates().ca.string(), "status"});
  EXPECT_EQ(anonymous.exit_code, 1);
  EXPECT_THAT(anonymous.err, HasSubstr("--tls-cert and --tls-key"));
  const CommandResult plain = Ctl(daemon.grpc_address(), {"--timeout", "2", "status"});
  EXPECT_EQ(plain.exit_code, 1);
  EXPECT_THAT(plain.err, HasSubstr("If the daemon serves TLS ([server.tls]), pass --tls-ca"));
}

// R6.9: beyond loopback, TLS and keys are both required (or the explicit insecure flag).
TEST_F(DaemonTlsTest, ANonLoopbackListenerStartsWithTlsAndKeysOnly) {
  const std::string remote =
      "[server]\ngrpc_listen = \"0.0.0.0:0\"\nhttp_listen = \"127.0.0.1:0\"\n"
      "metrics_listen = \"127.0.0.1:0\"\nshutdown_timeout_seconds = 5\n";
  {
    DaemonProcess keyless(dir_, {.config_text = remote + TlsTable()}, "keyless");
    const auto exit_code = keyless.process().WaitForExit(kStartTimeout);
    ASSERT_TRUE(exit_code) << "started on 0.0.0.0 with TLS but without keys";
    EXPECT_EQ(*exit_code, 78);
    EXPECT_THAT(keyless.Logs(), HasSubstr("[auth] require_keys is false"));
  }
  DaemonProcess daemon(dir_, {.config_text = remote + TlsTable() + "[auth]\nrequire_keys = true\n"},
                       "keyed");
  ASSERT_TRUE(daemon.WaitReady());
  // Keys are required: an anonymous status call over TLS is refused by auth, not TLS.
  const std::string port = daemon.grpc_address().substr(daemon.grpc_address().rfind(':') + 1);
  EXPECT_EQ(Status("127.0.0.1:" + port, GrpcTls()).error_code(), grpc::StatusCode::UNAUTHENTICATED);

  // A reload may not turn keys off while the listener beyond loopback stays bound (moving it
  // to loopback takes a restart): refused, and keys stay required.
  std::ofstream(daemon.config_path())
      << "[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n"
         "metrics_listen = \"127.0.0.1:0\"\nshutdown_timeout_seconds = 5\n" +
             TlsTable() + "[auth]\nrequire_keys = false\n";
  daemon.process().Signal(SIGHUP);
  const auto ready = daemon.notify().WaitFor("READY=1", 10s);
  ASSERT_TRUE(ready) << daemon.Logs();
  EXPECT_THAT(*ready, HasSubstr("configuration reload refused"));
  EXPECT_THAT(*ready, HasSubstr("require_keys is false"));
  EXPECT_EQ(Status("127.0.0.1:" + port, GrpcTls()).error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(DaemonTlsTest, AKeyThatIsNotTheCertificatesStopsTheStartWithExConfig) {
  const std::string config =
      TestConfig() + fmt::format("[server.tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
                                 certificates().server_cert.string(),
                                 certificates().client_key.string());
  DaemonProcess daemon(dir_, {.config_text = config});
  const auto exit_code = daemon.process().WaitForExit(kStartTimeout);
  ASSERT_TRUE(exit_code) << "started with a key that is not the certificate's";
  EXPECT_EQ(*exit_code, 78) << "configuration errors exit with EX_CONFIG (78)";
  daemon.notify().ReceivePending();
  ASSERT_FALSE(daemon.notify().received().empty());
  EXPECT_THAT(daemon.notify().received().back(), HasSubstr("is not the key of the certificate in"));
  EXPECT_THAT(daemon.notify().received().back(), HasSubstr("server.tls.private_key"));

  // --check-config finds it too, before a restart would.
  const CommandResult check = RunCommand(
      {INFERBOXD_PATH, "--check-config", "--config", daemon.config_path().string()}, dir_.path());
  EXPECT_EQ(check.exit_code, 1);
  EXPECT_THAT(check.err, HasSubstr("is not the key of the certificate in"));
}

}  // namespace
}  // namespace inferbox::testing
