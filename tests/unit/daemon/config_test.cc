#include "inferbox/daemon/config.h"

#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "temp_dir.h"

namespace inferbox::daemon {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string ErrorOf(std::string_view text) {
  auto config = ParseConfig(text, "test.toml");
  EXPECT_FALSE(config.ok()) << "expected the configuration to be refused:\n" << text;
  return config.ok() ? "" : config.status().message();
}

TEST(Config, EmptyTextGivesDefaults) {
  auto config = ParseConfig("", "empty.toml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(*config, DaemonConfig{});
  EXPECT_EQ(config->grpc_listen.ToString(), "127.0.0.1:7070");
  EXPECT_EQ(config->metrics_listen.ToString(), "127.0.0.1:9400");
}

TEST(Config, EmbeddedDefaultDocumentsTheRealDefaults) {
  auto config = ParseConfig(EmbeddedDefaultConfig(), "(embedded default)");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  // Every key equals DaemonConfig's default, except the one model the box ships with.
  DaemonConfig expected;
  ModelServeConfig demo;
  demo.name = "inferbox-demo";
  demo.path = "models/inferbox-demo";
  demo.kv_cache_gib = 0.25;
  expected.models.push_back(demo);
  EXPECT_EQ(*config, expected)
      << "packaging/config/inferbox.toml says different defaults than DaemonConfig has";
}

TEST(Config, ParsesEveryKey) {
  auto config = ParseConfig(R"(
[server]
grpc_listen = "[::1]:7171"
metrics_listen = "0.0.0.0:9500"
grpc_reflection = false
shutdown_timeout_seconds = 2.5
request_timeout_seconds = 600

[paths]
state_dir = "/srv/inferbox/state/"
runtime_dir = "/run/inferbox-test"

[log]
level = "debug"
)",
                            "full.toml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->grpc_listen.host, "::1");
  EXPECT_EQ(config->grpc_listen.port, 7171);
  EXPECT_EQ(config->grpc_listen.ToString(), "[::1]:7171");
  EXPECT_EQ(config->metrics_listen.ToString(), "0.0.0.0:9500");
  EXPECT_FALSE(config->grpc_reflection);
  EXPECT_EQ(config->shutdown_timeout, std::chrono::milliseconds(2500));
  EXPECT_EQ(config->request_timeout, std::chrono::minutes(10));
  EXPECT_EQ(config->state_dir, std::filesystem::path("/srv/inferbox/state/"));
  EXPECT_EQ(config->runtime_dir, std::filesystem::path("/run/inferbox-test"));
  EXPECT_EQ(config->log_level, spdlog::level::debug);
}

TEST(Config, BadTomlNamesFileAndLine) {
  EXPECT_THAT(ErrorOf("[server]\ngrpc_listen = \"127.0.0.1:7070\n"),
              AllOf(StartsWith("test.toml:2:"), HasSubstr("invalid TOML")));
}

TEST(Config, UnknownKeyIsAnErrorNamingKeyLineAndKnownKeys) {
  const std::string error = ErrorOf("[server]\n\ngrpc_lsten = \"127.0.0.1:7070\"\n");
  EXPECT_THAT(error, StartsWith("test.toml:3:"));
  EXPECT_THAT(error, HasSubstr("server.grpc_lsten: unknown key"));
  EXPECT_THAT(error, HasSubstr("grpc_listen")) << "should list the keys that do exist";
}

TEST(Config, UnknownSectionIsAnError) {
  EXPECT_THAT(ErrorOf("[sever]\ngrpc_listen = \"127.0.0.1:7070\"\n"),
              AllOf(StartsWith("test.toml:1:"), HasSubstr("sever: unknown key")));
  EXPECT_THAT(ErrorOf("log_level = \"info\"\n"), HasSubstr("log_level: unknown key"));
}

TEST(Config, WrongTypesNameTheExpectedType) {
  EXPECT_THAT(ErrorOf("[server]\ngrpc_listen = 7070\n"),
              AllOf(StartsWith("test.toml:2:"), HasSubstr("server.grpc_listen"),
                    HasSubstr("expected a string \"host:port\", got an integer")));
  EXPECT_THAT(ErrorOf("[server]\nshutdown_timeout_seconds = \"30\"\n"),
              HasSubstr("server.shutdown_timeout_seconds: expected a number, got a string"));
  EXPECT_THAT(ErrorOf("[server]\ngrpc_reflection = \"yes\"\n"),
              HasSubstr("expected a boolean (true or false), got a string"));
  EXPECT_THAT(ErrorOf("server = 1\n"), HasSubstr("server: expected a table [server]"));
}

TEST(Config, OutOfRangeValuesAreRefused) {
  EXPECT_THAT(ErrorOf("[server]\ngrpc_listen = \"127.0.0.1:70000\"\n"),
              HasSubstr("is not a number from 0 to 65535"));
  EXPECT_THAT(ErrorOf("[server]\ngrpc_listen = \"box.example.com:7070\"\n"),
              HasSubstr("is not an IP address"));
  EXPECT_THAT(ErrorOf("[server]\nmetrics_listen = \"9400\"\n"), HasSubstr("is not host:port"));
  EXPECT_THAT(ErrorOf("[server]\nshutdown_timeout_seconds = 0\n"),
              HasSubstr("must be more than 0 and at most 3600 seconds"));
  EXPECT_THAT(ErrorOf("[server]\nrequest_timeout_seconds = -1\n"),
              HasSubstr("server.request_timeout_seconds"));
  EXPECT_THAT(ErrorOf("[paths]\nstate_dir = \"var/lib/inferbox\"\n"),
              HasSubstr("paths.state_dir: \"var/lib/inferbox\" is not an absolute path"));
  EXPECT_THAT(ErrorOf("[log]\nlevel = \"loud\"\n"),
              AllOf(HasSubstr("log.level"), HasSubstr("unknown log level \"loud\"")));
}

TEST(Config, MissingFileIsAnErrorNamingThePath) {
  auto config = LoadConfigFile("/nonexistent/inferbox.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(config.status().message(), HasSubstr("/nonexistent/inferbox.toml"));
}

TEST(Config, LoadsFileAndNamesItInErrors) {
  inferbox::testing::TempDir dir;
  const auto path = dir / "inferbox.toml";
  std::ofstream(path) << "[log]\nlevel = \"warn\"\n[server]\nport = 1\n";
  auto config = LoadConfigFile(path);
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), StartsWith(path.string() + ":4:"));
}

TEST(ListenAddress, ParsesAndClassifies) {
  struct Case {
    std::string_view text;
    std::string_view canonical;
    bool loopback;
  };
  for (const Case& c :
       {Case{"127.0.0.1:7070", "127.0.0.1:7070", true}, Case{"127.8.9.10:0", "127.8.9.10:0", true},
        Case{"localhost:80", "127.0.0.1:80", true}, Case{"[::1]:7070", "[::1]:7070", true},
        Case{"0.0.0.0:7070", "0.0.0.0:7070", false}, Case{"10.1.2.3:7070", "10.1.2.3:7070", false},
        Case{"[::]:7070", "[::]:7070", false}}) {
    auto address = ParseListenAddress(c.text);
    ASSERT_TRUE(address.ok()) << c.text << ": " << address.status().ToString();
    EXPECT_EQ(address->ToString(), c.canonical) << c.text;
    EXPECT_EQ(address->IsLoopback(), c.loopback) << c.text;
  }
  for (std::string_view bad : {"", ":7070", "127.0.0.1", "127.0.0.1:", "127.0.0.1:-1",
                               "127.0.0.1:80x", "::1:7070", "[::1]7070", "300.1.1.1:1"}) {
    EXPECT_FALSE(ParseListenAddress(bad).ok()) << "accepted \"" << bad << "\"";
  }
}

TEST(NetworkExposure, NonLoopbackGrpcNeedsExplicitInsecureFlag) {
  DaemonConfig config;
  EXPECT_TRUE(CheckNetworkExposure(config, false).ok());
  config.metrics_listen = *ParseListenAddress("0.0.0.0:9400");
  EXPECT_TRUE(CheckNetworkExposure(config, false).ok()) << "metrics may be scraped remotely";
  config.grpc_listen = *ParseListenAddress("0.0.0.0:7070");
  const Status refused = CheckNetworkExposure(config, false);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.message(), HasSubstr("not a loopback address"));
  EXPECT_THAT(refused.message(), HasSubstr("--insecure-allow-unauthenticated"));
  EXPECT_TRUE(CheckNetworkExposure(config, true).ok());
}

