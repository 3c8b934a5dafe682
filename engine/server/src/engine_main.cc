// inferbox-engine's program (EngineMain; main.cc calls it): one model replica in its own
// process. Loads the model, runs the engine loop, and serves inferbox.engine.v1 to inferboxd on a
// unix socket (mode 0600, never a network port). The socket answers Health (LOADING) while the
// weights load.
//
//   inferbox-engine --model DIR --socket PATH [--device cpu|cuda[:N]] [--kv-cache-gib G]
//       [--tensor-parallel N] [--quantization none|fp8] [--kv-cache-dtype auto|fp8] ...
//
// Exit status: 0 after SIGTERM/SIGINT and a drain; 2 bad arguments; 78 (EX_CONFIG) a model
// folder or setting that cannot work, so restarting will not help; 1 the socket could not
// be served, the daemon is gone, or loading failed for a reason that may pass; 70
// (EX_SOFTWARE) the engine loop failed. The reason is on stderr (the journal
// under systemd).
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <CLI/CLI.hpp>

#include "inferbox/common/grpc_process.h"
#include "inferbox/common/logging.h"
#include "inferbox/common/version.h"
#include "inferbox/engine/backend/factory.h"
#include "inferbox/engine/parallel/nccl_communicator.h"
#include "inferbox/engine/parallel/tensor_parallel_model.h"
#include "inferbox/engine/server/engine_main.h"
#include "inferbox/engine/server/engine_service.h"

namespace inferbox::engine {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
constexpr int kExitSoftware = 70;
constexpr int kExitConfig = 78;
constexpr int kMaxMessageBytes = 16 * 1024 * 1024;
// The OOM killer's score bias of every engine (-1000..1000; the daemon keeps 0).
constexpr int kOomScoreAdj = 500;

struct Options {
  std::filesystem::path model;
  std::filesystem::path socket;
  std::string device = "cpu";
  int32_t tensor_parallel = 1;
  Quantization quantization = Quantization::kNone;
  KvCacheDType kv_cache_dtype = KvCacheDType::kAuto;
  std::string model_id;
  // 0: 1 GiB on the CPU; on a GPU, what the memory fraction leaves after weights.
  double kv_cache_gib = 0.0;
  double gpu_memory_fraction = 0.9;
  int32_t block_size = 16;
  int64_t max_running = 64;
  int64_t token_budget = 512;
  int64_t max_model_len = 0;
  int64_t max_waiting = 1024;
  int64_t max_waiting_tokens = 0;
  double queue_timeout_seconds = 0.0;
  // Where a request's unset sampling parameters come from: "model" (generation_config.json,
  // then the OpenAI defaults) or "openai" (the OpenAI defaults only, as vLLM's
  // --generation-config vllm).
  std::string sampling_defaults = "model";
  double drain_timeout_seconds = 30.0;
  std::string log_level = "info";
  pid_t parent_pid = 0;
};

sigset_t StopSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  return signals;
}

// Checks the socket path and removes a socket a previous engine left behind.
Status PrepareSocketPath(const std::filesystem::path& path) {
  // sockaddr_un.sun_path holds 108 bytes with the terminating NUL.
  if (path.native().size() > 107) {
    return InvalidArgumentError(fmt::format(
        "--socket {}: longer than the 107 bytes a unix socket path may have", path.string()));
  }
  if (!std::filesystem::is_directory(path.parent_path())) {
    return InvalidArgumentError(fmt::format("--socket {}: the directory {} does not exist",
                                            path.string(), path.parent_path().string()));
  }
  std::error_code error;
  const auto status = std::filesystem::symlink_status(path, error);
  if (!error && std::filesystem::exists(status)) {
    if (!std::filesystem::is_socket(status)) {
      return InvalidArgumentError(
          fmt::format("--socket {}: exists and is not a socket", path.string()));
    }
    std::filesystem::remove(path, error);
    if (error) {
      return InvalidArgumentError(fmt::format("--socket {}: cannot remove the stale socket: {}",
                                              path.string(), error.message()));
    }
  }
  return Status::Ok();
}

