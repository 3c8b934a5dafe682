// Process-wide logging on spdlog. Under systemd (stderr connected to the journal, as
// JOURNAL_STREAM says) records go to journald natively with structured fields; otherwise
// to stderr. Thread-safe: any thread may log.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <spdlog/spdlog.h>

#include "inferbox/common/status.h"

namespace inferbox {

enum class LogDestination { kStderr, kJournald };

// Installs the default logger for `program` (also the journal's SYSLOG_IDENTIFIER).
// Call once, early in main, before other threads start.
LogDestination InitLogging(std::string_view program, spdlog::level::level_enum level);

// Parses "trace", "debug", "info", "warn", "error", "critical" or "off".
Result<spdlog::level::level_enum> ParseLogLevel(std::string_view name);

// A journal MESSAGE_ID (128-bit, 32 lowercase hex digits) naming a kind of key event, so
// operators can run `journalctl MESSAGE_ID=...`. The catalogue is docs/operations.md.
struct MessageId {
  std::string_view hex;
};

namespace message_ids {
inline constexpr MessageId kReady{"cd234af6c3fa4533a4ffd1eedfcf031a"};
inline constexpr MessageId kStopping{"69b44ebc119c4f979bcc7643ab3931c3"};
inline constexpr MessageId kConfigReloaded{"26e90c0f346f4a33adc0de49f23c9241"};
inline constexpr MessageId kConfigReloadFailed{"542227d430c842a79dc2f1db7f53c484"};
inline constexpr MessageId kStartupFailed{"075cc4047b59460eb74dd4933b6ae78f"};
inline constexpr MessageId kEngineRestarting{"a9bd963c5b5d4168a5cd9c3a5cee5852"};
inline constexpr MessageId kEngineFailed{"1b03a16b07cc413fb6d01e97d04407b9"};
inline constexpr MessageId kEngineCanaryFailed{"b1238d69d478449f9bee270f85e6d042"};
inline constexpr MessageId kEngineGpuFault{"9c7e67c969914fb083356c63a65b72b2"};
inline constexpr MessageId kModelNotRestored{"05eb23cafe964dad98c505b3f2c01c7d"};
inline constexpr MessageId kWatchdogWithheld{"b59e2375a17d480b8fd8129373196a99"};
inline constexpr MessageId kRequestFailed{"4f0b6ad2c7e34d1c9c3e8f5a27d6b190"};
}  // namespace message_ids

// What a key event is about, as journal fields (CONVENTIONS R4.5), so that operators can run
// `journalctl -u inferbox MODEL=qwen3-8b` or `GPU=1`. Empty ones are left out.
struct EventFields {
  std::string_view model;       // MODEL=: the served model's id.
  std::string_view engine;      // ENGINE=: its engine replica, "<model>/<n>".
  std::string_view gpu;         // GPU=: GPU indices, "0" or "0,1".
  std::string_view xid;         // XID=: an NVIDIA Xid error code.
  std::string_view request_id;  // REQUEST_ID=: the response id clients see.
};

// "MODEL=tiny", ... for the fields that are set, in the order above. `one_gpu_per_field`:
// "GPU=0", "GPU=1" for "0,1" (the journal's form: `journalctl GPU=1` matches either field),
// else one "GPU=0,1".
std::vector<std::string> JournalFields(const EventFields& fields, bool one_gpu_per_field = false);

// Logs a key event: on journald it carries MESSAGE_ID and `fields`; on stderr the fields
// follow the message, "[MODEL=tiny ENGINE=tiny/0]".
void LogEvent(spdlog::level::level_enum level, MessageId id, std::string_view message,
              const EventFields& fields = {});

}  // namespace inferbox