TEST(NetworkExposure, NonLoopbackHttpIsRefusedToo) {
  DaemonConfig config;
  config.http_listen = *ParseListenAddress("10.1.2.3:8080");
  const Status refused = CheckNetworkExposure(config, false);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.message(), HasSubstr("server.http_listen"));
  EXPECT_TRUE(CheckNetworkExposure(config, true).ok());
}

TEST(NetworkExposure, NonLoopbackNeedsTlsAndKeys) {
  DaemonConfig config;
  config.grpc_listen = *ParseListenAddress("0.0.0.0:7070");
  config.tls.certificate = "/etc/inferbox/tls/server.crt";
  config.tls.private_key = "/etc/inferbox/tls/server.key";
  const Status keyless = CheckNetworkExposure(config, false);
  ASSERT_FALSE(keyless.ok()) << "TLS alone lets anyone who reaches the port use the box";
  EXPECT_THAT(keyless.message(), HasSubstr("require_keys is false"));
  config.require_keys = true;
  EXPECT_TRUE(CheckNetworkExposure(config, false).ok());
  config.tls = {};
  const Status clear_text = CheckNetworkExposure(config, false);
  ASSERT_FALSE(clear_text.ok()) << "keys would cross the network in clear text";
  EXPECT_THAT(clear_text.message(), HasSubstr("[server.tls] is not set"));
}

