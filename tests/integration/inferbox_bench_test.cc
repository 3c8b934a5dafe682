// inferbox-bench as people run it, on the CPU with a tiny model: the offline run (throughput,
// per-stream decode rate beside the bandwidth floor), time to first token with prefill MFU,
// and the daemon's HTTP path against a real inferboxd with API keys required. Sizes are kept
// small: these check the tool's output, not any speed.
#include <signal.h>

#include <fstream>
#include <sstream>

#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <boost/json.hpp>

#include "daemon_fixture.h"
#include "inferbox/v1/admin.pb.h"
#include "tiny_model.h"

namespace inferbox::testing {
namespace {

namespace json = boost::json;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

class InferboxBenchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new TempDir();
    MakeTinyModel(model(), "qwen3", {"--arch", "qwen3", "--seed", "3"}, scratch_->path());
  }
  static void TearDownTestSuite() { delete scratch_; }
  static std::filesystem::path model() { return scratch_->path() / "tiny"; }

  CommandResult Bench(std::vector<std::string> arguments,
                      const std::vector<std::string>& set_env = {}) {
    arguments.insert(arguments.begin(), {INFERBOX_BENCH_PATH, "--model", model().string()});
    return RunCommand(arguments, dir_.path(), 120s, set_env);
  }
  // The one JSON object --json prints.
  static json::object ParseJson(const CommandResult& result) {
    boost::system::error_code ec;
    json::value value = json::parse(result.out, ec);
    EXPECT_FALSE(ec) << "--json printed no JSON: " << result.out << result.err;
    return value.is_object() ? value.get_object() : json::object();
  }
  static double Number(const json::value& value) { return value.to_number<double>(); }
  // A Markdown table row's cells ("| a | b |" gives "", " a ", " b ").
  static std::vector<std::string> Cells(const std::string& line) {
    std::vector<std::string> cells;
    std::istringstream row(line);
    for (std::string cell; std::getline(row, cell, '|');) cells.push_back(cell);
    return cells;
  }

  static TempDir* scratch_;
  TempDir dir_;
};

TempDir* InferboxBenchTest::scratch_ = nullptr;

