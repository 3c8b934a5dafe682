// A stand-in for the NVIDIA driver's libnvidia-ml.so.1, for tests on machines without a GPU.
// It exports the NVML functions GpuCollector resolves, with NVML's names, argument types and
// return codes, and answers from a text file named by $INFERBOX_FAKE_NVML_STATE, read again
// on every call so a test changes the "hardware" while the code under test runs.
//
// The state file, one setting a line ("#" starts a comment):
//   gpus 2                          GPUs found (default 0)
//   init_error 9                    nvmlInit_v2 fails with this NVML error
//   driver 580.95.05                the driver version (nvmlSystemGetDriverVersion; the
//                                   legacy build has no such function)
//   gpu0.name NVIDIA H100 80GB HBM3
//   gpu0.uuid GPU-...
//   gpu0.utilization 37             percent, as NVML reports it
//   gpu0.memory_used 1073741824     bytes (also memory_total)
//   gpu0.temperature 45             celsius
//   gpu0.power 312000               milliwatts, as NVML reports it
//   gpu0.sm_clock 1980              MHz
//   gpu0.ecc_corrected_volatile 3   also ecc_uncorrected_volatile, ecc_{,un}corrected_aggregate
//   gpu0.retired_sbe 2              pages retired for single-bit errors (retired_dbe: double)
//   gpu0.retired_pending 1
//   gpu0.remapped_correctable 4     also remapped_uncorrectable, remap_pending, remap_failure
//   gpu0.lost 1                     every call about the GPU answers NVML_ERROR_GPU_IS_LOST
//   gpu0.unsupported ecc,power      NVML_ERROR_NOT_SUPPORTED for these (ecc, power,
//                                   temperature, clock, retired_pages, remapped_rows, events)
//   xid 0 79                        an Xid event on GPU 0; appended lines are delivered once
//                                   each, in order, to event sets created before them
//
// Built twice: fake_nvml exports everything; fake_nvml_legacy (FAKE_NVML_LEGACY) lacks the
// functions an older driver lacks (retired pages v2, remapped rows, events), as dlsym sees it.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "nvml_api.h"

using namespace inferbox::nvml;  // NVML's names, as the code under test declares them.

namespace {

constexpr unsigned int kMaxGpus = 16;

// Settings as read from the file: key to the rest of its line.
using State = std::map<std::string, std::string>;

struct Xid {
  unsigned int gpu;
  unsigned long long code;
};

struct StateFile {
  State settings;
  std::vector<Xid> xids;
  bool readable = false;
};

StateFile ReadState() {
  StateFile state;
  const char* path = std::getenv("INFERBOX_FAKE_NVML_STATE");
  if (path == nullptr) return state;
  std::ifstream in(path);
  if (!in) return state;
  state.readable = true;
  std::string line;
  while (std::getline(in, line)) {
    line = line.substr(0, line.find('#'));
    std::istringstream words(line);
    std::string key;
    if (!(words >> key)) continue;
    std::string value;
    std::getline(words >> std::ws, value);
    while (!value.empty() && value.back() == ' ') value.pop_back();
    if (key == "xid") {
      Xid xid{};
      if (std::istringstream(value) >> xid.gpu >> xid.code) state.xids.push_back(xid);
    } else {
      state.settings[key] = value;
    }
  }
  return state;
}

unsigned long long Number(const State& state, const std::string& key) {
  const auto found = state.find(key);
  return found == state.end() ? 0 : std::strtoull(found->second.c_str(), nullptr, 10);
}

std::string Text(const State& state, const std::string& key, const std::string& fallback) {
  const auto found = state.find(key);
  return found == state.end() ? fallback : found->second;
}

}  // namespace

// NVML's opaque handles; the fake's devices are an array, the handle points into it.
struct inferbox::nvml::nvmlDevice_st {
  unsigned int index;
};
struct inferbox::nvml::nvmlEventSet_st {
  std::set<unsigned int> gpus;  // Registered for Xid events.
  size_t next_xid = 0;          // The first "xid" line not yet delivered.
};