// The model, its tokenizer and what serves it, built after the socket is up.
struct LoadedEngine {
  std::unique_ptr<Backend> backend;  // --tensor-parallel 1.
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Model> model;  // --tensor-parallel 1.
  // Past one rank: the ranks' shards, each with its own backend.
  std::unique_ptr<TensorParallelModel> parallel_model;
  std::unique_ptr<RequestBuilder> builder;
  // EngineMainHooks::wrap_runner's runner around the model, when it gave one.
  std::unique_ptr<ModelRunner> wrapped;
  std::unique_ptr<Runtime> runtime;

  // What the engine loop runs.
  ModelRunner& runner() {
    if (wrapped) return *wrapped;
    return parallel_model ? static_cast<ModelRunner&>(*parallel_model) : *model;
  }
  // The config, eos ids and generation config (rank 0's: every rank's are the same).
  const Model& front_model() const { return parallel_model ? parallel_model->shard(0) : *model; }
};

// --tensor-parallel N: N ranks in this process, each a thread with its own backend. On the
// CPU they meet in host memory; with --device cuda rank r is visible GPU r, over NCCL.
Result<std::unique_ptr<TensorParallelModel>> LoadTensorParallel(const Options& options) {
  std::vector<std::unique_ptr<Communicator>> communicators;
  TensorParallelModel::BackendFactory make_backend;
  if (options.device == "cpu") {
    communicators = MakeLocalCommunicators(options.tensor_parallel);
    make_backend = [](int32_t) { return MakeBackend("cpu"); };
  } else if (options.device == "cuda") {
    std::vector<int> devices(static_cast<size_t>(options.tensor_parallel));
    for (size_t r = 0; r < devices.size(); ++r) devices[r] = static_cast<int>(r);
    auto nccl = MakeNcclCommunicators(devices);
    if (!nccl.ok()) {
      return nccl.status().WithContext(
          fmt::format("--tensor-parallel {} on --device cuda", options.tensor_parallel));
    }
    communicators = std::move(nccl).value();
    make_backend = [](int32_t rank) { return MakeBackend(fmt::format("cuda:{}", rank)); };
  } else {
    return InvalidArgumentError(fmt::format(
        "--tensor-parallel {} on --device {}: use --device cuda (ranks on the visible GPUs 0 to "
        "{}) or --device cpu",
        options.tensor_parallel, options.device, options.tensor_parallel - 1));
  }
  TensorParallelOptions parallel_options;
  parallel_options.quantization = options.quantization;
  parallel_options.kv_cache_dtype = options.kv_cache_dtype;
  auto model = TensorParallelModel::Load(options.model, std::move(communicators), make_backend,
                                         parallel_options);
  if (!model.ok()) return model.status();
  spdlog::info("tensor parallel: {} ranks on {}, {} OpenMP threads each", options.tensor_parallel,
               options.device, (*model)->threads_per_rank());
  return model;
}

