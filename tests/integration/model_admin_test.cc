// The model side of the Admin plane against the real daemon, real engines and the real model
// store: installs from a folder and a bundle (streamed progress), a bad signature and a
// mirror outside the allow-list refused with the store unchanged, load / chat / default /
// unload / remove, a blue/green swap while a client streams, the profile plan on the CPU,
// inference keys refused (and audited) on every model RPC, and the served set and default
// kept across a restart.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <boost/json.hpp>

#include "daemon_fixture.h"
#include "inferbox/provisioning/bundle.h"
#include "inferbox/v1/admin.grpc.pb.h"
#include "inferbox/v1/inference.grpc.pb.h"
#include "model_fixtures.h"
#include "tiny_model.h"

namespace inferbox::testing {
namespace {

namespace api = ::inferbox::v1;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

std::string TomlString(const std::string& text) {
  std::string quoted = "\"\"\"";
  quoted += text;
  quoted += "\"\"\"";
  return quoted;
}

class ModelAdminTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new TempDir();
    MakeTinyModel(scratch_->path() / "v1", "qwen3", {"--arch", "qwen3", "--seed", "5"},
                  scratch_->path());
    MakeTinyModel(scratch_->path() / "v2", "qwen3", {"--arch", "qwen3", "--seed", "6"},
                  scratch_->path());
    trusted_ = new provisioning::testing::KeyPair(provisioning::testing::GenerateEd25519());
  }
  static void TearDownTestSuite() {
    delete scratch_;
    delete trusted_;
  }
  static std::filesystem::path v1() { return scratch_->path() / "v1"; }
  static std::filesystem::path v2() { return scratch_->path() / "v2"; }

  std::string Config() const {
    return TestConfig() +
           "[engines]\nexecutable = \"" INFERBOX_ENGINE_PATH
           "\"\nhealth_interval_seconds = 0.2\nhealth_timeout_seconds = 1\n"
           "[model_store]\ntrusted_keys = [" +
           TomlString(trusted_->public_pem) + "]\nmirrors = [\"http://127.0.0.1:9/inferbox/\"]\n";
  }

  void Start(std::vector<std::string> extra_env = {}) {
    ASSERT_TRUE(std::filesystem::exists(v1() / "config.json")) << "no tiny model";
    daemon_ = std::make_unique<DaemonProcess>(
        dir_, DaemonOptions{.config_text = Config(), .extra_env = std::move(extra_env)});
    ASSERT_TRUE(daemon_->WaitReady());
    channel_ = grpc::CreateChannel(daemon_->grpc_address(), grpc::InsecureChannelCredentials());
    inference_ = api::Inference::NewStub(channel_);
    admin_ = api::Admin::NewStub(channel_);
  }

  void Stop() {
    daemon_->process().Signal(SIGTERM);
    ASSERT_TRUE(daemon_->process().WaitForExit(30s).has_value()) << "inferboxd did not stop";
    daemon_.reset();
  }

  static void Prepare(grpc::ClientContext& context, const std::string& key = "",
                      std::chrono::seconds timeout = 120s) {
    context.set_deadline(std::chrono::system_clock::now() + timeout);
    if (!key.empty()) context.AddMetadata("authorization", "Bearer " + key);
  }

  struct Installed {
    std::vector<api::InstallModelProgress> progress;
    grpc::Status status;
  };
  Installed Install(const api::InstallModelRequest& request) {
    grpc::ClientContext context;
    Prepare(context);
    auto reader = admin_->InstallModel(&context, request);
    Installed result;
    api::InstallModelProgress progress;
    while (reader->Read(&progress)) result.progress.push_back(progress);
    result.status = reader->Finish();
    return result;
  }
  Installed InstallFolder(const std::string& id, const std::filesystem::path& folder,
                          bool replace = false) {
    api::InstallModelRequest request;
    request.set_id(id);
    request.set_directory(folder.string());
    request.set_replace(replace);
    return Install(request);
  }