TEST(Config, ParsesMetricBucketsAndRefusesBadOnes) {
  auto config = ParseConfig(R"([metrics]
time_to_first_token_buckets = [0.05, 0.5, 5]
inter_token_latency_buckets = [0.02, 0.2]
request_time_buckets = [1, 10, 100]
token_count_buckets = [128, 1024, 8192]
)",
                            "metrics.toml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->metric_buckets.first_token_seconds, (std::vector<double>{0.05, 0.5, 5}));
  EXPECT_EQ(config->metric_buckets.inter_token_seconds, (std::vector<double>{0.02, 0.2}));
  EXPECT_EQ(config->metric_buckets.request_seconds, (std::vector<double>{1, 10, 100}));
  EXPECT_EQ(config->metric_buckets.tokens, (std::vector<double>{128, 1024, 8192}));
  EXPECT_EQ(DaemonConfig{}.metric_buckets.first_token_seconds.front(), 0.001) << "vLLM's";
  EXPECT_EQ(DaemonConfig{}.metric_buckets.first_token_seconds.back(), 2560);

  EXPECT_THAT(ErrorOf("[metrics]\ntoken_count_buckets = [10, 5]\n"),
              HasSubstr("metrics.token_count_buckets: bucket bounds must increase strictly"));
  EXPECT_THAT(ErrorOf("[metrics]\nrequest_time_buckets = [0, 1]\n"),
              HasSubstr("bucket bounds are positive numbers"));
  EXPECT_THAT(ErrorOf("[metrics]\nrequest_time_buckets = []\n"), HasSubstr("needs 1 to 64"));
  EXPECT_THAT(ErrorOf("[metrics]\nrequest_time_buckets = 5\n"),
              HasSubstr("expected an array of numbers"));
  EXPECT_THAT(ErrorOf("[metrics]\nttft_buckets = [1]\n"), HasSubstr("unknown key"));
}

TEST(Config, ParsesTheTlsTable) {
  auto config = ParseConfig(R"([server.tls]
certificate = "/etc/inferbox/tls/server.crt"
private_key = "/etc/inferbox/tls/server.key"
client_ca = "/etc/inferbox/tls/clients.crt"
http_requires_client_certificate = true
)",
                            "tls.toml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_TRUE(config->tls.enabled());
  EXPECT_EQ(config->tls.certificate, "/etc/inferbox/tls/server.crt");
  EXPECT_EQ(config->tls.private_key, "/etc/inferbox/tls/server.key");
  EXPECT_EQ(config->tls.client_ca, std::filesystem::path("/etc/inferbox/tls/clients.crt"));
  EXPECT_TRUE(config->tls.http_requires_client_certificate);
  EXPECT_FALSE(DaemonConfig{}.tls.enabled());
}