TEST_F(InferboxBenchTest, OfflineRunPrintsThroughputAndTheBandwidthFloor) {
  const CommandResult result = Bench({"--num-requests", "4", "--input-len", "24", "--output-len",
                                      "6", "--concurrency", "2", "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const json::object out = ParseJson(result);
  EXPECT_EQ(out.at("bench"), "offline");
  EXPECT_EQ(out.at("path"), "in-process");
  EXPECT_EQ(out.at("output_tokens"), 24) << "4 requests of 6 tokens";
  EXPECT_GT(Number(out.at("output_tokens_per_second")), 0);
  EXPECT_EQ(out.at("num_gpus"), 0) << "the CPU backend has no GPU";
  EXPECT_TRUE(out.at("output_tokens_per_second_per_gpu").is_null());
  EXPECT_GT(Number(out.at("time_to_first_token_ms").at("p50")), 0);
  EXPECT_GT(Number(out.at("time_per_output_token_ms").at("mean")), 0);
  EXPECT_GT(Number(out.at("stream_tokens_per_second")), 0);
  const json::value& floor = out.at("bandwidth_ceiling");
  EXPECT_GT(Number(floor.at("weight_bytes_per_decode_step")), 0);
  EXPECT_GT(Number(floor.at("copy_bandwidth_bytes_per_second")), 0);
  EXPECT_GT(Number(floor.at("decode_step_ms")), 0);
  EXPECT_GT(Number(floor.at("stream_percent_of_floor")), 0);
  EXPECT_EQ(out.at("steps").at("generated_tokens"), 24);
}

// --quantization fp8: the linear layers' weights (q, k, v, o, gate, up, down of every layer)
// take one byte per parameter instead of the tiny model's four; the floor's bytes per decode
// step say so to the byte (the embedding row, norms and LM head are not quantised).
TEST_F(InferboxBenchTest, Fp8LinearLayersTakeOneBytePerParameterOfTheFloor) {
  const std::vector<std::string> run = {"--num-requests", "2", "--input-len", "8",
                                        "--output-len",   "4", "--json"};
  const CommandResult unquantised = Bench(run);
  std::vector<std::string> fp8_run = run;
  fp8_run.insert(fp8_run.end(), {"--quantization", "fp8"});
  const CommandResult fp8 = Bench(fp8_run);
  ASSERT_EQ(unquantised.exit_code, 0) << unquantised.err;
  ASSERT_EQ(fp8.exit_code, 0) << fp8.err;
  const json::object plain = ParseJson(unquantised), quantised = ParseJson(fp8);
  EXPECT_EQ(plain.at("config").at("quantization"), "none");
  EXPECT_EQ(quantised.at("config").at("quantization"), "fp8");
  EXPECT_EQ(quantised.at("output_tokens"), 8);

  std::ifstream file(model() / "config.json");
  const std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  const json::object config = json::parse(text).as_object();
  const auto get = [&config](const char* key) { return config.at(key).to_number<double>(); };
  const double q = get("num_attention_heads") * get("head_dim");
  const double kv = get("num_key_value_heads") * get("head_dim");
  const double hidden = get("hidden_size");
  const double linear_parameters =
      get("num_hidden_layers") *
      (hidden * (2 * q + 2 * kv) + 3 * hidden * get("intermediate_size"));
  const auto bytes = [](const json::object& out) {
    return out.at("bandwidth_ceiling").at("weight_bytes_per_decode_step").to_number<double>();
  };
  EXPECT_EQ(bytes(plain) - bytes(quantised), 3 * linear_parameters);
  EXPECT_EQ(Bench({"--quantization", "int8"}).exit_code, 2);
  const CommandResult over_http =
      Bench({"--quantization", "fp8", "--url", "http://127.0.0.1:1", "--num-requests", "1"});
  EXPECT_EQ(over_http.exit_code, 2);
  EXPECT_THAT(over_http.err, HasSubstr("the server's model config sets them"));
}

// --kv-cache-dtype fp8: the engine's KV cache in FP8 (a byte per value and a scale per token
// and KV head instead of the CPU's four bytes per value); every request still completes with
// all its tokens, and the report says which cache ran.
TEST_F(InferboxBenchTest, Fp8KvCacheRunsEveryRequestToTheEnd) {
  const std::vector<std::string> run = {"--num-requests", "2", "--input-len", "40",
                                        "--output-len",   "6", "--json"};
  std::vector<std::string> fp8_run = run;
  fp8_run.insert(fp8_run.end(), {"--kv-cache-dtype", "fp8"});
  const CommandResult plain = Bench(run);
  const CommandResult fp8 = Bench(fp8_run);
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  ASSERT_EQ(fp8.exit_code, 0) << fp8.err;
  const json::object unquantised = ParseJson(plain), quantised = ParseJson(fp8);
  EXPECT_EQ(unquantised.at("config").at("kv_cache_dtype"), "auto");
  EXPECT_EQ(quantised.at("config").at("kv_cache_dtype"), "fp8");
  EXPECT_EQ(quantised.at("output_tokens"), 12);
  EXPECT_EQ(Bench({"--kv-cache-dtype", "int4"}).exit_code, 2);
  const CommandResult over_http =
      Bench({"--kv-cache-dtype", "fp8", "--url", "http://127.0.0.1:1", "--num-requests", "1"});
  EXPECT_EQ(over_http.exit_code, 2);
  EXPECT_THAT(over_http.err, HasSubstr("kv_cache_dtype = \"fp8\""));
}

// --temperature: every request sampled (on the CPU by the host's Sampler) still runs to its
// length; the report says at which temperature.
TEST_F(InferboxBenchTest, SampledRequestsRunToTheirLength) {
  const CommandResult sampled =
      Bench({"--num-requests", "3", "--input-len", "8", "--output-len", "5", "--concurrency", "3",
             "--temperature", "0.8", "--json"});
  ASSERT_EQ(sampled.exit_code, 0) << sampled.err;
  const json::object out = ParseJson(sampled);
  EXPECT_NEAR(out.at("config").at("temperature").to_number<double>(), 0.8, 1e-6);
  EXPECT_EQ(out.at("output_tokens"), 15);
  EXPECT_EQ(Bench({"--temperature", "-1"}).exit_code, 2);
}

TEST_F(InferboxBenchTest, OneStreamTableShowsMsPerStepBesideTheFloor) {
  const CommandResult result = Bench({"--num-requests", "1", "--warmup", "0", "--input-len", "16",
                                      "--output-len", "8", "--concurrency", "1"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.out, HasSubstr("decode step at least"));
  EXPECT_THAT(result.out, HasSubstr("1 stream measured"));
  EXPECT_THAT(result.out, HasSubstr("ms/step"));
  EXPECT_THAT(result.out, HasSubstr("% of the floor"));
  EXPECT_THAT(result.out, HasSubstr("output tokens/s per GPU"));
}

TEST_F(InferboxBenchTest, TimeToFirstTokenForEachLengthWithMfuAgainstThePeakGiven) {
  const CommandResult result =
      Bench({"--ttft", "16,96", "--ttft-repeats", "2", "--peak-tflops", "2.5", "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const json::object out = ParseJson(result);
  EXPECT_EQ(out.at("bench"), "ttft");
  EXPECT_EQ(Number(out.at("peak_tflops")), 2.5);
  const json::array& prompts = out.at("prompts").as_array();
  ASSERT_EQ(prompts.size(), 2u);
  EXPECT_EQ(prompts[0].at("input_len"), 16);
  EXPECT_EQ(prompts[1].at("input_len"), 96);
  for (const json::value& prompt : prompts) {
    EXPECT_EQ(prompt.at("repeats"), 2);
    EXPECT_GT(Number(prompt.at("time_to_first_token_ms").at("p50")), 0);
    EXPECT_GT(Number(prompt.at("forward_ms")), 0);
    EXPECT_GT(Number(prompt.at("prefill_flops")), 0);
    EXPECT_GT(Number(prompt.at("mfu_percent")), 0);
    EXPECT_NEAR(Number(prompt.at("mfu_percent")),
                100.0 * Number(prompt.at("achieved_tflops")) / 2.5, 1e-9);
  }
  EXPECT_GT(Number(prompts[1].at("prefill_flops")), Number(prompts[0].at("prefill_flops")));

  const CommandResult table = Bench({"--ttft", "16", "--ttft-repeats", "1"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_THAT(table.out, HasSubstr("peak used: 989.0 TFLOP/s (--peak-tflops)"));
  EXPECT_THAT(table.out, HasSubstr("MFU"));
}

// inferbox-loop-bench: the engine loop with a model step of fixed time, its output taken by
// callbacks and by a handler thread per stream; every stream must get all its tokens (else
// it exits 1), and each way's row says what share of the floor it reached.
TEST_F(InferboxBenchTest, LoopBenchPrintsBothWaysOfTakingOutputBesideTheFloor) {
  const CommandResult result =
      RunCommand({INFERBOX_LOOP_BENCH_PATH, "--model", model().string(), "--streams", "4",
                  "--output-len", "12", "--step-ms", "2"},
                 dir_.path(), 120s);
  ASSERT_EQ(result.exit_code, 0) << result.out << result.err;
  EXPECT_THAT(result.out, HasSubstr("| floor: no host time | 2000 | 100% |"))
      << "4 streams, one token each per 2 ms step";
  int ways = 0;
  std::istringstream lines(result.out);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("| callbacks only", 0) != 0 && line.rfind("| a handler thread", 0) != 0)
      continue;
    ++ways;
    // | way | tok/s | share% | ...
    const std::vector<std::string> cells = Cells(line);
    ASSERT_GE(cells.size(), 4u) << line;
    EXPECT_GT(std::stod(cells[3]), 0.0) << line;
  }
  EXPECT_EQ(ways, 2) << result.out;

  EXPECT_EQ(RunCommand({INFERBOX_LOOP_BENCH_PATH, "--model", model().string(), "--streams", "0"},
                       dir_.path(), 60s)
                .exit_code,
            2);
  EXPECT_EQ(RunCommand({INFERBOX_LOOP_BENCH_PATH, "--model", (dir_.path() / "none").string()},
                       dir_.path(), 60s)
                .exit_code,
            2);
}

// --fixed-step-ms: the model's step becomes a wait (a fixed part and a part per token in the
// step) that picks known tokens; every request still runs to its length, and no gap between
// tokens is shorter than the wait.
TEST_F(InferboxBenchTest, FixedStepReplacesTheModelsStepByAWaitOfThatLength) {
  const CommandResult fixed =
      Bench({"--num-requests", "3", "--input-len", "8", "--output-len", "10", "--concurrency", "3",
             "--fixed-step-ms", "20", "--json"});
  ASSERT_EQ(fixed.exit_code, 0) << fixed.err;
  json::object out = ParseJson(fixed);
  EXPECT_EQ(out.at("output_tokens"), 30);
  EXPECT_EQ(Number(out.at("config").at("fixed_step_ms")), 20);
  EXPECT_GE(Number(out.at("inter_token_ms").at("p50")), 19.9) << "a token per 20 ms step";
  EXPECT_LT(Number(out.at("output_tokens_per_second")), 3 * 50.0 * 1.01)
      << "3 streams, a token each per 20 ms step at most";
  EXPECT_FALSE(out.contains("bandwidth_ceiling")) << "no model ran";

  // 5 ms a token: a step of three decode rows waits 15 ms, the first prompt's 8 tokens 40.
  const CommandResult per_token =
      Bench({"--num-requests", "3", "--input-len", "8", "--output-len", "6", "--concurrency", "3",
             "--fixed-step-ms", "0", "--fixed-step-ms-per-token", "5", "--json"});
  ASSERT_EQ(per_token.exit_code, 0) << per_token.err;
  out = ParseJson(per_token);
  EXPECT_EQ(out.at("output_tokens"), 18);
  EXPECT_GE(Number(out.at("time_to_first_token_ms").at("p50")), 39.9);
  EXPECT_GE(Number(out.at("inter_token_ms").at("p50")), 14.9);

  EXPECT_EQ(Bench({"--url", "http://127.0.0.1:9", "--fixed-step-ms", "5"}).exit_code, 2)
      << "in-process only";
}

// tools/bench/daemon-path-bench: one workload in-process and through a real daemon whose
// engine is inferbox-engine-fixed-step (over HTTP, then over its gRPC API), each beside the
// decode floor (none can pass it: every step waits), with the CPU each process spent.
TEST_F(InferboxBenchTest, DaemonPathBenchRunsTheWorkloadEveryWayBelowTheFloor) {
  const CommandResult result =
      RunCommand({INFERBOX_SOURCE_DIR "/tools/bench/daemon-path-bench", "--build-dir",
                  INFERBOX_BUILD_DIR, "--model", model().string(), "--input-len", "8",
                  "--output-len", "64", "--concurrency", "8", "--num-requests", "16", "--step-ms",
                  "10", "--step-ms-per-token", "0", "--token-budget", "512"},
                 dir_.path(), 180s);
  ASSERT_EQ(result.exit_code, 0) << result.out << result.err;
  EXPECT_THAT(result.out, HasSubstr("| decode floor (8 rows a step of 10 ms) | 800 | 100% |"));
  EXPECT_THAT(result.out, HasSubstr("the daemon's http path: "));
  EXPECT_THAT(result.out, HasSubstr("the daemon's grpc path: "));
  int paths = 0;
  std::istringstream lines(result.out);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("| in-process", 0) != 0 && line.rfind("| daemon", 0) != 0) continue;
    ++paths;
    const std::vector<std::string> cells = Cells(line);
    ASSERT_GE(cells.size(), 9u) << line;
    EXPECT_GT(std::stod(cells[2]), 0.0) << line;
    EXPECT_LE(std::stod(cells[2]), 800.0) << "faster than the floor: the wait did not apply\n"
                                          << line;
    // The daemon's and the engine's CPU time come in 10 ms ticks: 1,024 tokens take several.
    if (line.rfind("| daemon", 0) == 0) {
      for (const size_t cpu : {6u, 7u, 8u}) EXPECT_GT(std::stod(cells[cpu]), 0.0) << line;
    }
  }
  EXPECT_EQ(paths, 3) << result.out;

  EXPECT_EQ(RunCommand({INFERBOX_SOURCE_DIR "/tools/bench/daemon-path-bench", "--build-dir",
                        INFERBOX_BUILD_DIR, "--model", model().string(), "--concurrency", "0"},
                       dir_.path(), 60s)
                .exit_code,
            2);
}

TEST_F(InferboxBenchTest, RefusesWhatCannotRun) {
  EXPECT_EQ(Bench({"--ttft", "0"}).exit_code, 2);
  const CommandResult too_long = Bench({"--ttft", "16,4096"});
  EXPECT_EQ(too_long.exit_code, 2);
  EXPECT_THAT(too_long.err, HasSubstr("do not fit the model's context"));
  EXPECT_EQ(Bench({"--input-len", "500", "--output-len", "100"}).exit_code, 2);
  EXPECT_EQ(Bench({"--peak-tflops", "0"}).exit_code, 2);
  EXPECT_EQ(Bench({"--fixed-step-ms-per-token", "5"}).exit_code, 2) << "needs --fixed-step-ms";
  EXPECT_EQ(Bench({"--fixed-step-ms", "5", "--ttft", "16"}).exit_code, 2) << "no prefill to time";
}

TEST_F(InferboxBenchTest, DrivesTheDaemonsOpenAiStreamAndGrpcApiWithAnApiKey) {
  const auto config = [](bool require_keys) {
    return TestConfig() + "[auth]\nrequire_keys = " + (require_keys ? "true" : "false") +
           "\n[engines]\nexecutable = \"" INFERBOX_ENGINE_PATH
           "\"\n[[models]]\nname = \"tiny\"\n"
           "path = \"" +
           model().string() + "\"\nkv_cache_gib = 0.2\nmax_running = 16\n";
  };
  // The first key is made on the keyless loopback box, then keys become required.
  DaemonProcess daemon(dir_, {.config_text = config(false)});
  ASSERT_TRUE(daemon.WaitReady());
  const CommandResult created =
      RunCommand({INFERBOXCTL_PATH, "--address", daemon.grpc_address(), "keys", "create", "--name",
                  "bench", "--role", "inference", "--json"},
                 dir_.path());
  ASSERT_EQ(created.exit_code, 0) << created.err;
  inferbox::v1::CreateKeyResponse key;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(created.out, &key).ok()) << created.out;
  std::ofstream(daemon.config_path()) << config(true);
  daemon.process().Signal(SIGHUP);
  ASSERT_TRUE(daemon.notify().WaitFor("RELOADING=1", 10s).has_value()) << daemon.Logs();
  ASSERT_TRUE(daemon.notify().WaitFor("READY=1", 10s).has_value()) << daemon.Logs();
  ASSERT_TRUE(daemon.WaitInferenceServing());

  const std::string url = "http://" + daemon.http_address();
  const CommandResult result =
      Bench({"--url", url, "--served-model", "tiny", "--num-requests", "6", "--input-len", "20",
             "--output-len", "5", "--concurrency", "3", "--num-gpus", "1", "--json"},
            {"INFERBOX_API_KEY=" + key.secret()});
  ASSERT_EQ(result.exit_code, 0) << result.err << "\ndaemon log:\n" << daemon.Logs();
  const json::object out = ParseJson(result);
  EXPECT_EQ(out.at("path"), "http");
  EXPECT_EQ(out.at("output_tokens"), 30) << "6 requests of 5 tokens, by the usage";
  EXPECT_GT(Number(out.at("output_tokens_per_second")), 0);
  EXPECT_EQ(Number(out.at("output_tokens_per_second_per_gpu")),
            Number(out.at("output_tokens_per_second")));
  EXPECT_GT(Number(out.at("time_to_first_token_ms").at("p50")), 0);
  EXPECT_GT(Number(out.at("time_per_output_token_ms").at("mean")), 0);
  EXPECT_FALSE(out.contains("bandwidth_ceiling")) << "no backend in the bench process";

  const CommandResult ttft = Bench({"--url", url, "--served-model", "tiny", "--api-key",
                                    key.secret(), "--ttft", "32", "--ttft-repeats", "2"});
  ASSERT_EQ(ttft.exit_code, 0) << ttft.err;
  EXPECT_THAT(ttft.out, HasSubstr("over HTTP to " + url));
  EXPECT_THAT(ttft.out, HasSubstr("peak used: 989.0 TFLOP/s"));

  const CommandResult keyless =
      Bench({"--url", url, "--served-model", "tiny", "--num-requests", "1", "--warmup", "0"},
            {"INFERBOX_API_KEY="});
  EXPECT_EQ(keyless.exit_code, 1);
  EXPECT_THAT(keyless.err, HasSubstr("HTTP 401"));

  // The same workload as streamed Generate calls on the daemon's gRPC API.
  const CommandResult grpc =
      Bench({"--grpc", daemon.grpc_address(), "--served-model", "tiny", "--num-requests", "6",
             "--input-len", "20", "--output-len", "5", "--concurrency", "3", "--json"},
            {"INFERBOX_API_KEY=" + key.secret()});
  ASSERT_EQ(grpc.exit_code, 0) << grpc.err << "\ndaemon log:\n" << daemon.Logs();
  const json::object grpc_out = ParseJson(grpc);
  EXPECT_EQ(grpc_out.at("path"), "grpc");
  EXPECT_EQ(grpc_out.at("config").at("grpc").as_string(), daemon.grpc_address());
  EXPECT_EQ(grpc_out.at("output_tokens"), 30) << "6 requests of 5 tokens, by the usage";
  EXPECT_GT(Number(grpc_out.at("time_to_first_token_ms").at("p50")), 0);
  EXPECT_GT(Number(grpc_out.at("time_per_output_token_ms").at("mean")), 0);

  const CommandResult grpc_keyless = Bench({"--grpc", daemon.grpc_address(), "--served-model",
                                            "tiny", "--num-requests", "1", "--warmup", "0"},
                                           {"INFERBOX_API_KEY="});
  EXPECT_EQ(grpc_keyless.exit_code, 1);
  EXPECT_THAT(grpc_keyless.err, HasSubstr("UNAUTHENTICATED"));
  const CommandResult unknown = Bench({"--grpc", daemon.grpc_address(), "--served-model", "nope",
                                       "--num-requests", "1", "--warmup", "0"},
                                      {"INFERBOX_API_KEY=" + key.secret()});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_THAT(unknown.err, HasSubstr("nope"));
  EXPECT_EQ(Bench({"--grpc", "127.0.0.1:9", "--url", url}).exit_code, 2) << "one server at a time";
}

}  // namespace
}  // namespace inferbox::testing