// KV cache bytes on the device(s): after a forward pass of the largest step (so activation
// buffers exist), what the memory fraction leaves free. Past one rank, every rank holds an
// equal part of each block: the budget is the tightest rank's times the ranks.
Result<int64_t> DeviceKvBudget(const Options& options, int64_t max_model_len, ModelRunner& runner,
                               const std::vector<Backend*>& backends,
                               const std::optional<DeviceMemory>& before) {
  // The warm-up step feeds exactly the token budget, over as many sequences as may run.
  const int64_t sequences =
      std::max<int64_t>(1, std::min(options.max_running, options.token_budget));
  const int64_t tokens_each = options.token_budget / sequences;
  const int64_t first_tokens = tokens_each + options.token_budget % sequences;
  if (first_tokens > max_model_len) {
    return InvalidArgumentError(fmt::format(
        "--token-budget {} over --max-running {} gives a sequence {} tokens long, more than "
        "the context of {}",
        options.token_budget, options.max_running, first_tokens, max_model_len));
  }
  const int64_t blocks_each = (first_tokens + options.block_size - 1) / options.block_size;
  {
    auto cache = runner.AllocateKvCache(sequences * blocks_each, options.block_size);
    std::vector<int32_t> tokens(static_cast<size_t>(first_tokens), 0);
    std::vector<std::vector<int32_t>> tables(static_cast<size_t>(sequences));
    std::vector<ForwardSequence> batch;
    for (int64_t s = 0; s < sequences; ++s) {
      auto& table = tables[static_cast<size_t>(s)];
      for (int64_t b = 0; b < blocks_each; ++b)
        table.push_back(static_cast<int32_t>(s * blocks_each + b));
      const size_t count = static_cast<size_t>(s == 0 ? first_tokens : tokens_each);
      batch.push_back({std::span<const int32_t>(tokens).first(count), 0, table});
    }
    auto warm = runner.ForwardOnBackend(batch, *cache, false);
    if (!warm.ok()) return warm.status();
    // Reading the logits back waits for the step, as Model::Forward does.
    std::vector<float> logits;
    runner.logits_backend().ReadBack(*warm, logits);
  }
  int64_t budget = INT64_MAX;
  DeviceMemory tightest{};
  int64_t reserved = 0;
  for (Backend* backend : backends) {
    const std::optional<DeviceMemory> after = backend->device_memory();
    const auto kept = static_cast<int64_t>((1.0 - options.gpu_memory_fraction) *
                                           static_cast<double>(after->total_bytes));
    if (after->free_bytes - kept < budget) {
      budget = after->free_bytes - kept;
      tightest = *after;
      reserved = kept;
    }
  }
  spdlog::info(
      "GPU memory{}: {}{:.2f} of {:.2f} GiB free after weights and a {}-token warm-up step; "
      "{:.2f} GiB kept back (--gpu-memory-fraction {})",
      backends.size() > 1 ? fmt::format(" (the tightest of {} ranks)", backends.size()) : "",
      before ? fmt::format("{:.2f} GiB free before the model, ",
                           static_cast<double>(before->free_bytes) / (1 << 30))
             : "",
      static_cast<double>(tightest.free_bytes) / (1 << 30),
      static_cast<double>(tightest.total_bytes) / (1 << 30), sequences * tokens_each,
      static_cast<double>(reserved) / (1 << 30), options.gpu_memory_fraction);
  if (budget <= 0) {
    return FailedPreconditionError(fmt::format(
        "no GPU memory is left for the KV cache: {:.2f} GiB free after loading, {:.2f} GiB kept "
        "back by --gpu-memory-fraction {}",
        static_cast<double>(tightest.free_bytes) / (1 << 30),
        static_cast<double>(reserved) / (1 << 30), options.gpu_memory_fraction));
  }
  return budget * static_cast<int64_t>(backends.size());
}