TEST(Config, RefusesIncompleteTlsTablesNamingTheKey) {
  EXPECT_THAT(ErrorOf("[server.tls]\ncertificate = \"/a.crt\"\n"),
              HasSubstr("server.tls: needs both certificate and private_key"));
  EXPECT_THAT(ErrorOf("[server.tls]\ncertificate = \"/a.crt\"\nprivate_key = \"/a.key\"\n"
                      "http_requires_client_certificate = true\n"),
              HasSubstr("http_requires_client_certificate needs client_ca"));
  EXPECT_THAT(ErrorOf("[server.tls]\ncertificate = \"a.crt\"\nprivate_key = \"/a.key\"\n"),
              HasSubstr("server.tls.certificate: \"a.crt\" is not an absolute path"));
  EXPECT_THAT(ErrorOf("[server.tls]\ncert = \"/a.crt\"\n"),
              HasSubstr("server.tls.cert: unknown key"));
  EXPECT_THAT(ErrorOf("[server]\ntls = true\n"), HasSubstr("server.tls: expected a table"));
}

TEST(ModelsConfig, ParsesModelsEnginesAndAuth) {
  auto config = ParseConfig(R"(
[server]
http_listen = "127.0.0.1:0"
[auth]
require_keys = true
[engines]
executable = "/opt/inferbox/inferbox-engine"
health_interval_seconds = 0.5
max_restarts = 3
[[models]]
name = "qwen3-8b"
path = "/srv/models/qwen3-8b"
device = "cuda"
gpus = [0, 1]
replicas = 2
kv_cache_gib = 20
max_model_len = 32768
quantization = "fp8"
kv_cache_dtype = "fp8"
queue_timeout_seconds = 2.5
max_waiting_tokens = 65536
sampling_defaults = "openai"
[[models]]
name = "demo"
path = "models/demo"
)",
                            "test.toml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->http_listen.port, 0);
  EXPECT_TRUE(config->require_keys);
  EXPECT_EQ(config->engines.executable, std::filesystem::path("/opt/inferbox/inferbox-engine"));
  EXPECT_EQ(config->engines.health_interval, std::chrono::milliseconds(500));
  EXPECT_EQ(config->engines.max_restarts, 3);
  ASSERT_EQ(config->models.size(), 2u);
  EXPECT_EQ(config->models[0].name, "qwen3-8b");
  EXPECT_EQ(config->models[0].gpus, (std::vector<uint32_t>{0, 1}));
  EXPECT_EQ(config->models[0].replicas, 2u);
  EXPECT_EQ(config->models[0].kv_cache_gib, 20.0);
  EXPECT_EQ(config->models[0].max_model_len, 32768);
  EXPECT_EQ(config->models[0].quantization, "fp8");
  EXPECT_EQ(config->models[1].quantization, "none");
  EXPECT_EQ(config->models[0].kv_cache_dtype, "fp8");
  EXPECT_EQ(config->models[0].queue_timeout_seconds, 2.5);
  EXPECT_EQ(config->models[1].queue_timeout_seconds, 0.0) << "no queue timeout by default";
  EXPECT_EQ(config->models[0].max_waiting_tokens, 65536);
  EXPECT_EQ(config->models[1].max_waiting_tokens, 0) << "no token limit by default";
  EXPECT_EQ(config->models[1].kv_cache_dtype, "auto");
  EXPECT_EQ(config->models[0].sampling_defaults, "openai");
  EXPECT_EQ(config->models[1].sampling_defaults, "model") << "generation_config.json by default";
  EXPECT_EQ(config->models[1].device, "cpu");
  EXPECT_EQ(config->models[1].path, std::filesystem::path("models/demo"));
  EXPECT_EQ(config->models[1].replicas, 1u);
}

