// inferboxd's configuration: a TOML file (default /etc/inferbox/inferbox.toml), validated
// strictly. Unknown keys, wrong types and bad values are errors that name the key and the
// line, so a typo never silently falls back to a default.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include <spdlog/common.h>

#include "inferbox/common/status.h"

namespace inferbox::daemon {

inline constexpr std::string_view kDefaultConfigPath = "/etc/inferbox/inferbox.toml";
inline constexpr std::string_view kDefaultStateDir = "/var/lib/inferbox";
inline constexpr std::string_view kDefaultRuntimeDir = "/run/inferbox";

// A TCP listen address. `host` is a numeric IPv4 or IPv6 address ("localhost" is stored as
// 127.0.0.1); port 0 asks the kernel for a free port.
struct ListenAddress {
  std::string host;
  uint16_t port = 0;

  // "127.0.0.1:7070" or "[::1]:7070": the form gRPC and the metrics server accept.
  std::string ToString() const;
  bool IsLoopback() const;
  bool operator==(const ListenAddress&) const = default;
};

// Parses "host:port" / "[v6]:port". Host names other than localhost are refused: a listen
// address must not depend on DNS.
Result<ListenAddress> ParseListenAddress(std::string_view text);

struct DaemonConfig {
  // [server]
  ListenAddress grpc_listen{"127.0.0.1", 7070};
  ListenAddress metrics_listen{"127.0.0.1", 9400};
  bool grpc_reflection = true;
  // How long SIGTERM waits for in-flight RPCs before cancelling them.
  std::chrono::milliseconds shutdown_timeout{std::chrono::seconds(30)};
  // [paths]; unset: --state-dir/--runtime-dir, then $STATE_DIRECTORY/$RUNTIME_DIRECTORY
  // (set by systemd), then the defaults above.
  std::optional<std::filesystem::path> state_dir;
  std::optional<std::filesystem::path> runtime_dir;
  // [log]
  spdlog::level::level_enum log_level = spdlog::level::info;

  bool operator==(const DaemonConfig&) const = default;
};

// Parses configuration text. `source_name` (usually the file path) prefixes error messages:
// "<source>:<line>:<column>: <key>: <what is wrong>".
Result<DaemonConfig> ParseConfig(std::string_view text, std::string_view source_name);

// Reads and parses a config file; a missing or unreadable file is an error naming the path.
Result<DaemonConfig> LoadConfigFile(const std::filesystem::path& path);

// The configuration compiled into inferboxd (packaging/config/inferbox.toml): used when
// the default config file does not exist, and installed as that file by the packages.
std::string_view EmbeddedDefaultConfig();

// Refuses configurations that would expose unauthenticated APIs beyond this host. The box
// has no API keys yet, so any non-loopback gRPC listener is refused unless the operator
// passed --insecure-allow-unauthenticated. Metrics may listen anywhere (read-only data).
Status CheckNetworkExposure(const DaemonConfig& config, bool allow_unauthenticated_remote);

}  // namespace inferbox::daemon