Result<std::unique_ptr<LoadedEngine>> Load(const Options& options, const EngineMainHooks& hooks) {
  if (!std::filesystem::is_directory(options.model)) {
    return NotFoundError(fmt::format("the model folder {} does not exist", options.model.string()));
  }
  auto engine = std::make_unique<LoadedEngine>();
  std::optional<DeviceMemory> device_before;
  if (options.tensor_parallel == 1) {
    auto backend = MakeBackend(options.device);
    if (!backend.ok()) return backend.status();
    engine->backend = std::move(backend).value();
    device_before = engine->backend->device_memory();
    if (device_before) {
      spdlog::info("decode steps as CUDA graphs: {}",
                   engine->backend->RecordedBatchSize(1) > 0
                       ? "on (up to 256 sequences; INFERBOX_CUDA_GRAPHS=0 turns them off)"
                       : "off (INFERBOX_CUDA_GRAPHS=0, or INFERBOX_CUDA_OP_TIMES set)");
    }
  }
  auto tokenizer = Tokenizer::LoadFromDirectory(options.model);
  if (!tokenizer.ok()) return tokenizer.status();
  engine->tokenizer = std::move(tokenizer).value();
  if (options.tensor_parallel == 1) {
    auto model = Model::Load(options.model, *engine->backend, {}, options.quantization,
                             options.kv_cache_dtype);
    if (!model.ok()) return model.status();
    engine->model = std::move(model).value();
  } else {
    auto model = LoadTensorParallel(options);
    if (!model.ok()) return model.status();
    engine->parallel_model = std::move(model).value();
  }
  if (hooks.wrap_runner) {
    auto wrapped = hooks.wrap_runner(engine->runner());
    if (!wrapped.ok()) return wrapped.status();
    engine->wrapped = std::move(wrapped).value();
  }
  const ModelConfig& config = engine->front_model().config();
  if (options.quantization == Quantization::kFp8) {
    spdlog::info(
        "linear layers in FP8 E4M3 (--quantization fp8): {:.2f} GiB of weights read per "
        "decode step",
        static_cast<double>(engine->parallel_model
                                ? engine->parallel_model->WeightBytesPerDecodeStep()
                                : engine->model->WeightBytesPerDecodeStep()) /
            (1 << 30));
  }

  std::optional<ChatFormat> chat;
  if (auto format = ChatFormat::LoadFromDirectory(options.model, *engine->tokenizer); format.ok()) {
    chat = std::move(format).value();
  } else if (format.status().code() == StatusCode::kNotFound) {
    spdlog::info("{}: serving Generate only", format.status().message());
  } else {
    return format.status();
  }

  RuntimeOptions runtime;
  runtime.block_size = options.block_size;
  runtime.max_waiting = options.max_waiting;
  runtime.max_waiting_tokens = options.max_waiting_tokens;
  // A positive timeout is at least 1 ms: rounded to 0 it would mean "no limit".
  runtime.queue_timeout = std::chrono::milliseconds(
      options.queue_timeout_seconds > 0
          ? std::max<int64_t>(1, std::llround(options.queue_timeout_seconds * 1000))
          : 0);
  runtime.limits.max_running = options.max_running;
  runtime.limits.token_budget = options.token_budget;
  runtime.limits.max_model_len = config.max_position_embeddings;
  if (options.max_model_len > 0) {
    if (options.max_model_len > config.max_position_embeddings) {
      return InvalidArgumentError(
          fmt::format("--max-model-len {} exceeds the model's max_position_embeddings of {}",
                      options.max_model_len, config.max_position_embeddings));
    }
    runtime.limits.max_model_len = options.max_model_len;
  }
  // KV cache: the memory budget, but no more than every running sequence at full length.
  // Past one rank, a block's bytes are every rank's part of it together.
  const int64_t bytes_per_block = engine->runner().KvCacheBytesPerBlock(options.block_size);
  auto budget_bytes = static_cast<int64_t>((options.kv_cache_gib > 0 ? options.kv_cache_gib : 1.0) *
                                           1024.0 * 1024.0 * 1024.0);
  // The backends that compute on a device: the one backend, or every rank's.
  std::vector<Backend*> devices;
  if (engine->parallel_model) {
    for (int32_t r = 0; r < engine->parallel_model->world_size(); ++r) {
      if (engine->parallel_model->backend(r).device_memory())
        devices.push_back(&engine->parallel_model->backend(r));
    }
  } else if (device_before) {
    devices.push_back(engine->backend.get());
  }
  if (!devices.empty()) {
    auto device_budget = DeviceKvBudget(options, runtime.limits.max_model_len, engine->runner(),
                                        devices, device_before);
    if (!device_budget.ok()) return device_budget.status();
    if (options.kv_cache_gib == 0) {
      budget_bytes = *device_budget;
    } else if (budget_bytes > *device_budget) {
      return FailedPreconditionError(fmt::format(
          "--kv-cache-gib {} does not fit: {:.2f} GiB are left on the GPU after the weights "
          "within --gpu-memory-fraction {}",
          options.kv_cache_gib, static_cast<double>(*device_budget) / (1 << 30),
          options.gpu_memory_fraction));
    }
  }
  const int64_t budget_blocks = budget_bytes / bytes_per_block;
  const int64_t blocks_per_sequence =
      (runtime.limits.max_model_len + options.block_size - 1) / options.block_size;
  const int64_t num_blocks = std::min(budget_blocks, blocks_per_sequence * options.max_running);
  if (num_blocks < blocks_per_sequence) {
    return InvalidArgumentError(fmt::format(
        "the KV cache budget of {:.2f} GiB holds {} tokens, less than one sequence of "
        "--max-model-len {}; give more memory (--kv-cache-gib, --gpu-memory-fraction) or a "
        "shorter --max-model-len",
        static_cast<double>(budget_bytes) / (1 << 30), budget_blocks * options.block_size,
        runtime.limits.max_model_len));
  }
  runtime.num_blocks = static_cast<int32_t>(std::min<int64_t>(num_blocks, INT32_MAX));
  spdlog::info(
      "KV cache on {}: {} blocks of {} tokens = {} tokens ({:.1f} MiB{}), context {} tokens, {} "
      "sequences at once",
      engine->runner().logits_backend().name(), runtime.num_blocks, options.block_size,
      static_cast<int64_t>(runtime.num_blocks) * options.block_size,
      static_cast<double>(runtime.num_blocks * bytes_per_block) / (1024.0 * 1024.0),
      options.kv_cache_dtype == KvCacheDType::kFp8E4M3
          ? ", FP8 E4M3 with a scale per token and KV head"
          : "",
      runtime.limits.max_model_len, options.max_running);

  std::vector<int32_t> eos = engine->front_model().EosTokenIds();
  // The model's end-of-sequence ids stay either way: they are not a sampling default.
  GenerationConfig generation = engine->front_model().generation_config();
  if (options.sampling_defaults == "openai")
    generation = {.eos_token_ids = generation.eos_token_ids};
  // The runner's config: a wrapper's vocabulary (EngineMainHooks) is the one prompts must fit.
  engine->builder = std::make_unique<RequestBuilder>(
      *engine->tokenizer, std::move(chat), engine->runner().config(), std::move(generation), eos,
      runtime.limits.max_model_len);
  // Fault injection for the supervision tests (tests/integration/daemon_engine_test.cc).
  for (const auto& [variable, field] :
       {std::pair{"INFERBOX_TEST_FAULT_STALL_AFTER_STEPS", &runtime.fault_stall_after_steps},
        std::pair{"INFERBOX_TEST_FAULT_FAIL_AFTER_STEPS", &runtime.fault_fail_after_steps}}) {
    if (const char* value = std::getenv(variable); value != nullptr && *value != '\0') {
      *field = std::atoll(value);
      spdlog::warn("{}={}: fault injection is on", variable, *field);
    }
  }
  engine->runtime = std::make_unique<Runtime>(engine->runner(), engine->tokenizer.get(), runtime);
  return engine;
}