TEST(ModelsConfig, RefusesModelsThatCannotRunNamingTheKey) {
  EXPECT_THAT(ErrorOf("[[models]]\nname = \"Demo!\"\npath = \"x\"\n"),
              AllOf(HasSubstr("models[0].name"), HasSubstr("[a-z0-9]")));
  EXPECT_THAT(ErrorOf("[[models]]\nname = \"demo\"\n"), HasSubstr("models[0].path: is required"));
  EXPECT_THAT(ErrorOf("[[models]]\nname = \"a\"\npath = \"x\"\n[[models]]\nname = \"a\"\n"
                      "path = \"y\"\n"),
              HasSubstr("used twice"));
  EXPECT_THAT(ErrorOf("[[models]]\nname = \"a\"\npath = \"x\"\ngpus = [0]\n"),
              HasSubstr("models[0].gpus: only applies with device = \"cuda\""));
  EXPECT_THAT(ErrorOf("[[models]]\nname = \"a\"\npath = \"x\"\ndevice = \"cuda\"\n"
                      "gpus = [0, 1, 2]\nreplicas = 2\n"),
              HasSubstr("do not split evenly"));
  EXPECT_THAT(ErrorOf("[[models]]\nname = \"a\"\npath = \"x\"\nreplicas = 0\n"),
              HasSubstr("models[0].replicas: must be an integer from 1 to 64"));
  EXPECT_THAT(ErrorOf("[[models]]\nname = \"a\"\npath = \"x\"\nkv_cache = 1\n"),
              HasSubstr("unknown key"));
  EXPECT_THAT(ErrorOf("[[models]]\nname = \"a\"\npath = \"x\"\nquantization = \"int4\"\n"),
              HasSubstr("models[0].quantization: \"int4\" is not \"none\" or \"fp8\""));
  EXPECT_THAT(ErrorOf("[[models]]\nname = \"a\"\npath = \"x\"\nkv_cache_dtype = \"bf16\"\n"),
              HasSubstr("models[0].kv_cache_dtype: \"bf16\" is not \"auto\" or \"fp8\""));
  EXPECT_THAT(ErrorOf("[[models]]\nname = \"a\"\npath = \"x\"\nsampling_defaults = \"vllm\"\n"),
              HasSubstr("models[0].sampling_defaults: \"vllm\" is not \"model\" or \"openai\""));
  EXPECT_THAT(ErrorOf("[[models]]\nname = \"a\"\npath = \"x\"\nqueue_timeout_seconds = -2\n"),
              HasSubstr("models[0].queue_timeout_seconds"));
  EXPECT_THAT(ErrorOf("[auth]\nrequire_keys = \"yes\"\n"), HasSubstr("auth.require_keys"));
  EXPECT_THAT(ErrorOf("[engines]\nhealth_timeout_seconds = 0\n"),
              HasSubstr("engines.health_timeout_seconds"));
}

TEST(ModelsConfig, TensorParallelGpusAndPlacementByProfile) {
  auto config = ParseConfig(
      "[[models]]\nname = \"a\"\npath = \"x\"\ndevice = \"cuda\"\ngpus = [0, 1, 2, 3]\n"
      "replicas = 2\ntensor_parallel = 2\n"
      "[[models]]\nname = \"b\"\npath = \"y\"\ntensor_parallel = 2\n"
      "[[models]]\nname = \"c\"\npath = \"z\"\ndevice = \"cuda\"\n",
      "test.toml");
  ASSERT_TRUE(config.ok()) << config.status().message();
  EXPECT_EQ(config->models[0].tensor_parallel, 2u);
  EXPECT_EQ(config->models[1].tensor_parallel, 2u) << "CPU ranks: threads of one engine";
  EXPECT_EQ(config->models[1].replicas, 1u);
  // Placed by the daemon on the GPUs it finds: replicas 0 asks for as many as fit.
  EXPECT_TRUE(config->models[2].gpus.empty());
  EXPECT_EQ(config->models[2].replicas, 0u);
  EXPECT_EQ(config->models[2].tensor_parallel, 0u);

  EXPECT_THAT(ErrorOf("[[models]]\nname = \"a\"\npath = \"x\"\ndevice = \"cuda\"\n"
                      "gpus = [0, 1, 2]\nreplicas = 2\ntensor_parallel = 2\n"),
              HasSubstr("models[0].gpus: lists 3 GPUs, but replicas x tensor_parallel = 2 x 2 "
                        "needs 4"));
  EXPECT_THAT(ErrorOf("[[models]]\nname = \"a\"\npath = \"x\"\ndevice = \"cuda\"\n"
                      "gpus = [1, 1]\n"),
              HasSubstr("models[0].gpus: lists a GPU twice"));
  EXPECT_THAT(ErrorOf("[[models]]\nname = \"a\"\npath = \"x\"\ntensor_parallel = 0\n"),
              HasSubstr("models[0].tensor_parallel: must be an integer from 1 to 64"));
  EXPECT_THAT(ErrorOf("[[models]]\nname = \"a\"\npath = \"x\"\ndevice = \"cuda\"\n"
                      "gpus = [0, 1]\n[[models]]\nname = \"b\"\npath = \"y\"\n"
                      "device = \"cuda\"\ngpus = [1]\n"),
              AllOf(HasSubstr("models[1].gpus"), HasSubstr("GPU 1 is already used by model a")));
}

