#include "inferbox/daemon/config.h"

#include <arpa/inet.h>

#include <charconv>
#include <cmath>
#include <exception>
#include <functional>
#include <map>

#include <toml++/toml.h>

#include "inferbox/common/atomic_file.h"
#include "inferbox/common/logging.h"

namespace inferbox::daemon {
namespace {

std::string_view TypeName(toml::node_type type) {
  switch (type) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    default: return "nothing";
  }
}

// Builds errors that point at a key: "<source>:<line>:<column>: <key>: <message>".
class ErrorSite {
 public:
  explicit ErrorSite(std::string_view source) : source_(source) {}

  Status At(const toml::node& node, std::string_view key, std::string_view message) const {
    const auto& begin = node.source().begin;
    return InvalidArgumentError(std::string(source_) + ":" + std::to_string(begin.line) + ":" +
                                std::to_string(begin.column) + ": " + std::string(key) + ": " +
                                std::string(message));
  }

  Status WrongType(const toml::node& node, std::string_view key, std::string_view expected) const {
    return At(node, key,
              "expected " + std::string(expected) + ", got " + std::string(TypeName(node.type())));
  }

 private:
  std::string source_;
};

Result<std::string> GetString(const ErrorSite& site, const toml::node& node, std::string_view key,
                              std::string_view expected = "a string") {
  if (const auto* value = node.as_string()) return value->get();
  return site.WrongType(node, key, expected);
}

Result<bool> GetBool(const ErrorSite& site, const toml::node& node, std::string_view key) {
  if (const auto* value = node.as_boolean()) return value->get();
  return site.WrongType(node, key, "a boolean (true or false)");
}

Result<double> GetNumber(const ErrorSite& site, const toml::node& node, std::string_view key) {
  if (const auto* value = node.as_integer()) return static_cast<double>(value->get());
  if (const auto* value = node.as_floating_point()) return value->get();
  return site.WrongType(node, key, "a number");
}

using KeyHandler = std::function<Status(const toml::node&, const std::string& key)>;

// Runs the handler registered for each key of `table`; any other key is an error.
Status ForEachKnownKey(const ErrorSite& site, const toml::table& table, std::string_view section,
                       const std::map<std::string_view, KeyHandler>& handlers) {
  for (const auto& [name, node] : table) {
    const std::string key = std::string(section) + "." + std::string(name.str());
    const auto handler = handlers.find(name.str());
    if (handler == handlers.end()) {
      std::string known;
      for (const auto& [known_name, unused] : handlers) {
        known += known.empty() ? "" : ", ";
        known += known_name;
      }
      return site.At(node, key,
                     "unknown key (known keys in [" + std::string(section) + "]: " + known + ")");
    }
    if (Status status = handler->second(node, key); !status.ok()) return status;
  }
  return Status::Ok();
}

Status ParseListen(const ErrorSite& site, const toml::node& node, const std::string& key,
                   ListenAddress& out) {
  auto text = GetString(site, node, key, "a string \"host:port\"");
  if (!text.ok()) return text.status();
  auto address = ParseListenAddress(*text);
  if (!address.ok()) return site.At(node, key, address.status().message());
  out = *address;
  return Status::Ok();
}

Status ParsePath(const ErrorSite& site, const toml::node& node, const std::string& key,
                 std::optional<std::filesystem::path>& out) {
  auto text = GetString(site, node, key, "a string (absolute path)");
  if (!text.ok()) return text.status();
  std::filesystem::path path(*text);
  if (!path.is_absolute()) {
    return site.At(node, key, "\"" + *text + "\" is not an absolute path");
  }
  out = path.lexically_normal();
  return Status::Ok();
}

Status ParseServer(const ErrorSite& site, const toml::table& table, DaemonConfig& config) {
  return ForEachKnownKey(
      site, table, "server",
      {
          {"grpc_listen",
           [&](const toml::node& node, const std::string& key) {
             return ParseListen(site, node, key, config.grpc_listen);
           }},
          {"metrics_listen",
           [&](const toml::node& node, const std::string& key) {
             return ParseListen(site, node, key, config.metrics_listen);
           }},
          {"grpc_reflection",
           [&](const toml::node& node, const std::string& key) {
             auto value = GetBool(site, node, key);
             if (!value.ok()) return value.status();
             config.grpc_reflection = *value;
             return Status::Ok();
           }},
          {"shutdown_timeout_seconds",
           [&](const toml::node& node, const std::string& key) {
             auto seconds = GetNumber(site, node, key);
             if (!seconds.ok()) return seconds.status();
             if (!(*seconds > 0 && *seconds <= 3600)) {
               return site.At(node, key, "must be more than 0 and at most 3600 seconds");
             }
             config.shutdown_timeout =
                 std::chrono::milliseconds(static_cast<int64_t>(std::llround(*seconds * 1000)));
             return Status::Ok();
           }},
      });
}

Status ParsePaths(const ErrorSite& site, const toml::table& table, DaemonConfig& config) {
  return ForEachKnownKey(site, table, "paths",
                         {
                             {"state_dir",
                              [&](const toml::node& node, const std::string& key) {
                                return ParsePath(site, node, key, config.state_dir);
                              }},
                             {"runtime_dir",
                              [&](const toml::node& node, const std::string& key) {
                                return ParsePath(site, node, key, config.runtime_dir);
                              }},
                         });
}

Status ParseLog(const ErrorSite& site, const toml::table& table, DaemonConfig& config) {
  return ForEachKnownKey(site, table, "log",
                         {
                             {"level",
                              [&](const toml::node& node, const std::string& key) {
                                auto name = GetString(site, node, key);
                                if (!name.ok()) return name.status();
                                auto level = ParseLogLevel(*name);
                                if (!level.ok())
                                  return site.At(node, key, level.status().message());
                                config.log_level = *level;
                                return Status::Ok();
                              }},
                         });
}

}  // namespace