int Run(const Options& options, const EngineMainHooks& hooks) {
  const sigset_t signals = StopSignals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // An engine never outlives the daemon that started it: SIGKILL (not a drain: nobody is
  // left to serve) when it dies, and an immediate exit if it died before this line.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (options.parent_pid > 0 && getppid() != options.parent_pid) {
    fmt::print(stderr, "inferbox-engine: the daemon (pid {}) is gone\n", options.parent_pid);
    return kExitFailure;
  }
  // The socket (the only file this process creates) is for its owner alone.
  umask(0077);
  // When memory runs out the kernel should kill an engine rather than the daemon: the
  // supervisor fails the engine's requests with a clear error and restarts it, whereas the
  // daemon holds every client connection. Raising one's own score needs no privilege.
  if (std::ofstream oom("/proc/self/oom_score_adj"); !(oom << kOomScoreAdj << std::flush)) {
    fmt::print(stderr, "inferbox-engine: cannot set /proc/self/oom_score_adj (continuing)\n");
  }

  auto level = ParseLogLevel(options.log_level);
  if (!level.ok()) {
    fmt::print(stderr, "inferbox-engine: --log-level: {}\n", level.status().message());
    return kExitUsage;
  }
  InitLogging("inferbox-engine", *level);
  const std::string model_id =
      options.model_id.empty() ? options.model.filename().string() : options.model_id;
  spdlog::info("inferbox-engine {} ({}) starting: model {} from {}", kVersion, kGitCommit, model_id,
               options.model.string());

  const std::filesystem::path socket = std::filesystem::absolute(options.socket);
  if (Status status = PrepareSocketPath(socket); !status.ok()) {
    spdlog::critical("{}", status.message());
    return kExitConfig;
  }
  EngineService service(model_id);
  if (const char* late = std::getenv("INFERBOX_TEST_FAULT_LATE_STATUS_MS");
      late != nullptr && *late != '\0') {
    service.SetLateStatusForTests(std::chrono::milliseconds(std::atoll(late)));
    spdlog::warn("INFERBOX_TEST_FAULT_LATE_STATUS_MS={}: fault injection is on", late);
  }
  service.SetLoadingMessage("loading the model");
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + socket.string(), grpc::InsecureServerCredentials());
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) {
    spdlog::critical("cannot serve the socket {}", socket.string());
    return kExitFailure;
  }
  chmod(socket.c_str(), 0600);
  spdlog::info("serving inferbox.engine.v1 on unix:{}", socket.string());

  auto shutdown = [&](int exit_code) {
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    server->Wait();
    std::error_code ignored;
    std::filesystem::remove(socket, ignored);
    return exit_code;
  };

  auto engine = Load(options, hooks);
  if (!engine.ok()) {
    spdlog::critical("cannot load the model {}: {}", options.model.string(),
                     engine.status().message());
    service.SetFailed(engine.status().message());
    // 78 tells the supervisor that restarting cannot help; anything else may be passing.
    const StatusCode code = engine.status().code();
    const bool permanent = code == StatusCode::kInvalidArgument || code == StatusCode::kNotFound ||
                           code == StatusCode::kFailedPrecondition;
    return shutdown(permanent ? kExitConfig : kExitFailure);
  }
  service.SetReady((*engine)->runtime.get(), (*engine)->builder.get(), (*engine)->tokenizer.get());
  LogEvent(spdlog::level::info, message_ids::kReady, "ready: model " + model_id);

  int exit_code = kExitOk;
  for (;;) {
    const timespec poll{1, 0};
    const int signal_number = sigtimedwait(&signals, nullptr, &poll);
    if (signal_number == SIGTERM || signal_number == SIGINT) {
      spdlog::info("{}: draining (up to {} s)", signal_number == SIGTERM ? "SIGTERM" : "SIGINT",
                   options.drain_timeout_seconds);
      break;
    }
    if (const RuntimeStats stats = (*engine)->runtime->stats(); stats.failed) {
      spdlog::critical("the engine loop failed: {}", stats.failure);
      exit_code = kExitSoftware;
      break;
    }
  }
  const auto drain_timeout =
      std::chrono::milliseconds(static_cast<int64_t>(options.drain_timeout_seconds * 1000.0));
  if (const int64_t aborted = service.DrainRequests(drain_timeout); aborted > 0)
    spdlog::warn("drain timeout: {} requests aborted with UNAVAILABLE", aborted);
  shutdown(exit_code);
  (*engine)->runtime.reset();
  spdlog::info("stopped");
  return exit_code;
}

}  // namespace