namespace {

nvmlDevice_st devices[kMaxGpus] = {{0}, {1}, {2},  {3},  {4},  {5},  {6},  {7},
                                   {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}};
std::mutex event_sets_mutex;  // Guards every nvmlEventSet_st.

// The state and the device's key prefix ("gpu0."), or an NVML error for a bad or lost device.
struct DeviceState {
  nvmlReturn_t result = NVML_SUCCESS;
  StateFile file;
  std::string prefix;

  unsigned long long Get(const std::string& field) const {
    return Number(file.settings, prefix + field);
  }
  bool Unsupported(const std::string& feature) const {
    const std::string list = "," + Text(file.settings, prefix + "unsupported", "") + ",";
    return list.find("," + feature + ",") != std::string::npos;
  }
};

DeviceState Lookup(nvmlDevice_t device) {
  DeviceState state;
  state.file = ReadState();
  if (device == nullptr || device < devices || device >= devices + kMaxGpus ||
      device->index >= Number(state.file.settings, "gpus")) {
    state.result = NVML_ERROR_INVALID_ARGUMENT;
    return state;
  }
  state.prefix = "gpu" + std::to_string(device->index) + ".";
  if (state.Get("lost") != 0) state.result = NVML_ERROR_GPU_IS_LOST;
  return state;
}

// Answers one unsigned value unless the device is bad or lost or `feature` is unsupported.
template <typename T>
nvmlReturn_t Answer(nvmlDevice_t device, const std::string& feature, const std::string& field,
                    T* out) {
  if (out == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  const DeviceState state = Lookup(device);
  if (state.result != NVML_SUCCESS) return state.result;
  if (state.Unsupported(feature)) return NVML_ERROR_NOT_SUPPORTED;
  *out = static_cast<T>(state.Get(field));
  return NVML_SUCCESS;
}

nvmlReturn_t CopyText(nvmlDevice_t device, const std::string& field, const std::string& fallback,
                      char* out, unsigned int length) {
  if (out == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  const DeviceState state = Lookup(device);
  if (state.result != NVML_SUCCESS) return state.result;
  const std::string text = Text(state.file.settings, state.prefix + field, fallback);
  if (text.size() + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
  std::memcpy(out, text.c_str(), text.size() + 1);
  return NVML_SUCCESS;
}

}  // namespace

extern "C" {

nvmlReturn_t nvmlInit_v2() {
  const StateFile state = ReadState();
  if (!state.readable) return NVML_ERROR_DRIVER_NOT_LOADED;
  return static_cast<nvmlReturn_t>(Number(state.settings, "init_error"));
}

nvmlReturn_t nvmlShutdown() {
  return NVML_SUCCESS;
}

const char* nvmlErrorString(nvmlReturn_t result) {
  switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
  }
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int* count) {
  if (count == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  *count = static_cast<unsigned int>(Number(ReadState().settings, "gpus"));
  if (*count > kMaxGpus) *count = kMaxGpus;
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t* device) {
  if (device == nullptr || index >= kMaxGpus) return NVML_ERROR_INVALID_ARGUMENT;
  const DeviceState state = Lookup(&devices[index]);
  if (state.result != NVML_SUCCESS) return state.result;
  *device = &devices[index];
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char* name, unsigned int length) {
  return CopyText(device, "name", "Fake GPU", name, length);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char* uuid, unsigned int length) {
  const std::string fallback = "GPU-fake-" + std::to_string(device != nullptr ? device->index : 0);
  return CopyText(device, "uuid", fallback, uuid, length);
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t* rates) {
  if (rates == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  rates->memory = 0;
  return Answer(device, "utilization", "utilization", &rates->gpu);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t* memory) {
  if (memory == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  const DeviceState state = Lookup(device);
  if (state.result != NVML_SUCCESS) return state.result;
  memory->total = state.Get("memory_total");
  memory->used = state.Get("memory_used");
  memory->free = memory->total - memory->used;
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int* celsius) {
  if (sensor != NVML_TEMPERATURE_GPU) return NVML_ERROR_INVALID_ARGUMENT;
  return Answer(device, "temperature", "temperature", celsius);
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int* milliwatts) {
  return Answer(device, "power", "power", milliwatts);
}

nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, int type, unsigned int* mhz) {
  if (type != NVML_CLOCK_SM) return NVML_ERROR_NOT_SUPPORTED;
  return Answer(device, "clock", "sm_clock", mhz);
}

nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, int error_type, int counter_type,
                                         unsigned long long* count) {
  const std::string field =
      std::string("ecc_") +
      (error_type == NVML_MEMORY_ERROR_TYPE_CORRECTED ? "corrected_" : "uncorrected_") +
      (counter_type == NVML_VOLATILE_ECC ? "volatile" : "aggregate");
  return Answer(device, "ecc", field, count);
}

#ifndef FAKE_NVML_LEGACY
nvmlReturn_t nvmlSystemGetDriverVersion(char* version, unsigned int length) {
  if (version == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  const std::string text = Text(ReadState().settings, "driver", "");
  if (text.empty()) return NVML_ERROR_NOT_SUPPORTED;
  if (text.size() + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
  std::memcpy(version, text.c_str(), text.size() + 1);
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetRetiredPages_v2(nvmlDevice_t device, int cause, unsigned int* count,
                                          unsigned long long* addresses,
                                          unsigned long long* timestamps) {
  unsigned int pages = 0;
  const std::string field = cause == NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
                                ? "retired_sbe"
                                : "retired_dbe";
  if (count == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  const nvmlReturn_t result = Answer(device, "retired_pages", field, &pages);
  if (result != NVML_SUCCESS) return result;
  // As NVML: a buffer too small for every page gets the count and INSUFFICIENT_SIZE.
  const bool fits = *count >= pages;
  for (unsigned int page = 0; fits && page < pages; ++page) {
    if (addresses != nullptr) addresses[page] = 0x1000ULL * (page + 1);
    if (timestamps != nullptr) timestamps[page] = 0;
  }
  *count = pages;
  return fits ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
}

nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t device, int* pending) {
  return Answer(device, "retired_pages", "retired_pending", pending);
}

nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int* correctable,
                                       unsigned int* uncorrectable, unsigned int* pending,
                                       unsigned int* failure) {
  if (correctable == nullptr || uncorrectable == nullptr || pending == nullptr ||
      failure == nullptr) {
    return NVML_ERROR_INVALID_ARGUMENT;
  }
  const DeviceState state = Lookup(device);
  if (state.result != NVML_SUCCESS) return state.result;
  if (state.Unsupported("remapped_rows")) return NVML_ERROR_NOT_SUPPORTED;
  *correctable = static_cast<unsigned int>(state.Get("remapped_correctable"));
  *uncorrectable = static_cast<unsigned int>(state.Get("remapped_uncorrectable"));
  *pending = static_cast<unsigned int>(state.Get("remap_pending"));
  *failure = static_cast<unsigned int>(state.Get("remap_failure"));
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t* set) {
  if (set == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  auto created = std::make_unique<nvmlEventSet_st>();
  // Like the driver, a new set sees only the events that happen after it exists.
  created->next_xid = ReadState().xids.size();
  *set = created.release();
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types,
                                      nvmlEventSet_t set) {
  if (set == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  const DeviceState state = Lookup(device);
  if (state.result != NVML_SUCCESS) return state.result;
  if (state.Unsupported("events") || (types & ~nvmlEventTypeXidCriticalError) != 0) {
    return NVML_ERROR_NOT_SUPPORTED;
  }
  std::lock_guard lock(event_sets_mutex);
  set->gpus.insert(device->index);
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t* data, unsigned int) {
  if (set == nullptr || data == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  const StateFile state = ReadState();
  std::lock_guard lock(event_sets_mutex);
  // Never blocks: a test queues the events before it polls.
  while (set->next_xid < state.xids.size()) {
    const Xid xid = state.xids[set->next_xid++];
    if (!set->gpus.contains(xid.gpu)) continue;
    data->device = &devices[xid.gpu];
    data->eventType = nvmlEventTypeXidCriticalError;
    data->eventData = xid.code;
    data->gpuInstanceId = 0xFFFFFFFF;
    data->computeInstanceId = 0xFFFFFFFF;
    return NVML_SUCCESS;
  }
  return NVML_ERROR_TIMEOUT;
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
  std::lock_guard lock(event_sets_mutex);
  delete set;
  return NVML_SUCCESS;
}

#endif  // FAKE_NVML_LEGACY

}  // extern "C"
