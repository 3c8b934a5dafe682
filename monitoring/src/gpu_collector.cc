#include "inferbox/monitoring/gpu_collector.h"

#include <dlfcn.h>

#include <prometheus/metric_family.h>
#include <spdlog/spdlog.h>

#include "inferbox/monitoring/metric_family.h"

namespace inferbox::monitoring {
namespace {

// The few NVML declarations used (nvml.h is not installed on build machines). Values from
// NVIDIA's nvml.h: NVML_SUCCESS 0, NVML_TEMPERATURE_GPU 0, NVML_CLOCK_SM 1,
// NVML_MEMORY_ERROR_TYPE_CORRECTED 0 / UNCORRECTED 1, NVML_AGGREGATE_ECC 1.
using nvmlReturn_t = int;
using nvmlDevice_t = struct nvmlDevice_st*;
struct nvmlUtilization_t {
  unsigned int gpu;
  unsigned int memory;
};
struct nvmlMemory_t {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
constexpr nvmlReturn_t kSuccess = 0;
constexpr int kTemperatureGpu = 0;
constexpr int kClockSm = 1;
constexpr int kEccCorrected = 0;
constexpr int kEccUncorrected = 1;
constexpr int kEccAggregate = 1;

}  // namespace

struct GpuCollector::Nvml {
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

  ~Nvml() {
    if (shutdown != nullptr) shutdown();
    if (handle != nullptr) dlclose(handle);
  }
};

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
    nvml->shutdown = nullptr;
    reason_ = library + " lacks an NVML function the box needs (driver too old?)";
    spdlog::warn("no GPU telemetry: {}", reason_);
    return;
  }
  if (const nvmlReturn_t result = nvml->init(); result != kSuccess) {
    nvml->shutdown = nullptr;
    reason_ = "nvmlInit failed with NVML error " + std::to_string(result);
    spdlog::warn("no GPU telemetry: {}", reason_);
    return;
  }
  nvml_ = std::move(nvml);
}

GpuCollector::~GpuCollector() = default;

std::pair<int, double> GpuCollector::CountAndPower() const {
  if (!nvml_) return {0, 0.0};
  unsigned int count = 0;
  if (nvml_->count(&count) != kSuccess) return {0, 0.0};
  double watts = 0;
  for (unsigned int index = 0; index < count; ++index) {
    nvmlDevice_t device = nullptr;
    unsigned int milliwatts = 0;
    if (nvml_->by_index(index, &device) == kSuccess &&
        nvml_->power(device, &milliwatts) == kSuccess) {
      watts += milliwatts / 1000.0;
    }
  }
  return {static_cast<int>(count), watts};
}

std::vector<prometheus::MetricFamily> GpuCollector::Collect() const {
  if (!nvml_) return {};
  using prometheus::MetricType;
  auto utilization = MakeFamily("inferbox_gpu_utilization_ratio",
                                "Share of the last sample period a kernel ran on the GPU, 0 to 1.",
                                MetricType::Gauge);
  auto memory_used =
      MakeFamily("inferbox_gpu_memory_used_bytes", "GPU memory in use.", MetricType::Gauge);
  auto memory_total =
      MakeFamily("inferbox_gpu_memory_total_bytes", "GPU memory in all.", MetricType::Gauge);
  auto temperature =
      MakeFamily("inferbox_gpu_temperature_celsius", "GPU core temperature.", MetricType::Gauge);
  auto power = MakeFamily("inferbox_gpu_power_watts", "GPU board power draw.", MetricType::Gauge);
  auto clock = MakeFamily("inferbox_gpu_sm_clock_hertz", "GPU SM clock.", MetricType::Gauge);
  auto ecc = MakeFamily("inferbox_gpu_ecc_errors_total",
                        "ECC memory errors over the GPU's life, by type (corrected, uncorrected).",
                        MetricType::Counter);
  unsigned int count = 0;
  if (nvml_->count(&count) != kSuccess) return {};
  for (unsigned int index = 0; index < count; ++index) {
    nvmlDevice_t device = nullptr;
    if (nvml_->by_index(index, &device) != kSuccess) continue;
    char name[96] = {};
    char uuid[96] = {};
    nvml_->name(device, name, sizeof(name));
    nvml_->uuid(device, uuid, sizeof(uuid));
    const std::vector<prometheus::ClientMetric::Label> labels = {
        {"gpu", std::to_string(index)}, {"uuid", uuid}, {"name", name}};
    if (nvmlUtilization_t rates{}; nvml_->utilization(device, &rates) == kSuccess)
      AddSample(utilization, labels, rates.gpu / 100.0);
    if (nvmlMemory_t memory{}; nvml_->memory(device, &memory) == kSuccess) {
      AddSample(memory_used, labels, static_cast<double>(memory.used));
      AddSample(memory_total, labels, static_cast<double>(memory.total));
    }
    if (unsigned int celsius = 0; nvml_->temperature(device, kTemperatureGpu, &celsius) == kSuccess)
      AddSample(temperature, labels, celsius);
    if (unsigned int milliwatts = 0; nvml_->power(device, &milliwatts) == kSuccess)
      AddSample(power, labels, milliwatts / 1000.0);
    if (unsigned int mhz = 0; nvml_->clock(device, kClockSm, &mhz) == kSuccess)
      AddSample(clock, labels, mhz * 1e6);
    for (const auto& [type, kind] :
         {std::pair{kEccCorrected, "corrected"}, std::pair{kEccUncorrected, "uncorrected"}}) {
      unsigned long long errors = 0;
      if (nvml_->ecc(device, type, kEccAggregate, &errors) != kSuccess) continue;  // No ECC.
      auto with_type = labels;
      with_type.push_back({"type", kind});
      AddSample(ecc, with_type, static_cast<double>(errors));
    }
  }
  return {utilization, memory_used, memory_total, temperature, power, clock, ecc};
}

}  // namespace inferbox::monitoring
