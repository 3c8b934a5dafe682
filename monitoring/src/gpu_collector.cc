#include "inferbox/monitoring/gpu_collector.h"

#include <dlfcn.h>

#include <array>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>

#include <fmt/format.h>
#include <prometheus/metric_family.h>
#include <spdlog/spdlog.h>

#include "inferbox/common/logging.h"
#include "inferbox/common/status.h"
#include "inferbox/monitoring/metric_family.h"
#include "nvml_api.h"

namespace inferbox::monitoring {
namespace {

using nvml::nvmlDevice_t;
using nvml::nvmlEventData_t;
using nvml::nvmlEventSet_t;
using nvml::nvmlMemory_t;
using nvml::nvmlReturn_t;
using nvml::nvmlUtilization_t;
// Indices of Reading's arrays, NVML's values.
constexpr int kEccCorrected = nvml::NVML_MEMORY_ERROR_TYPE_CORRECTED;
constexpr int kEccUncorrected = nvml::NVML_MEMORY_ERROR_TYPE_UNCORRECTED;
constexpr int kRetiredForSingleBitErrors =
    nvml::NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS;
constexpr int kRetiredForDoubleBitError = nvml::NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR;

// The GPU metric families (docs/metrics.md), in the order /metrics lists them.
enum GpuFamily : size_t {
  kUtilization,
  kMemoryUsed,
  kMemoryTotal,
  kTemperature,
  kPower,
  kSmClock,
  kEccErrors,
  kEccVolatileErrors,
  kRetiredPages,
  kRetiredPagesPending,
  kRemappedRows,
  kRowRemapPending,
  kRowRemapFailure,
  kXidErrors,
  kLastXid,
  kHealthy,
  kNumGpuFamilies,
};
struct FamilySpec {
  const char* name;
  const char* help;
  prometheus::MetricType type;
};
using prometheus::MetricType;
constexpr std::array<FamilySpec, kNumGpuFamilies> kGpuFamilies = {{
    {"inferbox_gpu_utilization_ratio",
     "Share of the last sample period a kernel ran on the GPU, 0 to 1.", MetricType::Gauge},
    {"inferbox_gpu_memory_used_bytes", "GPU memory in use.", MetricType::Gauge},
    {"inferbox_gpu_memory_total_bytes", "GPU memory in all.", MetricType::Gauge},
    {"inferbox_gpu_temperature_celsius", "GPU core temperature.", MetricType::Gauge},
    {"inferbox_gpu_power_watts", "GPU board power draw.", MetricType::Gauge},
    {"inferbox_gpu_sm_clock_hertz", "GPU SM clock.", MetricType::Gauge},
    {"inferbox_gpu_ecc_errors_total",
     "ECC memory errors over the GPU's life, by type (corrected, uncorrected).",
     MetricType::Counter},
    {"inferbox_gpu_ecc_volatile_errors_total",
     "ECC memory errors since the driver loaded or the GPU was reset, by type (corrected, "
     "uncorrected).",
     MetricType::Counter},
    {"inferbox_gpu_retired_pages",
     "Memory pages retired, by cause (single_bit_ecc: repeated single-bit errors; "
     "double_bit_ecc).",
     MetricType::Gauge},
    {"inferbox_gpu_retired_pages_pending",
     "1 while page retirements wait for the next GPU reset or reboot.", MetricType::Gauge},
    {"inferbox_gpu_remapped_rows",
     "Memory rows remapped to spare rows, by cause (correctable, uncorrectable).",
     MetricType::Gauge},
    {"inferbox_gpu_row_remap_pending", "1 while a row remapping waits for the next GPU reset.",
     MetricType::Gauge},
    {"inferbox_gpu_row_remap_failure",
     "1 once a row remapping has failed (NVIDIA's replacement condition).", MetricType::Gauge},
    {"inferbox_gpu_xid_errors_total", "Xid events NVML reported since the daemon started, by Xid.",
     MetricType::Counter},
    {"inferbox_gpu_last_xid",
     "The latest Xid NVML reported since the daemon started; 0 before any.", MetricType::Gauge},
    {"inferbox_gpu_healthy",
     "1 while the GPU is fit to serve; 0 when lost, after a fatal Xid, a row remapping failure "
     "or uncorrected ECC errors.",
     MetricType::Gauge},
}};

// Xid events taken per look at most, so a GPU flooding events cannot stall a scrape.
constexpr int kMaxEventsPerLook = 256;

// Journal MESSAGE_ID of a GPU turning unhealthy (docs/operations.md).
constexpr MessageId kGpuUnhealthy{"2013ec4ecd81487ea0b92f2c5f20600c"};

// One GPU's readings at one moment; what NVML did not give (not supported, or a function
// the driver lacks) stays empty.
struct Reading {
  bool lost = false;  // NVML answered NVML_ERROR_GPU_IS_LOST.
  std::optional<nvmlUtilization_t> utilization;
  std::optional<nvmlMemory_t> memory;
  std::optional<unsigned int> celsius;
  std::optional<unsigned int> milliwatts;
  std::optional<unsigned int> sm_mhz;
  // Indexed by kEccCorrected / kEccUncorrected.
  std::array<std::optional<unsigned long long>, 2> ecc_volatile;
  std::array<std::optional<unsigned long long>, 2> ecc_aggregate;
  // Indexed by kRetiredForSingleBitErrors / kRetiredForDoubleBitError.
  std::array<std::optional<unsigned int>, 2> retired_pages;
  std::optional<bool> retired_pages_pending;
  struct RemappedRows {
    unsigned int correctable = 0;
    unsigned int uncorrectable = 0;
    bool pending = false;
    bool failure = false;
  };
  std::optional<RemappedRows> remapped_rows;
};

}  // namespace

struct GpuCollector::Nvml {
  // A GPU found at start; NVML handles stay valid until nvmlShutdown.
  struct Device {
    unsigned int index = 0;
    nvmlDevice_t handle = nullptr;  // Null when NVML found it already lost.
    std::string uuid;
    std::string name;
    bool xid_events = false;  // Registered for Xid events.
    // Guarded by `mutex`:
    std::map<unsigned long long, double> xid_counts;  // By Xid, since the daemon started.
    unsigned long long last_xid = 0;
    std::string fatal_xid;  // The first fatal Xid's reason; kept until the daemon restarts.
    unsigned long long fatal_xid_code = 0;  // Its number.
    GpuVerdict verdict;                     // The latest, to log changes once.
  };
  // One GPU at one look.
  struct Snapshot {
    const Device* device;  // Its identity (immutable after construction).
    Reading reading;
    std::map<unsigned long long, double> xid_counts;
    std::optional<unsigned long long> last_xid;  // Only with Xid events.
    GpuVerdict verdict;
  };