TEST(ModelStoreConfig, ParsesKeysMirrorsCaFileAndProxy) {
  inferbox::testing::TempDir dir;
  const std::string pem =
      "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n"
      "-----END PUBLIC KEY-----\n";
  std::ofstream(dir / "signing.pub.pem") << pem;
  std::ofstream(dir / "ca.pem") << "certificates\n";
  auto config = ParseConfig("[model_store]\nrequire_signatures = true\ntrusted_keys = [\"\"\"" +
                                pem + "\"\"\", \"" + (dir / "signing.pub.pem").string() +
                                "\"]\nmirrors = [\"https://models.corp.example/inferbox/\"]\n"
                                "ca_file = \"" +
                                (dir / "ca.pem").string() +
                                "\"\nproxy = \"http://proxy.corp.example:3128\"\n",
                            "test.toml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  const ModelStoreConfig& store = config->model_store;
  EXPECT_TRUE(store.require_signatures);
  ASSERT_EQ(store.trusted_keys_pem.size(), 2u);
  EXPECT_EQ(store.trusted_keys_pem[0], pem);
  EXPECT_EQ(store.trusted_keys_pem[1], pem) << "a key given as a path is read at load";
  EXPECT_EQ(store.mirrors, std::vector<std::string>{"https://models.corp.example/inferbox/"});
  EXPECT_EQ(store.ca_file, dir / "ca.pem");
  EXPECT_EQ(store.proxy, "http://proxy.corp.example:3128");
  EXPECT_EQ(ParseConfig("", "empty.toml")->model_store, ModelStoreConfig{})
      << "no [model_store]: no keys, no mirrors, signatures optional";
}

TEST(ModelStoreConfig, RefusesBadMirrorsKeysAndPoliciesNamingTheKey) {
  EXPECT_THAT(ErrorOf("[model_store]\nmirrors = [\"ftp://models.example/\"]\n"),
              HasSubstr("model_store.mirrors"));
  EXPECT_THAT(ErrorOf("[model_store]\nmirrors = [\"https://user:pw@models.example/\"]\n"),
              HasSubstr("model_store.mirrors"));
  EXPECT_THAT(ErrorOf("[model_store]\nmirrors = \"https://models.example/\"\n"),
              HasSubstr("expected an array"));
  EXPECT_THAT(ErrorOf("[model_store]\nrequire_signatures = true\n"),
              HasSubstr("needs at least one key in model_store.trusted_keys"));
  EXPECT_THAT(ErrorOf("[model_store]\ntrusted_keys = [\"relative/key.pem\"]\n"),
              HasSubstr("neither a PEM public key nor an absolute path"));
  EXPECT_THAT(ErrorOf("[model_store]\ntrusted_keys = [\"/nonexistent/key.pem\"]\n"),
              HasSubstr("model_store.trusted_keys"));
  EXPECT_THAT(ErrorOf("[model_store]\nca_file = \"/nonexistent/ca.pem\"\n"),
              HasSubstr("model_store.ca_file"));
  EXPECT_THAT(ErrorOf("[model_store]\nproxy = \"proxy.example:3128\"\n"),
              HasSubstr("model_store.proxy"));
  EXPECT_THAT(ErrorOf("[model_store]\nmirror = []\n"), HasSubstr("unknown key"));
}

}  // namespace
}  // namespace inferbox::daemon
