// The part of NVIDIA's NVML API that the box uses, as nvml.h declares it (nvml.h is not
// installed on build machines): return codes, enum values and structs. GpuCollector resolves
// the functions at run time; the tests' fake NVML (tests/support/fake_nvml) implements them.
#pragma once

namespace inferbox::nvml {

using nvmlReturn_t = int;
struct nvmlDevice_st;
using nvmlDevice_t = nvmlDevice_st*;
struct nvmlEventSet_st;
using nvmlEventSet_t = nvmlEventSet_st*;

struct nvmlUtilization_t {
  unsigned int gpu;  // Percent of the last sample period a kernel ran.
  unsigned int memory;
};
struct nvmlMemory_t {
  unsigned long long total;  // Bytes.
  unsigned long long free;
  unsigned long long used;
};
// As nvmlEventSetWait_v2 fills it.
struct nvmlEventData_t {
  nvmlDevice_t device;
  unsigned long long eventType;
  unsigned long long eventData;  // The Xid, for an Xid event.
  unsigned int gpuInstanceId;
  unsigned int computeInstanceId;
};

inline constexpr nvmlReturn_t NVML_SUCCESS = 0;
inline constexpr nvmlReturn_t NVML_ERROR_INVALID_ARGUMENT = 2;
inline constexpr nvmlReturn_t NVML_ERROR_NOT_SUPPORTED = 3;
inline constexpr nvmlReturn_t NVML_ERROR_INSUFFICIENT_SIZE = 7;
inline constexpr nvmlReturn_t NVML_ERROR_DRIVER_NOT_LOADED = 9;
inline constexpr nvmlReturn_t NVML_ERROR_TIMEOUT = 10;
inline constexpr nvmlReturn_t NVML_ERROR_GPU_IS_LOST = 15;

inline constexpr int NVML_TEMPERATURE_GPU = 0;                // nvmlTemperatureSensors_t
inline constexpr int NVML_CLOCK_SM = 1;                       // nvmlClockType_t
inline constexpr int NVML_MEMORY_ERROR_TYPE_CORRECTED = 0;    // nvmlMemoryErrorType_t
inline constexpr int NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1;  //
inline constexpr int NVML_VOLATILE_ECC = 0;                   // nvmlEccCounterType_t
inline constexpr int NVML_AGGREGATE_ECC = 1;                  //
inline constexpr int NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS = 0;
inline constexpr int NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = 1;
inline constexpr int NVML_FEATURE_ENABLED = 1;  // nvmlEnableState_t
inline constexpr unsigned long long nvmlEventTypeXidCriticalError = 0x8ULL;

}  // namespace inferbox::nvml