std::string ListenAddress::ToString() const {
  const bool is_v6 = host.find(':') != std::string::npos;
  return (is_v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

bool ListenAddress::IsLoopback() const {
  in_addr v4{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    return IN6_IS_ADDR_LOOPBACK(&v6);
  }
  return false;
}

Result<ListenAddress> ParseListenAddress(std::string_view text) {
  std::string_view host;
  std::string_view port_text;
  if (text.starts_with('[')) {
    const auto close = text.find("]:");
    if (close == std::string_view::npos) {
      return InvalidArgumentError("\"" + std::string(text) +
                                  "\" is not [ipv6]:port (e.g. \"[::1]:7070\")");
    }
    host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos || text.find(':') != colon) {
      return InvalidArgumentError("\"" + std::string(text) +
                                  "\" is not host:port (e.g. \"127.0.0.1:7070\")");
    }
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
  }

  unsigned port = 0;
  const auto [end, error] =
      std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || error != std::errc() || end != port_text.data() + port_text.size() ||
      port > 65535) {
    return InvalidArgumentError("\"" + std::string(text) + "\": port \"" + std::string(port_text) +
                                "\" is not a number from 0 to 65535");
  }

  ListenAddress address;
  address.port = static_cast<uint16_t>(port);
  if (host == "localhost") {
    address.host = "127.0.0.1";
    return address;
  }
  address.host = std::string(host);
  in_addr v4{};
  in6_addr v6{};
  if (inet_pton(AF_INET, address.host.c_str(), &v4) != 1 &&
      inet_pton(AF_INET6, address.host.c_str(), &v6) != 1) {
    return InvalidArgumentError("\"" + std::string(text) + "\": host \"" + std::string(host) +
                                "\" is not an IP address (use a numeric address or localhost)");
  }
  return address;
}

Result<DaemonConfig> ParseConfig(std::string_view text, std::string_view source_name) {
  toml::table root;
  try {
    root = toml::parse(text, source_name);
  } catch (const toml::parse_error& error) {
    const auto& begin = error.source().begin;
    return InvalidArgumentError(std::string(source_name) + ":" + std::to_string(begin.line) + ":" +
                                std::to_string(begin.column) +
                                ": invalid TOML: " + std::string(error.description()));
  }

  const ErrorSite site(source_name);
  DaemonConfig config;
  using SectionParser = Status (*)(const ErrorSite&, const toml::table&, DaemonConfig&);
  static const std::map<std::string_view, SectionParser> kSections = {
      {"server", &ParseServer},
      {"paths", &ParsePaths},
      {"log", &ParseLog},
  };
  for (const auto& [name, node] : root) {
    const auto section = kSections.find(name.str());
    if (section == kSections.end()) {
      return site.At(node, name.str(), "unknown key (known sections: [log], [paths], [server])");
    }
    const auto* table = node.as_table();
    if (table == nullptr)
      return site.WrongType(node, name.str(), "a table [" + std::string(name.str()) + "]");
    if (Status status = section->second(site, *table, config); !status.ok()) return status;
  }
  return config;
}

Result<DaemonConfig> LoadConfigFile(const std::filesystem::path& path) {
  auto text = ReadFile(path);
  if (!text.ok()) return text.status().WithContext("cannot read the configuration");
  return ParseConfig(*text, path.string());
}

Status CheckNetworkExposure(const DaemonConfig& config, bool allow_unauthenticated_remote) {
  if (config.grpc_listen.IsLoopback() || allow_unauthenticated_remote) return Status::Ok();
  return FailedPreconditionError(
      "server.grpc_listen = \"" + config.grpc_listen.ToString() +
      "\" is not a loopback address, and this version has no API-key authentication: anyone "
      "who can reach the port could use the box. Listen on 127.0.0.1 (or [::1]), or start "
      "with --insecure-allow-unauthenticated if the network is trusted.");
}

}  // namespace inferbox::daemon