  void* handle = nullptr;
  nvmlReturn_t (*init)() = nullptr;
  nvmlReturn_t (*shutdown)() = nullptr;
  nvmlReturn_t (*count)(unsigned int*) = nullptr;
  nvmlReturn_t (*by_index)(unsigned int, nvmlDevice_t*) = nullptr;
  nvmlReturn_t (*name)(nvmlDevice_t, char*, unsigned int) = nullptr;
  nvmlReturn_t (*uuid)(nvmlDevice_t, char*, unsigned int) = nullptr;
  nvmlReturn_t (*utilization)(nvmlDevice_t, nvmlUtilization_t*) = nullptr;
  nvmlReturn_t (*memory)(nvmlDevice_t, nvmlMemory_t*) = nullptr;
  nvmlReturn_t (*temperature)(nvmlDevice_t, int, unsigned int*) = nullptr;
  nvmlReturn_t (*power)(nvmlDevice_t, unsigned int*) = nullptr;
  nvmlReturn_t (*clock)(nvmlDevice_t, int, unsigned int*) = nullptr;
  nvmlReturn_t (*ecc)(nvmlDevice_t, int, int, unsigned long long*) = nullptr;
  // Optional: null where the driver predates them.
  const char* (*error_string)(nvmlReturn_t) = nullptr;
  nvmlReturn_t (*retired_pages)(nvmlDevice_t, int, unsigned int*, unsigned long long*,
                                unsigned long long*) = nullptr;
  nvmlReturn_t (*retired_pages_pending)(nvmlDevice_t, int*) = nullptr;
  nvmlReturn_t (*remapped_rows)(nvmlDevice_t, unsigned int*, unsigned int*, unsigned int*,
                                unsigned int*) = nullptr;
  nvmlReturn_t (*event_set_create)(nvmlEventSet_t*) = nullptr;
  nvmlReturn_t (*register_events)(nvmlDevice_t, unsigned long long, nvmlEventSet_t) = nullptr;
  nvmlReturn_t (*event_set_wait)(nvmlEventSet_t, nvmlEventData_t*, unsigned int) = nullptr;
  nvmlReturn_t (*event_set_free)(nvmlEventSet_t) = nullptr;
  nvmlReturn_t (*driver_version)(char*, unsigned int) = nullptr;

