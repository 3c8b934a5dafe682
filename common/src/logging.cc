#include "inferbox/common/logging.h"

#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>

#include <fmt/ranges.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#if INFERBOX_HAVE_SYSTEMD
#include <systemd/sd-journal.h>
#endif

namespace inferbox {
namespace {

// The MESSAGE_ID and fields of the record being logged on this thread, if any (set by
// LogEvent).
thread_local std::string_view current_message_id;
thread_local const EventFields* current_fields = nullptr;
// Where records go (InitLogging): journald takes the fields as fields, stderr in the line.
LogDestination destination_in_use = LogDestination::kStderr;

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
    std::vector<std::string> fields = {
        "MESSAGE=" + std::string(msg.payload.data(), msg.payload.size()),
        "PRIORITY=" + std::to_string(SyslogPriority(msg.level)),
        "SYSLOG_IDENTIFIER=" + identifier_};
    if (!current_message_id.empty())
      fields.push_back("MESSAGE_ID=" + std::string(current_message_id));
    if (current_fields != nullptr) {
      for (std::string& field : JournalFields(*current_fields, /*one_gpu_per_field=*/true))
        fields.push_back(std::move(field));
    }
    std::vector<iovec> entries;
    entries.reserve(fields.size());
    for (std::string& field : fields) entries.push_back({field.data(), field.size()});
    sd_journal_sendv(entries.data(), static_cast<int>(entries.size()));
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
  destination_in_use = destination;
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

std::vector<std::string> JournalFields(const EventFields& fields, bool one_gpu_per_field) {
  std::vector<std::string> out;
  for (const auto& [name, value] :
       {std::pair{"MODEL", fields.model}, std::pair{"ENGINE", fields.engine},
        std::pair{"GPU", fields.gpu}, std::pair{"XID", fields.xid},
        std::pair{"REQUEST_ID", fields.request_id}}) {
    if (value.empty()) continue;
    if (one_gpu_per_field && std::string_view(name) == "GPU") {
      for (std::string_view rest = value; !rest.empty();) {
        const size_t comma = rest.find(',');
        out.push_back("GPU=" + std::string(rest.substr(0, comma)));
        rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
      }
      continue;
    }
    out.push_back(std::string(name) + "=" + std::string(value));
  }
  return out;
}

void LogEvent(spdlog::level::level_enum level, MessageId id, std::string_view message,
              const EventFields& fields) {
  current_message_id = id.hex;
  current_fields = &fields;
  const std::vector<std::string> named = JournalFields(fields);
  if (destination_in_use == LogDestination::kJournald || named.empty()) {
    spdlog::log(level, "{}", message);
  } else {
    spdlog::log(level, "{} [{}]", message, fmt::join(named, " "));
  }
  current_fields = nullptr;
  current_message_id = {};
}

}  // namespace inferbox
