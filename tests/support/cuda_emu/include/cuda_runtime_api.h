// The CUDA emulator's runtime API header (tests/support/cuda_emu): cuda_runtime.h has it all.
#pragma once

#include <cuda_runtime.h>