  api::ListInstalledModelsResponse List() {
    grpc::ClientContext context;
    Prepare(context);
    api::ListInstalledModelsResponse response;
    const grpc::Status status =
        admin_->ListInstalledModels(&context, api::ListInstalledModelsRequest(), &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  grpc::Status Load(const std::string& id, api::LoadModelResponse* response = nullptr) {
    grpc::ClientContext context;
    Prepare(context, "", 300s);
    api::LoadModelRequest request;
    request.set_id(id);
    request.mutable_options()->set_kv_cache_gib(0.1);
    request.set_drain_timeout_seconds(30);
    api::LoadModelResponse ignored;
    return admin_->LoadModel(&context, request, response != nullptr ? response : &ignored);
  }

  grpc::Status Unload(const std::string& id) {
    grpc::ClientContext context;
    Prepare(context);
    api::UnloadModelRequest request;
    request.set_id(id);
    api::UnloadModelResponse response;
    return admin_->UnloadModel(&context, request, &response);
  }

  grpc::Status Remove(const std::string& id) {
    grpc::ClientContext context;
    Prepare(context);
    api::RemoveModelRequest request;
    request.set_id(id);
    api::RemoveModelResponse response;
    return admin_->RemoveModel(&context, request, &response);
  }

  grpc::Status SetDefault(const std::string& id) {
    grpc::ClientContext context;
    Prepare(context);
    api::SetDefaultModelRequest request;
    request.set_id(id);
    api::SetDefaultModelResponse response;
    return admin_->SetDefaultModel(&context, request, &response);
  }

  static TempDir* scratch_;
  static provisioning::testing::KeyPair* trusted_;
  TempDir dir_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<api::Inference::Stub> inference_;
  std::unique_ptr<api::Admin::Stub> admin_;
};

TempDir* ModelAdminTest::scratch_ = nullptr;
provisioning::testing::KeyPair* ModelAdminTest::trusted_ = nullptr;

TEST_F(ModelAdminTest, InstallsStreamsProgressLoadsServesUnloadsAndRemoves) {
  ASSERT_NO_FATAL_FAILURE(Start());

  const Installed installed = InstallFolder("tiny", v1());
  ASSERT_TRUE(installed.status.ok()) << installed.status.error_message();
  ASSERT_GE(installed.progress.size(), 3u) << "expected progress before the manifest";
  uint64_t done = 0;
  std::set<std::string> phases;
  for (const auto& step : installed.progress) {
    EXPECT_GE(step.done_bytes(), done) << "install progress went backwards";
    done = step.done_bytes();
    phases.insert(step.phase());
  }
  EXPECT_TRUE(phases.contains("transferring")) << "no transferring phase was streamed";
  const auto& last = installed.progress.back();
  ASSERT_TRUE(last.has_installed()) << "the last message must carry the installed manifest";
  EXPECT_EQ(last.phase(), "done");
  EXPECT_EQ(last.done_bytes(), last.total_bytes());
  EXPECT_EQ(last.installed().id(), "tiny");
  EXPECT_THAT(last.installed().digest(), ::testing::StartsWith("sha256:"));

  auto listed = List();
  ASSERT_EQ(listed.models_size(), 1);
  EXPECT_EQ(listed.models(0).id(), "tiny");
  EXPECT_FALSE(listed.models(0).served());

  api::LoadModelResponse loaded;
  const grpc::Status load = Load("tiny", &loaded);
  ASSERT_TRUE(load.ok()) << load.error_message();
  EXPECT_EQ(loaded.action(), api::LOAD_ACTION_LOADED);
  ASSERT_TRUE(daemon_->WaitInferenceServing());
  const ChatResult chat = RunChat(*inference_, TinyChat(5, "tiny"));
  ASSERT_TRUE(chat.status.ok()) << chat.status.error_message();
  EXPECT_EQ(chat.tokens, 5u);
  listed = List();
  ASSERT_EQ(listed.models_size(), 1);
  EXPECT_TRUE(listed.models(0).served());
  EXPECT_EQ(listed.models(0).state(), api::MODEL_STATE_READY);

  const grpc::Status refused = Remove("tiny");
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(refused.error_message(), HasSubstr("tiny"));

  ASSERT_TRUE(SetDefault("tiny").ok());
  EXPECT_TRUE(RunChat(*inference_, TinyChat(3, "default")).status.ok())
      << "\"default\" should name the default model";
  EXPECT_TRUE(RunChat(*inference_, TinyChat(3, "")).status.ok())
      << "a request without a model should get the default model";
  EXPECT_EQ(List().default_model(), "tiny");

  const grpc::Status unloaded = Unload("tiny");
  ASSERT_TRUE(unloaded.ok()) << unloaded.error_message();
  EXPECT_EQ(RunChat(*inference_, TinyChat(3, "tiny")).status.error_code(),
            grpc::StatusCode::NOT_FOUND);
  const grpc::Status removed = Remove("tiny");
  ASSERT_TRUE(removed.ok()) << removed.error_message();
  EXPECT_EQ(List().models_size(), 0);
}

TEST_F(ModelAdminTest, InstallsABundleAndRefusesABadSignatureAndForeignMirrors) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const auto bundle = scratch_->path() / "tiny.bundle";
  if (!std::filesystem::exists(bundle)) {
    auto written = provisioning::WriteBundle(v1(), bundle);
    ASSERT_TRUE(written.ok()) << written.status().ToString();
  }
  api::InstallModelRequest request;
  request.set_id("from-bundle");
  request.set_bundle_path(bundle.string());
  const Installed installed = Install(request);
  ASSERT_TRUE(installed.status.ok()) << installed.status.error_message();
  ASSERT_TRUE(installed.progress.back().has_installed());
  EXPECT_EQ(installed.progress.back().installed().source(), "bundle:" + bundle.string());

  // A detached signature by the trusted key, but over other bytes.
  auto forged = provisioning::SignEd25519("not this manifest", trusted_->private_pem);
  ASSERT_TRUE(forged.ok());
  const auto signature = scratch_->path() / "forged.sig";
  std::ofstream(signature) << *forged << "\n";
  request.set_id("forged");
  request.set_signature_path(signature.string());
  const Installed rejected = Install(request);
  EXPECT_EQ(rejected.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << rejected.status.error_message();

  api::InstallModelRequest mirror;
  mirror.set_id("metadata");
  mirror.set_mirror_url("http://169.254.169.254/latest/meta-data/");
  const Installed foreign = Install(mirror);
  EXPECT_EQ(foreign.status.error_code(), grpc::StatusCode::PERMISSION_DENIED)
      << foreign.status.error_message();

  const auto listed = List();
  ASSERT_EQ(listed.models_size(), 1) << "a refused install must leave the store unchanged";
  EXPECT_EQ(listed.models(0).id(), "from-bundle");
}

TEST_F(ModelAdminTest, PlansTheTinyModelOnTheCpu) {
  ASSERT_NO_FATAL_FAILURE(Start());
  ASSERT_TRUE(InstallFolder("tiny", v1()).status.ok());
  grpc::ClientContext context;
  Prepare(context);
  api::PlanModelRequest request;
  request.set_id("tiny");
  request.set_context_length(256);
  api::PlanModelResponse plan;
  const grpc::Status status = admin_->PlanModel(&context, request, &plan);
  ASSERT_TRUE(status.ok()) << status.error_message();

  std::ifstream file(v1() / "config.json");
  const std::string text{std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
  const auto config = boost::json::parse(text).as_object();
  const auto layers = config.at("num_hidden_layers").to_number<uint64_t>();
  const auto heads = config.at("num_attention_heads").to_number<uint64_t>();
  const auto kv_heads = config.contains("num_key_value_heads")
                            ? config.at("num_key_value_heads").to_number<uint64_t>()
                            : heads;
  const auto head_dim = config.contains("head_dim")
                            ? config.at("head_dim").to_number<uint64_t>()
                            : config.at("hidden_size").to_number<uint64_t>() / heads;
  EXPECT_EQ(plan.device(), "cpu") << "this machine has no GPU";
  EXPECT_EQ(plan.gpus_found(), 0u);
  EXPECT_TRUE(plan.fits());
  EXPECT_EQ(plan.tensor_parallel(), 1u);
  EXPECT_EQ(plan.replicas(), 1u);
  const uint64_t per_token = plan.kv_bytes_per_token();
  EXPECT_EQ(per_token, 2 * layers * kv_heads * head_dim * 4)
      << "a CPU engine keeps keys and values in float32, whatever the weights' dtype";
  EXPECT_EQ(plan.kv_cache_bytes_per_replica(), uint64_t{1} << 30);
  EXPECT_EQ(plan.kv_cache_tokens_per_replica(), (uint64_t{1} << 30) / per_token);
  EXPECT_EQ(plan.concurrent_sequences(), plan.kv_cache_tokens_per_replica() / 256);
  EXPECT_EQ(plan.options().quantization(), "");

  // As quantization = "fp8" loads it: the linear layers one byte per parameter, and the
  // options LoadModel would take say so.
  const std::string torch_dtype =
      config.contains("torch_dtype") ? std::string(config.at("torch_dtype").as_string()) : "";
  const uint64_t dtype_bytes = torch_dtype == "float32" ? 4 : 2;
  const auto hidden = config.at("hidden_size").to_number<uint64_t>();
  const auto intermediate = config.at("intermediate_size").to_number<uint64_t>();
  const uint64_t linear_parameters =
      layers *
      (hidden * (2 * heads * head_dim + 2 * kv_heads * head_dim) + 3 * hidden * intermediate);
  // The plan of `request` with `quantization` and `kv_cache_dtype` set.
  auto plan_with = [&](const std::string& quantization, const std::string& kv_cache_dtype,
                       api::PlanModelResponse* response) {
    grpc::ClientContext other_context;
    Prepare(other_context);
    api::PlanModelRequest other = request;
    other.set_quantization(quantization);
    other.set_kv_cache_dtype(kv_cache_dtype);
    return admin_->PlanModel(&other_context, other, response);
  };
  auto plan_as = [&](const std::string& quantization, api::PlanModelResponse* response) {
    return plan_with(quantization, "", response);
  };
  api::PlanModelResponse fp8_plan;
  const grpc::Status fp8_status = plan_as("fp8", &fp8_plan);
  ASSERT_TRUE(fp8_status.ok()) << fp8_status.error_message();
  EXPECT_EQ(plan.weight_bytes() - fp8_plan.weight_bytes(), linear_parameters * (dtype_bytes - 1));
  EXPECT_EQ(fp8_plan.options().quantization(), "fp8");
  api::PlanModelResponse ignored;
  const grpc::Status int4 = plan_as("int4", &ignored);
  EXPECT_EQ(int4.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(int4.error_message(), HasSubstr("quantization"));

  // As kv_cache_dtype = "fp8" keeps it: a byte per value and a 4-byte scale per KV head, so
  // the same budget holds more tokens.
  api::PlanModelResponse kv_plan;
  const grpc::Status kv_status = plan_with("", "fp8", &kv_plan);
  ASSERT_TRUE(kv_status.ok()) << kv_status.error_message();
  EXPECT_EQ(kv_plan.kv_bytes_per_token(), 2 * layers * kv_heads * (head_dim + 4));
  EXPECT_GT(kv_plan.kv_cache_tokens_per_replica(), plan.kv_cache_tokens_per_replica());
  EXPECT_EQ(kv_plan.options().kv_cache_dtype(), "fp8");
  EXPECT_EQ(plan_with("", "bf16", &ignored).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ModelAdminTest, LoadPlacesACudaModelWithoutGpusOnTheFreeOnesAndRefusesATakenGpu) {
  // 4 fake GPUs of 80 GB (fake NVML). The engines cannot start without a real GPU: what is
  // checked is where LoadModel puts them.
  std::string gpus = "gpus 4\n";
  for (int i = 0; i < 4; ++i) gpus += "gpu" + std::to_string(i) + ".memory_total 85899345920\n";
  std::ofstream(dir_ / "nvml-state") << gpus;
  ASSERT_NO_FATAL_FAILURE(Start({"INFERBOX_NVML_LIBRARY=" FAKE_NVML_PATH,
                                 "INFERBOX_FAKE_NVML_STATE=" + (dir_ / "nvml-state").string()}));
  for (const char* id : {"alpha", "beta", "gamma"})
    ASSERT_TRUE(InstallFolder(id, v1()).status.ok()) << id;
  auto load = [&](const std::string& id, std::vector<uint32_t> on_gpus, uint32_t replicas) {
    grpc::ClientContext context;
    Prepare(context);
    api::LoadModelRequest request;
    request.set_id(id);
    request.mutable_options()->set_device("cuda");
    for (const uint32_t gpu : on_gpus) request.mutable_options()->add_gpus(gpu);
    request.mutable_options()->set_replicas(replicas);
    api::LoadModelResponse response;
    return admin_->LoadModel(&context, request, &response);
  };
  ASSERT_TRUE(load("alpha", {1}, 1).ok());
  const grpc::Status taken = load("beta", {3, 1}, 1);
  EXPECT_EQ(taken.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(taken.error_message(), HasSubstr("GPU 1 is already used by model alpha"));
  // No GPUs named, no replica count: one replica per free GPU (the tiny model fits one).
  const grpc::Status placed = load("beta", {}, 0);
  ASSERT_TRUE(placed.ok()) << placed.error_message();
  const grpc::Status full = load("gamma", {}, 0);
  EXPECT_EQ(full.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(full.error_message(), HasSubstr("all 4 GPUs are used by other models"));

  grpc::ClientContext context;
  Prepare(context);
  api::GetStatusResponse status;
  ASSERT_TRUE(admin_->GetStatus(&context, api::GetStatusRequest(), &status).ok());
  std::map<std::string, std::vector<uint32_t>> engines;
  for (const auto& engine : status.engines())
    engines[engine.name()].assign(engine.gpus().begin(), engine.gpus().end());
  EXPECT_EQ(engines["alpha/0"], (std::vector<uint32_t>{1}));
  EXPECT_EQ(engines["beta/0"], (std::vector<uint32_t>{0}));
  EXPECT_EQ(engines["beta/1"], (std::vector<uint32_t>{2}));
  EXPECT_EQ(engines["beta/2"], (std::vector<uint32_t>{3}));
  EXPECT_EQ(engines.size(), 4u);
}

TEST_F(ModelAdminTest, InferenceKeysAreRefusedOnEveryModelRpcAndAudited) {
  ASSERT_NO_FATAL_FAILURE(Start());
  grpc::ClientContext create_context;
  Prepare(create_context);
  api::CreateKeyRequest create;
  create.set_name("app");
  create.set_role(api::KEY_ROLE_INFERENCE);
  api::CreateKeyResponse created;
  ASSERT_TRUE(admin_->CreateKey(&create_context, create, &created).ok());
  const std::string key = created.secret();

  std::vector<std::pair<std::string, grpc::Status>> calls;
  auto call = [&](const std::string& rpc, auto method, const auto& request, auto response) {
    grpc::ClientContext context;
    Prepare(context, key);
    calls.emplace_back(rpc, ((*admin_).*method)(&context, request, &response));
  };
  call("ListInstalledModels", &api::Admin::Stub::ListInstalledModels,
       api::ListInstalledModelsRequest(), api::ListInstalledModelsResponse());
  api::RemoveModelRequest remove;
  remove.set_id("tiny");
  call("RemoveModel", &api::Admin::Stub::RemoveModel, remove, api::RemoveModelResponse());
  api::LoadModelRequest load;
  load.set_id("tiny");
  call("LoadModel", &api::Admin::Stub::LoadModel, load, api::LoadModelResponse());
  api::UnloadModelRequest unload;
  unload.set_id("tiny");
  call("UnloadModel", &api::Admin::Stub::UnloadModel, unload, api::UnloadModelResponse());
  api::SetDefaultModelRequest set_default;
  set_default.set_id("tiny");
  call("SetDefaultModel", &api::Admin::Stub::SetDefaultModel, set_default,
       api::SetDefaultModelResponse());
  api::PlanModelRequest plan;
  plan.set_id("tiny");
  call("PlanModel", &api::Admin::Stub::PlanModel, plan, api::PlanModelResponse());
  {
    grpc::ClientContext context;
    Prepare(context, key);
    api::InstallModelRequest install;
    install.set_id("tiny");
    install.set_directory(v1().string());
    auto reader = admin_->InstallModel(&context, install);
    api::InstallModelProgress progress;
    EXPECT_FALSE(reader->Read(&progress)) << "an inference key must not see install progress";
    calls.emplace_back("InstallModel", reader->Finish());
  }
  for (const auto& [rpc, status] : calls)
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << rpc;

  grpc::ClientContext audit_context;
  Prepare(audit_context);
  api::ListAuditEventsResponse audit;
  ASSERT_TRUE(admin_->ListAuditEvents(&audit_context, api::ListAuditEventsRequest(), &audit).ok());
  for (const auto& [rpc, status] : calls) {
    const bool recorded = std::any_of(
        audit.events().begin(), audit.events().end(), [&, rpc = rpc](const api::AuditEvent& event) {
          return event.rpc() == rpc && event.code() == "PERMISSION_DENIED" &&
                 event.caller_key_id() == created.key().id();
        });
    EXPECT_TRUE(recorded) << rpc << " refused without an audit event";
  }
  EXPECT_EQ(List().models_size(), 0) << "a refused install must install nothing";
}

TEST_F(ModelAdminTest, LoadedModelsAndTheDefaultSurviveARestart) {
  ASSERT_NO_FATAL_FAILURE(Start());
  ASSERT_TRUE(InstallFolder("tiny", v1()).status.ok());
  ASSERT_TRUE(Load("tiny").ok());
  ASSERT_TRUE(SetDefault("tiny").ok());
  ASSERT_NO_FATAL_FAILURE(Stop());

  ASSERT_NO_FATAL_FAILURE(Start());
  ASSERT_TRUE(daemon_->WaitInferenceServing()) << "the loaded model should be served again";
  const auto listed = List();
  ASSERT_EQ(listed.models_size(), 1);
  EXPECT_TRUE(listed.models(0).served());
  EXPECT_EQ(listed.default_model(), "tiny");
  const ChatResult chat = RunChat(*inference_, TinyChat(3, "default"));
  EXPECT_TRUE(chat.status.ok()) << chat.status.error_message();
}

// LoadModel's queue timeout and sampling defaults (the [[models]] keys of the same names)
// reach the model's engine as its command-line flags, a load with the same options changes
// nothing, a restart keeps them, other options swap to engines without them, inferboxctl's
// flags say the same, and bad values are refused naming the option with nothing served.
TEST_F(ModelAdminTest, LoadPassesTheQueueTimeoutAndSamplingDefaultsToTheEngine) {
  ASSERT_NO_FATAL_FAILURE(Start());
  ASSERT_TRUE(InstallFolder("tiny", v1()).status.ok());
  auto load = [&](double queue_timeout, const std::string& sampling_defaults,
                  api::LoadModelResponse* response) {
    grpc::ClientContext context;
    Prepare(context, "", 300s);
    api::LoadModelRequest request;
    request.set_id("tiny");
    request.mutable_options()->set_kv_cache_gib(0.1);
    request.mutable_options()->set_queue_timeout_seconds(queue_timeout);
    request.mutable_options()->set_sampling_defaults(sampling_defaults);
    return admin_->LoadModel(&context, request, response);
  };
  // The value after flag `name` on the command line of the model's one engine, once it is
  // `want` (a swap's old engine may still be listed for a while), else the last value seen
  // within 60 s; "(none)" without the flag, "(no engine)" when none ran alone.
  auto engine_flag = [&](const std::string& name, const std::string& want) {
    std::string seen = "(no engine)";
    WaitForStatus(*admin_, [&](const api::GetStatusResponse& status) {
      if (status.engines_size() != 1 || status.engines(0).pid() <= 0) return false;
      std::ifstream file("/proc/" + std::to_string(status.engines(0).pid()) + "/cmdline");
      std::vector<std::string> arguments;
      for (std::string argument; std::getline(file, argument, '\0');) arguments.push_back(argument);
      if (arguments.empty()) return false;
      const auto found = std::find(arguments.begin(), arguments.end(), name);
      seen = found == arguments.end() || found + 1 == arguments.end() ? "(none)" : *(found + 1);
      return seen == want;
    });
    return seen;
  };

  api::LoadModelResponse response;
  const grpc::Status bad_defaults = load(0, "vllm", &response);
  EXPECT_EQ(bad_defaults.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(bad_defaults.error_message(), HasSubstr("options.sampling_defaults"));
  for (const double bad : {-1.0, 86401.0, std::nan("")}) {
    const grpc::Status refused = load(bad, "", &response);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad;
    EXPECT_THAT(refused.error_message(), HasSubstr("options.queue_timeout_seconds")) << bad;
  }
  ASSERT_EQ(List().models_size(), 1);
  EXPECT_FALSE(List().models(0).served()) << "a refused load must serve nothing";

  ASSERT_TRUE(load(2.5, "openai", &response).ok());
  EXPECT_EQ(response.action(), api::LOAD_ACTION_LOADED);
  EXPECT_EQ(engine_flag("--queue-timeout", "2.5"), "2.5");
  EXPECT_EQ(engine_flag("--sampling-defaults", "openai"), "openai");
  ASSERT_TRUE(daemon_->WaitInferenceServing());
  ASSERT_TRUE(load(2.5, "openai", &response).ok());
  EXPECT_EQ(response.action(), api::LOAD_ACTION_UNCHANGED);
  const auto ctl = RunCommand(
      {INFERBOXCTL_PATH, "--address", daemon_->grpc_address(), "models", "load", "tiny",
       "--kv-cache-gib", "0.1", "--queue-timeout", "2.5", "--sampling-defaults", "openai"},
      dir_.path(), 120s);
  EXPECT_EQ(ctl.exit_code, 0) << ctl.err;
  EXPECT_THAT(ctl.out, HasSubstr("tiny already serving"));

  ASSERT_NO_FATAL_FAILURE(Stop());
  ASSERT_NO_FATAL_FAILURE(Start());
  EXPECT_EQ(engine_flag("--queue-timeout", "2.5"), "2.5") << "lost across a restart";
  EXPECT_EQ(engine_flag("--sampling-defaults", "openai"), "openai") << "lost across a restart";

  // Other options are a swap to engines that have them: here the defaults, no flags.
  ASSERT_TRUE(daemon_->WaitInferenceServing());
  ASSERT_TRUE(load(0, "", &response).ok());
  EXPECT_EQ(response.action(), api::LOAD_ACTION_SWAPPED);
  EXPECT_EQ(engine_flag("--queue-timeout", "(none)"), "(none)");
  EXPECT_EQ(engine_flag("--sampling-defaults", "(none)"), "(none)");
}

TEST_F(ModelAdminTest, SwapsToANewVersionWhileAClientStreamsWithoutAFailedRequest) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const Installed first = InstallFolder("tiny", v1());
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  ASSERT_TRUE(Load("tiny").ok());
  ASSERT_TRUE(daemon_->WaitInferenceServing());

  std::atomic<bool> swapping{true};
  std::atomic<int> completed{0};
  std::vector<std::string> failures;
  std::thread client([&] {
    auto inference = api::Inference::NewStub(channel_);
    while (swapping.load()) {
      const ChatResult chat = RunChat(*inference, TinyChat(24, "tiny"));
      if (!chat.status.ok()) failures.push_back(chat.status.error_message());
      ++completed;
    }
  });
  const Installed second = InstallFolder("tiny", v2(), /*replace=*/true);
  api::LoadModelResponse swapped;
  const grpc::Status swap = second.status.ok() ? Load("tiny", &swapped) : second.status;
  // Keep streaming a little after the switch, on the new engines.
  std::this_thread::sleep_for(500ms);
  swapping.store(false);
  client.join();

  ASSERT_TRUE(swap.ok()) << swap.error_message();
  EXPECT_EQ(swapped.action(), api::LOAD_ACTION_SWAPPED);
  EXPECT_EQ(swapped.digest(), second.progress.back().installed().digest());
  EXPECT_GT(completed.load(), 0);
  EXPECT_THAT(failures, ::testing::IsEmpty()) << "a request failed during the swap";
  const auto listed = List();
  ASSERT_EQ(listed.models_size(), 1);
  EXPECT_EQ(listed.models(0).digest(), swapped.digest());
  EXPECT_EQ(listed.models(0).served_digest(), "") << "the old version is still served";
}

TEST_F(ModelAdminTest, InferboxctlInstallsListsPlansLoadsAndRemoves) {
  ASSERT_NO_FATAL_FAILURE(Start());
  auto ctl = [&](std::vector<std::string> arguments) {
    arguments.insert(arguments.begin(), {INFERBOXCTL_PATH, "--address", daemon_->grpc_address()});
    return RunCommand(arguments, dir_.path(), 120s);
  };
  const auto install = ctl({"models", "install", "tiny", "--from", v1().string()});
  ASSERT_EQ(install.exit_code, 0) << install.err;
  // Not a terminal: plain progress lines, then the result.
  EXPECT_THAT(install.out, HasSubstr("transferring"));
  EXPECT_THAT(install.out, HasSubstr("installed tiny sha256:"));

  const auto list = ctl({"models", "list"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  EXPECT_THAT(list.out, HasSubstr("ID"));
  EXPECT_THAT(list.out, HasSubstr("tiny"));
  const auto json = ctl({"models", "list", "--json"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  EXPECT_THAT(json.out, HasSubstr("\"id\": \"tiny\""));

  const auto plan = ctl({"models", "plan", "tiny", "--context-length", "512"});
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  EXPECT_THAT(plan.out, HasSubstr("none (CPU plan)"));
  EXPECT_THAT(plan.out, HasSubstr("concurrent sequences"));

  const auto load = ctl({"models", "load", "tiny", "--kv-cache-gib", "0.1"});
  ASSERT_EQ(load.exit_code, 0) << load.err;
  const auto refused = ctl({"models", "remove", "tiny"});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_THAT(refused.err, HasSubstr("tiny is served"));
  ASSERT_EQ(ctl({"models", "default", "tiny"}).exit_code, 0);
  ASSERT_EQ(ctl({"models", "unload", "tiny"}).exit_code, 0);
  const auto removed = ctl({"models", "remove", "tiny"});
  ASSERT_EQ(removed.exit_code, 0) << removed.err;
  EXPECT_THAT(removed.out, HasSubstr("removed tiny"));
}

}  // namespace
}  // namespace inferbox::testing