int EngineMain(int argc, char** argv, const EngineMainHooks& hooks) {
  DisableMutexDeadlockDetection();
  CLI::App app{"inferbox-engine: serves one model replica to inferboxd over a unix socket"};
  Options options;
  app.add_option("--model", options.model, "Model folder (Hugging Face layout)")->required();
  app.add_option("--socket", options.socket, "Unix socket path to serve inferbox.engine.v1 on")
      ->required();
  app.add_option("--device", options.device, "cpu, cuda (device 0) or cuda:N")
      ->capture_default_str();
  app.add_option("--tensor-parallel", options.tensor_parallel,
                 "Ranks the model is split over (Megatron tensor parallelism); on the CPU each "
                 "rank is a thread with its share of the cores, with --device cuda rank r is "
                 "visible GPU r (NCCL, libnccl.so.2)")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--quantization", options.quantization,
                 "The linear layers' weights: none (as the model file has them; BF16 on a GPU) "
                 "or fp8 (FP8 E4M3 with one scale per weight group, quantised at load; half the "
                 "bytes per decode step; a GPU needs compute capability 8.9 or later)")
      ->transform(
          CLI::CheckedTransformer(std::map<std::string, Quantization>{{"none", Quantization::kNone},
                                                                      {"fp8", Quantization::kFp8}},
                                  CLI::ignore_case))
      ->default_str("none");
  app.add_option("--kv-cache-dtype", options.kv_cache_dtype,
                 "The KV cache: auto (the backend's precision: BF16 on a GPU, float32 on the "
                 "CPU) or fp8 (E4M3 with a scale per token and KV head, quantised as written: "
                 "about half of BF16's bytes, so twice the tokens in the same memory)")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, KvCacheDType>{{"auto", KvCacheDType::kAuto},
                                              {"fp8", KvCacheDType::kFp8E4M3}},
          CLI::ignore_case))
      ->default_str("auto");
  app.add_option("--model-id", options.model_id,
                 "Model id reported to clients (default: folder name)");
  app.add_option("--kv-cache-gib", options.kv_cache_gib,
                 "Memory for the KV cache, GiB (default: 1 on the CPU; on a GPU, what "
                 "--gpu-memory-fraction leaves after the weights)")
      ->check(CLI::PositiveNumber);
  app.add_option("--gpu-memory-fraction", options.gpu_memory_fraction,
                 "Share of the GPU's memory the engine may use (weights, activations, KV cache)")
      ->check(CLI::Range(0.05, 0.99))
      ->capture_default_str();
  app.add_option("--block-size", options.block_size, "Tokens per KV block")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--max-running", options.max_running, "Sequences decoding at once")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--token-budget", options.token_budget, "Tokens per engine step (chunked prefill)")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--max-model-len", options.max_model_len,
                 "Context length (default: the model's max_position_embeddings)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-waiting", options.max_waiting, "Queued requests before RESOURCE_EXHAUSTED")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--max-waiting-tokens", options.max_waiting_tokens,
                 "Prompt tokens of the queued requests before RESOURCE_EXHAUSTED (one request is "
                 "always taken when none waits); 0: no limit")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40))
      ->capture_default_str();
  app.add_option("--sampling-defaults", options.sampling_defaults,
                 "Sampling parameters a request leaves unset: model (from the model's "
                 "generation_config.json, else the OpenAI defaults) or openai (temperature 1, "
                 "top_p 1, no top_k, min_p or repetition penalty)")
      ->check(CLI::IsMember({"model", "openai"}))
      ->capture_default_str();
  app.add_option("--queue-timeout", options.queue_timeout_seconds,
                 "Seconds a request may wait without starting before RESOURCE_EXHAUSTED (0: "
                 "no limit)")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  app.add_option("--drain-timeout", options.drain_timeout_seconds,
                 "Seconds SIGTERM waits for in-flight requests")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--log-level", options.log_level, "trace, debug, info, warn, error")
      ->capture_default_str();
  app.add_option("--parent-pid", options.parent_pid,
                 "Exit at once if this process (the supervising daemon) is already gone");
  if (hooks.add_options) hooks.add_options(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    const int code = app.exit(error);
    return code == 0 ? kExitOk : kExitUsage;
  }
  return Run(options, hooks);
}

}  // namespace inferbox::engine
