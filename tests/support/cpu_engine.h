// An engine executable for tests of GPU handling on a box without a GPU: a wrapper that runs
// the real inferbox-engine on the CPU in place of `--device cuda`, keeping the environment
// the supervisor gave it, and appends "$CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER" to `log`.
#pragma once

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace inferbox::testing {

inline void WriteCpuEngineWrapper(const std::filesystem::path& path,
                                  const std::string& engine_executable,
                                  const std::filesystem::path& log) {
  std::ofstream(path) << "#!/bin/bash\n"
                         "echo \"$CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER\" >> '"
                      << log.string()
                      << "'\n"
                         "args=()\n"
                         "while [ $# -gt 0 ]; do\n"
                         "  case \"$1\" in\n"
                         "    --device) args+=(--device cpu); shift 2 ;;\n"
                         "    --gpu-memory-fraction) shift 2 ;;\n"
                         "    *) args+=(\"$1\"); shift ;;\n"
                         "  esac\n"
                         "done\n"
                         "exec '"
                      << engine_executable << "' \"${args[@]}\"\n";
  chmod(path.c_str(), 0755);
}

}  // namespace inferbox::testing