  bool initialized = false;
  std::vector<Device> devices;      // Fixed after construction.
  nvmlEventSet_t events = nullptr;  // Null without Xid events; waited on under `mutex`.
  std::mutex mutex;

  ~Nvml() {
    if (events != nullptr) event_set_free(events);
    if (initialized) shutdown();
    if (handle != nullptr) dlclose(handle);
  }

  std::string ErrorText(nvmlReturn_t result) const {
    std::string text = "NVML error " + std::to_string(result);
    if (error_string != nullptr) text += std::string(" (") + error_string(result) + ")";
    return text;
  }

  void FindDevices();
  void RegisterXidEvents();
  // Takes the Xid events queued since the last look, reads every GPU and judges it.
  std::vector<Snapshot> Look();

 private:
  Reading Read(const Device& device) const;
  void TakeXidEvents();  // With `mutex` held.
};

void GpuCollector::Nvml::FindDevices() {
  unsigned int num_gpus = 0;
  if (const nvmlReturn_t result = count(&num_gpus); result != nvml::NVML_SUCCESS) {
    spdlog::warn("no GPU telemetry: NVML cannot count the GPUs: {}", ErrorText(result));
    return;
  }
  for (unsigned int index = 0; index < num_gpus; ++index) {
    nvmlDevice_t device = nullptr;
    const nvmlReturn_t result = by_index(index, &device);
    if (result != nvml::NVML_SUCCESS && result != nvml::NVML_ERROR_GPU_IS_LOST) {
      // Not ours to judge (hidden from this process, say): left out of telemetry and health.
      spdlog::warn("GPU {} left out of telemetry: {}", index, ErrorText(result));
      continue;
    }
    Device& found = devices.emplace_back();
    found.index = index;
    if (result == nvml::NVML_SUCCESS) {
      found.handle = device;
      char text[96] = {};
      if (uuid(device, text, sizeof(text)) == nvml::NVML_SUCCESS) found.uuid = text;
      text[0] = '\0';
      if (name(device, text, sizeof(text)) == nvml::NVML_SUCCESS) found.name = text;
    }
    found.verdict = {.index = index, .uuid = found.uuid, .name = found.name};
  }
}

void GpuCollector::Nvml::RegisterXidEvents() {
  if (event_set_create == nullptr || event_set_create(&events) != nvml::NVML_SUCCESS) {
    events = nullptr;
    return;
  }
  bool any = false;
  for (Device& device : devices) {
    device.xid_events = device.handle != nullptr &&
                        register_events(device.handle, nvml::nvmlEventTypeXidCriticalError,
                                        events) == nvml::NVML_SUCCESS;
    any = any || device.xid_events;
  }
  if (!any) {
    event_set_free(events);
    events = nullptr;
  }
}

Reading GpuCollector::Nvml::Read(const Device& device) const {
  Reading reading;
  // NVML_ERROR_NOT_SUPPORTED and the like leave a reading out; a lost GPU is noted.
  auto ok = [&reading](nvmlReturn_t result) {
    if (result == nvml::NVML_ERROR_GPU_IS_LOST) reading.lost = true;
    return result == nvml::NVML_SUCCESS;
  };
  nvmlDevice_t gpu = device.handle;
  if (nvmlUtilization_t rates{}; ok(utilization(gpu, &rates))) reading.utilization = rates;
  if (reading.lost) return reading;  // Every other call would answer the same.
  if (nvmlMemory_t bytes{}; ok(memory(gpu, &bytes))) reading.memory = bytes;
  if (unsigned int celsius = 0; ok(temperature(gpu, nvml::NVML_TEMPERATURE_GPU, &celsius)))
    reading.celsius = celsius;
  if (unsigned int milliwatts = 0; ok(power(gpu, &milliwatts))) reading.milliwatts = milliwatts;
  if (unsigned int mhz = 0; ok(clock(gpu, nvml::NVML_CLOCK_SM, &mhz))) reading.sm_mhz = mhz;
  for (const int type : {kEccCorrected, kEccUncorrected}) {
    unsigned long long errors = 0;
    if (ok(ecc(gpu, type, nvml::NVML_VOLATILE_ECC, &errors))) reading.ecc_volatile[type] = errors;
    if (ok(ecc(gpu, type, nvml::NVML_AGGREGATE_ECC, &errors))) reading.ecc_aggregate[type] = errors;
  }
  if (retired_pages != nullptr) {
    for (const int cause : {kRetiredForSingleBitErrors, kRetiredForDoubleBitError}) {
      // A count query: without buffers NVML answers how many (INSUFFICIENT_SIZE when some).
      unsigned int pages = 0;
      const nvmlReturn_t result = retired_pages(gpu, cause, &pages, nullptr, nullptr);
      if (ok(result) || result == nvml::NVML_ERROR_INSUFFICIENT_SIZE)
        reading.retired_pages[cause] = pages;
    }
  }
  if (int pending = 0; retired_pages_pending != nullptr && ok(retired_pages_pending(gpu, &pending)))
    reading.retired_pages_pending = pending == nvml::NVML_FEATURE_ENABLED;
  if (remapped_rows != nullptr) {
    unsigned int correctable = 0, uncorrectable = 0, pending = 0, failure = 0;
    if (ok(remapped_rows(gpu, &correctable, &uncorrectable, &pending, &failure))) {
      reading.remapped_rows =
          Reading::RemappedRows{correctable, uncorrectable, pending != 0, failure != 0};
    }
  }
  return reading;
}

void GpuCollector::Nvml::TakeXidEvents() {
  if (events == nullptr) return;
  for (int taken = 0; taken < kMaxEventsPerLook; ++taken) {
    nvmlEventData_t event{};
    // Timeout 0: never blocks; NVML_ERROR_TIMEOUT when none is queued.
    if (event_set_wait(events, &event, 0) != nvml::NVML_SUCCESS) return;
    if ((event.eventType & nvml::nvmlEventTypeXidCriticalError) == 0) continue;
    for (Device& device : devices) {
      if (device.handle == nullptr || device.handle != event.device) continue;
      const unsigned long long xid = event.eventData;
      device.xid_counts[xid] += 1;
      device.last_xid = xid;
      const std::optional<std::string> fatal = FatalXidReason(xid);
      if (fatal && device.fatal_xid.empty()) {
        device.fatal_xid = *fatal;
        device.fatal_xid_code = xid;
      }
      spdlog::log(fatal ? spdlog::level::err : spdlog::level::warn, "GPU {} ({}) reported {}",
                  device.index, device.uuid, fatal ? *fatal : fmt::format("Xid {}", xid));
    }
  }
}

namespace {

// Why a GPU is unfit to serve, from its first fatal Xid (if any) and its latest reading; empty
// while it is fit. The first cause found, most specific first.
std::string UnhealthyReason(const std::string& fatal_xid, const Reading& reading) {
  if (!fatal_xid.empty()) return fatal_xid;
  if (reading.lost) return "GPU lost: NVML reports it fell off the bus or became inaccessible";
  if (reading.remapped_rows && reading.remapped_rows->failure) {
    return "row remapping failure (NVIDIA's replacement condition)";
  }
  if (const auto errors = reading.ecc_volatile[kEccUncorrected]; errors && *errors > 0) {
    return fmt::format("{} uncorrected ECC errors since the driver loaded", *errors);
  }
  return "";
}

}  // namespace

std::vector<GpuCollector::Nvml::Snapshot> GpuCollector::Nvml::Look() {
  std::lock_guard lock(mutex);
  TakeXidEvents();
  std::vector<Snapshot> snapshots;
  snapshots.reserve(devices.size());
  for (Device& device : devices) {
    Snapshot& snapshot = snapshots.emplace_back(Snapshot{.device = &device});
    if (device.handle != nullptr) {
      snapshot.reading = Read(device);
    } else {
      snapshot.reading.lost = true;
    }
    GpuVerdict verdict = device.verdict;
    verdict.reason = UnhealthyReason(device.fatal_xid, snapshot.reading);
    verdict.healthy = verdict.reason.empty();
    if (verdict != device.verdict) {
      if (verdict.healthy) {
        spdlog::info("GPU {} ({}) is healthy again", device.index, device.uuid);
      } else {
        const std::string gpu = std::to_string(device.index);
        const std::string xid =
            device.fatal_xid.empty() ? "" : std::to_string(device.fatal_xid_code);
        LogEvent(
            spdlog::level::err, kGpuUnhealthy,
            fmt::format("GPU {} ({}) is unhealthy: {}", device.index, device.uuid, verdict.reason),
            {.gpu = gpu, .xid = xid});
      }
      device.verdict = verdict;
    }
    snapshot.verdict = std::move(verdict);
    snapshot.xid_counts = device.xid_counts;
    if (device.xid_events) snapshot.last_xid = device.last_xid;
  }
  return snapshots;
}

std::string DefaultNvmlLibrary() {
  const char* library = std::getenv("INFERBOX_NVML_LIBRARY");
  return library != nullptr && *library != '\0' ? library : "libnvidia-ml.so.1";
}

GpuCollector::GpuCollector(const std::string& library) {
  auto nvml = std::make_unique<Nvml>();
  nvml->handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (nvml->handle == nullptr) {
    const char* error = dlerror();
    reason_ = error != nullptr ? error : library + ": cannot load";
    spdlog::info("no GPU telemetry: {}", reason_);
    return;
  }
  auto bind = [&](auto& function, const char* symbol) {
    function =
        reinterpret_cast<std::remove_reference_t<decltype(function)>>(dlsym(nvml->handle, symbol));
    return function != nullptr;
  };
  const bool bound =
      bind(nvml->init, "nvmlInit_v2") && bind(nvml->shutdown, "nvmlShutdown") &&
      bind(nvml->count, "nvmlDeviceGetCount_v2") &&
      bind(nvml->by_index, "nvmlDeviceGetHandleByIndex_v2") &&
      bind(nvml->name, "nvmlDeviceGetName") && bind(nvml->uuid, "nvmlDeviceGetUUID") &&
      bind(nvml->utilization, "nvmlDeviceGetUtilizationRates") &&
      bind(nvml->memory, "nvmlDeviceGetMemoryInfo") &&
      bind(nvml->temperature, "nvmlDeviceGetTemperature") &&
      bind(nvml->power, "nvmlDeviceGetPowerUsage") && bind(nvml->clock, "nvmlDeviceGetClockInfo") &&
      bind(nvml->ecc, "nvmlDeviceGetTotalEccErrors");
  if (!bound) {
    reason_ = library + " lacks an NVML function the box needs (driver too old?)";
    spdlog::warn("no GPU telemetry: {}", reason_);
    return;
  }
  // Newer than the rest: with an older driver these readings are left out.
  bind(nvml->error_string, "nvmlErrorString");
  bind(nvml->retired_pages, "nvmlDeviceGetRetiredPages_v2");
  bind(nvml->retired_pages_pending, "nvmlDeviceGetRetiredPagesPendingStatus");
  bind(nvml->remapped_rows, "nvmlDeviceGetRemappedRows");
  const bool events_bound = bind(nvml->event_set_create, "nvmlEventSetCreate") &&
                            bind(nvml->register_events, "nvmlDeviceRegisterEvents") &&
                            bind(nvml->event_set_wait, "nvmlEventSetWait_v2") &&
                            bind(nvml->event_set_free, "nvmlEventSetFree");
  if (!events_bound) nvml->event_set_create = nullptr;
  bind(nvml->driver_version, "nvmlSystemGetDriverVersion");
  if (const nvmlReturn_t result = nvml->init(); result != nvml::NVML_SUCCESS) {
    reason_ = "nvmlInit failed with " + nvml->ErrorText(result);
    spdlog::warn("no GPU telemetry: {}", reason_);
    return;
  }
  nvml->initialized = true;
  if (nvml->driver_version != nullptr) {
    char version[96] = {};  // NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE is 80.
    if (nvml->driver_version(version, sizeof(version)) == nvml::NVML_SUCCESS) {
      driver_version_ = version;
    }
  }
  nvml->FindDevices();
  nvml->RegisterXidEvents();
  size_t with_xid_events = 0;
  for (const auto& device : nvml->devices) with_xid_events += device.xid_events ? 1 : 0;
  spdlog::info("GPU telemetry through {}: {} GPUs, Xid events from {}", library,
               nvml->devices.size(), with_xid_events);
  nvml_ = std::move(nvml);
}

GpuCollector::~GpuCollector() = default;

std::pair<int, double> GpuCollector::CountAndPower() const {
  if (!nvml_) return {0, 0.0};
  double watts = 0;
  for (const auto& device : nvml_->devices) {
    unsigned int milliwatts = 0;
    if (device.handle != nullptr &&
        nvml_->power(device.handle, &milliwatts) == nvml::NVML_SUCCESS) {
      watts += milliwatts / 1000.0;
    }
  }
  return {static_cast<int>(nvml_->devices.size()), watts};
}

GpuHealth GpuCollector::Health() const {
  GpuHealth health;
  if (!nvml_) return health;
  for (auto& snapshot : nvml_->Look()) health.gpus.push_back(std::move(snapshot.verdict));
  return health;
}

void GpuCollector::WatchHealth(std::chrono::milliseconds interval,
                               std::function<void(const GpuHealth&)> on_change) {
  INFERBOX_CHECK(!watcher_.joinable());
  if (!nvml_) return;
  watcher_ = std::jthread([this, interval, on_change = std::move(on_change),
                           last = Health()](std::stop_token stop) mutable {
    std::mutex mutex;
    std::condition_variable_any wake;
    std::unique_lock lock(mutex);
    // Wakes early only to stop.
    while (!wake.wait_for(lock, stop, interval, [&stop] { return stop.stop_requested(); })) {
      GpuHealth now = Health();
      if (now == last) continue;
      last = std::move(now);
      on_change(last);
    }
  });
}

void GpuCollector::StopWatchingHealth() {
  if (!watcher_.joinable()) return;
  watcher_.request_stop();
  watcher_.join();
}

std::vector<prometheus::MetricFamily> GpuCollector::Collect() const {
  if (!nvml_) return {};
  std::array<prometheus::MetricFamily, kNumGpuFamilies> families;
  for (size_t family = 0; family < kNumGpuFamilies; ++family) {
    families[family] =
        MakeFamily(kGpuFamilies[family].name, kGpuFamilies[family].help, kGpuFamilies[family].type);
  }
  auto add = [&families](GpuFamily family, std::vector<prometheus::ClientMetric::Label> labels,
                         double value) { AddSample(families[family], std::move(labels), value); };
  for (const auto& snapshot : nvml_->Look()) {
    const auto& device = *snapshot.device;
    const std::vector<prometheus::ClientMetric::Label> labels = {
        {"gpu", std::to_string(device.index)}, {"uuid", device.uuid}, {"name", device.name}};
    auto labels_and = [&labels](const char* key, std::string value) {
      auto more = labels;
      more.push_back({key, std::move(value)});
      return more;
    };
    const Reading& reading = snapshot.reading;
    add(kHealthy, labels, snapshot.verdict.healthy ? 1.0 : 0.0);
    if (reading.utilization) add(kUtilization, labels, reading.utilization->gpu / 100.0);
    if (reading.memory) {
      add(kMemoryUsed, labels, static_cast<double>(reading.memory->used));
      add(kMemoryTotal, labels, static_cast<double>(reading.memory->total));
    }
    if (reading.celsius) add(kTemperature, labels, *reading.celsius);
    if (reading.milliwatts) add(kPower, labels, *reading.milliwatts / 1000.0);
    if (reading.sm_mhz) add(kSmClock, labels, *reading.sm_mhz * 1e6);
    for (const auto& [type, kind] :
         {std::pair{kEccCorrected, "corrected"}, std::pair{kEccUncorrected, "uncorrected"}}) {
      if (const auto errors = reading.ecc_aggregate[type])
        add(kEccErrors, labels_and("type", kind), static_cast<double>(*errors));
      if (const auto errors = reading.ecc_volatile[type])
        add(kEccVolatileErrors, labels_and("type", kind), static_cast<double>(*errors));
    }
    for (const auto& [cause, kind] : {std::pair{kRetiredForSingleBitErrors, "single_bit_ecc"},
                                      std::pair{kRetiredForDoubleBitError, "double_bit_ecc"}}) {
      if (const auto pages = reading.retired_pages[cause])
        add(kRetiredPages, labels_and("cause", kind), *pages);
    }
    if (reading.retired_pages_pending)
      add(kRetiredPagesPending, labels, *reading.retired_pages_pending ? 1.0 : 0.0);
    if (const auto& rows = reading.remapped_rows) {
      add(kRemappedRows, labels_and("cause", "correctable"), rows->correctable);
      add(kRemappedRows, labels_and("cause", "uncorrectable"), rows->uncorrectable);
      add(kRowRemapPending, labels, rows->pending ? 1.0 : 0.0);
      add(kRowRemapFailure, labels, rows->failure ? 1.0 : 0.0);
    }
    for (const auto& [xid, count] : snapshot.xid_counts)
      add(kXidErrors, labels_and("xid", std::to_string(xid)), count);
    if (snapshot.last_xid) add(kLastXid, labels, static_cast<double>(*snapshot.last_xid));
  }
  std::vector<prometheus::MetricFamily> reported;
  for (auto& family : families) {
    // A family no GPU reports (not supported, or the driver predates it) is left out.
    if (!family.metric.empty()) reported.push_back(std::move(family));
  }
  return reported;
}

}  // namespace inferbox::monitoring
