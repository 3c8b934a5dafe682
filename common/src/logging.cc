#include "inferbox/common/logging.h"

#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#if INFERBOX_HAVE_SYSTEMD
#include <systemd/sd-journal.h>
#endif

namespace inferbox {
namespace {

// The MESSAGE_ID of the record being logged on this thread, if any (set by LogEvent).
thread_local std::string_view current_message_id;

#if INFERBOX_HAVE_SYSTEMD
int SyslogPriority(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
    case spdlog::level::debug: return 7;
    case spdlog::level::info: return 6;
    case spdlog::level::warn: return 4;
    case spdlog::level::err: return 3;
    case spdlog::level::critical: return 2;
    default: return 6;
  }
}

// Sends each record to journald with PRIORITY, SYSLOG_IDENTIFIER and, for key events,
// MESSAGE_ID. Prompts and generated text are never passed to the logger (callers' rule).
class JournaldSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit JournaldSink(std::string identifier) : identifier_(std::move(identifier)) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    const auto& payload = msg.payload;
    const int length = static_cast<int>(payload.size());
    if (!current_message_id.empty()) {
      sd_journal_send("MESSAGE=%.*s", length, payload.data(), "PRIORITY=%d",
                      SyslogPriority(msg.level), "SYSLOG_IDENTIFIER=%s", identifier_.c_str(),
                      "MESSAGE_ID=%.*s", static_cast<int>(current_message_id.size()),
                      current_message_id.data(), nullptr);
    } else {
      sd_journal_send("MESSAGE=%.*s", length, payload.data(), "PRIORITY=%d",
                      SyslogPriority(msg.level), "SYSLOG_IDENTIFIER=%s", identifier_.c_str(),
                      nullptr);
    }
  }
  void flush_() override {}

 private:
  std::string identifier_;
};

// systemd sets JOURNAL_STREAM=<dev>:<inode> for a service whose stderr is the journal; the
// documented test is that it matches stderr's own device and inode.
bool StderrIsJournal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (stream == nullptr) return false;
  unsigned long long device = 0, inode = 0;
  if (std::sscanf(stream, "%llu:%llu", &device, &inode) != 2) return false;
  struct stat info {};
  if (fstat(STDERR_FILENO, &info) != 0) return false;
  return info.st_dev == device && info.st_ino == inode;
}
#endif

}  // namespace

LogDestination InitLogging(std::string_view program, spdlog::level::level_enum level) {
  std::shared_ptr<spdlog::logger> logger;
  LogDestination destination = LogDestination::kStderr;
#if INFERBOX_HAVE_SYSTEMD
  if (StderrIsJournal()) {
    logger = std::make_shared<spdlog::logger>(std::string(program),
                                              std::make_shared<JournaldSink>(std::string(program)));
    destination = LogDestination::kJournald;
  }
#endif
  if (!logger) {
    logger = spdlog::stderr_color_mt(std::string(program));
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %n[%P] %^%l%$: %v");
  }
  logger->set_level(level);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(std::move(logger));
  return destination;
}

Result<spdlog::level::level_enum> ParseLogLevel(std::string_view name) {
  static constexpr std::pair<std::string_view, spdlog::level::level_enum> kLevels[] = {
      {"trace", spdlog::level::trace}, {"debug", spdlog::level::debug},
      {"info", spdlog::level::info},   {"warn", spdlog::level::warn},
      {"error", spdlog::level::err},   {"critical", spdlog::level::critical},
      {"off", spdlog::level::off},
  };
  for (const auto& [level_name, level] : kLevels) {
    if (name == level_name) return level;
  }
  return InvalidArgumentError("unknown log level \"" + std::string(name) +
                              "\" (expected trace, debug, info, warn, error, critical or off)");
}

void LogEvent(spdlog::level::level_enum level, MessageId id, std::string_view message) {
  current_message_id = id.hex;
  spdlog::log(level, "{}", message);
  current_message_id = {};
}

}  // namespace inferbox
