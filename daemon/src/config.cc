#include "inferbox/daemon/config.h"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <exception>
#include <functional>
#include <map>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "inferbox/common/atomic_file.h"
#include "inferbox/common/logging.h"
#include "inferbox/common/model_id.h"
#include "inferbox/daemon/placement.h"
#include "inferbox/provisioning/mirror.h"

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

// A string that is `first` or `second`.
Result<std::string> GetEither(const ErrorSite& site, const toml::node& node, std::string_view key,
                              std::string_view first, std::string_view second) {
  auto value = GetString(site, node, key);
  if (!value.ok() || *value == first || *value == second) return value;
  return site.At(node, key, fmt::format("\"{}\" is not \"{}\" or \"{}\"", *value, first, second));
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

Status ParseSeconds(const ErrorSite& site, const toml::node& node, const std::string& key,
                    double low, double high, std::chrono::milliseconds& out);

Status ParseTls(const ErrorSite& site, const toml::node& node, const std::string& key,
                TlsConfig& tls) {
  const auto* table = node.as_table();
  if (table == nullptr) return site.WrongType(node, key, "a table [server.tls]");
  std::optional<std::filesystem::path> certificate;
  std::optional<std::filesystem::path> private_key;
  Status status = ForEachKnownKey(site, *table, key,
                                  {
                                      {"certificate",
                                       [&](const toml::node& value, const std::string& name) {
                                         return ParsePath(site, value, name, certificate);
                                       }},
                                      {"private_key",
                                       [&](const toml::node& value, const std::string& name) {
                                         return ParsePath(site, value, name, private_key);
                                       }},
                                      {"client_ca",
                                       [&](const toml::node& value, const std::string& name) {
                                         return ParsePath(site, value, name, tls.client_ca);
                                       }},
                                      {"http_requires_client_certificate",
                                       [&](const toml::node& value, const std::string& name) {
                                         auto flag = GetBool(site, value, name);
                                         if (!flag.ok()) return flag.status();
                                         tls.http_requires_client_certificate = *flag;
                                         return Status::Ok();
                                       }},
                                  });
  if (!status.ok()) return status;
  if (!certificate || !private_key) {
    return site.At(node, key,
                   "needs both certificate and private_key (PEM files); remove the table to "
                   "serve without TLS");
  }
  if (tls.http_requires_client_certificate && !tls.client_ca) {
    return site.At(node, key,
                   "http_requires_client_certificate needs client_ca (the CA that signs the "
                   "clients' certificates)");
  }
  tls.certificate = *certificate;
  tls.private_key = *private_key;
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
          {"http_listen",
           [&](const toml::node& node, const std::string& key) {
             return ParseListen(site, node, key, config.http_listen);
           }},
          {"tls", [&](const toml::node& node,
                      const std::string& key) { return ParseTls(site, node, key, config.tls); }},
          {"grpc_reflection",
           [&](const toml::node& node, const std::string& key) {
             auto value = GetBool(site, node, key);
             if (!value.ok()) return value.status();
             config.grpc_reflection = *value;
             return Status::Ok();
           }},
          {"metrics_per_key",
           [&](const toml::node& node, const std::string& key) {
             auto value = GetBool(site, node, key);
             if (!value.ok()) return value.status();
             config.metrics_per_key = *value;
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
          {"request_timeout_seconds",
           [&](const toml::node& node, const std::string& key) {
             return ParseSeconds(site, node, key, 0, 86400, config.request_timeout);
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

Result<double> GetNumberIn(const ErrorSite& site, const toml::node& node, std::string_view key,
                           double low, double high) {
  auto value = GetNumber(site, node, key);
  if (!value.ok()) return value.status();
  if (!(*value >= low && *value <= high))
    return site.At(node, key, fmt::format("must be from {} to {}", low, high));
  return *value;
}

Result<int64_t> GetIntegerIn(const ErrorSite& site, const toml::node& node, std::string_view key,
                             int64_t low, int64_t high) {
  const auto* value = node.as_integer();
  if (value == nullptr) return site.WrongType(node, key, "an integer");
  if (value->get() < low || value->get() > high)
    return site.At(node, key, fmt::format("must be an integer from {} to {}", low, high));
  return value->get();
}

// Handlers of a key whose value goes straight into `field`: one of two words, a number from
// low to high, an integer from low to high.
KeyHandler EitherInto(const ErrorSite& site, std::string& field, std::string_view first,
                      std::string_view second) {
  return [&site, &field, first, second](const toml::node& node, const std::string& key) {
    auto value = GetEither(site, node, key, first, second);
    if (!value.ok()) return value.status();
    field = *value;
    return Status::Ok();
  };
}
KeyHandler NumberInto(const ErrorSite& site, double& field, double low, double high) {
  return [&site, &field, low, high](const toml::node& node, const std::string& key) {
    auto value = GetNumberIn(site, node, key, low, high);
    if (!value.ok()) return value.status();
    field = *value;
    return Status::Ok();
  };
}
template <typename Integer>
KeyHandler IntegerInto(const ErrorSite& site, Integer& field, int64_t low, int64_t high) {
  return [&site, &field, low, high](const toml::node& node, const std::string& key) {
    auto value = GetIntegerIn(site, node, key, low, high);
    if (!value.ok()) return value.status();
    field = static_cast<Integer>(*value);
    return Status::Ok();
  };
}

Status ParseSeconds(const ErrorSite& site, const toml::node& node, const std::string& key,
                    double low, double high, std::chrono::milliseconds& out) {
  auto seconds = GetNumberIn(site, node, key, low, high);
  if (!seconds.ok()) return seconds.status();
  // A positive number of seconds is at least 1 ms: rounded to 0 it could mean "no limit".
  const int64_t ms = std::llround(*seconds * 1000);
  out = std::chrono::milliseconds(*seconds > 0 ? std::max<int64_t>(1, ms) : 0);
  return Status::Ok();
}

// Histogram bucket bounds: 1 to 64 positive numbers, strictly increasing.
Status ParseBuckets(const ErrorSite& site, const toml::node& node, const std::string& key,
                    std::vector<double>& out) {
  const auto* array = node.as_array();
  if (array == nullptr) return site.WrongType(node, key, "an array of numbers");
  if (array->empty() || array->size() > 64)
    return site.At(node, key, "needs 1 to 64 bucket bounds");
  std::vector<double> bounds;
  for (const toml::node& element : *array) {
    auto bound = GetNumber(site, element, key);
    if (!bound.ok()) return bound.status();
    if (!(*bound > 0) || !std::isfinite(*bound))
      return site.At(element, key, "bucket bounds are positive numbers");
    if (!bounds.empty() && *bound <= bounds.back())
      return site.At(element, key, "bucket bounds must increase strictly");
    bounds.push_back(*bound);
  }
  out = std::move(bounds);
  return Status::Ok();
}

Status ParseMetrics(const ErrorSite& site, const toml::table& table, DaemonConfig& config) {
  auto& buckets = config.metric_buckets;
  auto into = [&](std::vector<double>& field) {
    return [&](const toml::node& node, const std::string& key) {
      return ParseBuckets(site, node, key, field);
    };
  };
  return ForEachKnownKey(site, table, "metrics",
                         {
                             {"time_to_first_token_buckets", into(buckets.first_token_seconds)},
                             {"inter_token_latency_buckets", into(buckets.inter_token_seconds)},
                             {"request_time_buckets", into(buckets.request_seconds)},
                             {"token_count_buckets", into(buckets.tokens)},
                         });
}

Status ParseAuth(const ErrorSite& site, const toml::table& table, DaemonConfig& config) {
  return ForEachKnownKey(site, table, "auth",
                         {
                             {"require_keys",
                              [&](const toml::node& node, const std::string& key) {
                                auto value = GetBool(site, node, key);
                                if (!value.ok()) return value.status();
                                config.require_keys = *value;
                                return Status::Ok();
                              }},
                         });
}

Status ParseEconomics(const ErrorSite& site, const toml::table& table, DaemonConfig& config) {
  monitoring::EconomicsConfig& economics = config.economics;
  auto number = [&](double low, double high, double& out) {
    return [&, low, high](const toml::node& node, const std::string& key) {
      auto value = GetNumberIn(site, node, key, low, high);
      if (!value.ok()) return value.status();
      out = *value;
      return Status::Ok();
    };
  };
  return ForEachKnownKey(site, table, "economics",
                         {
                             {"currency",
                              [&](const toml::node& node, const std::string& key) {
                                auto currency = GetString(site, node, key);
                                if (!currency.ok()) return currency.status();
                                if (currency->empty() || currency->size() > 8)
                                  return site.At(node, key,
                                                 "must be 1 to 8 characters, e.g. \"EUR\"");
                                economics.currency = *currency;
                                return Status::Ok();
                              }},
                             {"hardware_price", number(0, 1e12, economics.hardware_price)},
                             {"amortization_months", number(1, 600, economics.amortization_months)},
                             {"power_price_per_kwh", number(0, 1e6, economics.power_price_per_kwh)},
                             {"power_watts", number(0, 1e7, economics.power_watts)},
                         });
}

Status ParseEngines(const ErrorSite& site, const toml::table& table, DaemonConfig& config) {
  EngineSupervisionConfig& engines = config.engines;
  return ForEachKnownKey(
      site, table, "engines",
      {
          {"executable",
           [&](const toml::node& node, const std::string& key) {
             return ParsePath(site, node, key, engines.executable);
           }},
          {"health_interval_seconds",
           [&](const toml::node& node, const std::string& key) {
             return ParseSeconds(site, node, key, 0.05, 600, engines.health_interval);
           }},
          {"health_timeout_seconds",
           [&](const toml::node& node, const std::string& key) {
             return ParseSeconds(site, node, key, 0.05, 600, engines.health_timeout);
           }},
          {"startup_timeout_seconds",
           [&](const toml::node& node, const std::string& key) {
             return ParseSeconds(site, node, key, 1, 86400, engines.startup_timeout);
           }},
          {"canary_interval_seconds",
           [&](const toml::node& node, const std::string& key) {
             return ParseSeconds(site, node, key, 0.05, 86400, engines.canary_interval);
           }},
          {"canary_timeout_seconds",
           [&](const toml::node& node, const std::string& key) {
             return ParseSeconds(site, node, key, 0.05, 3600, engines.canary_timeout);
           }},
          {"stall_timeout_seconds",
           [&](const toml::node& node, const std::string& key) {
             return ParseSeconds(site, node, key, 0.1, 86400, engines.stall_timeout);
           }},
          {"restart_window_seconds",
           [&](const toml::node& node, const std::string& key) {
             return ParseSeconds(site, node, key, 1, 86400, engines.restart_window);
           }},
          {"max_restarts",
           [&](const toml::node& node, const std::string& key) {
             auto value = GetIntegerIn(site, node, key, 0, 1000);
             if (!value.ok()) return value.status();
             engines.max_restarts = static_cast<int>(*value);
             return Status::Ok();
           }},
      });
}

Status ParseStringList(const ErrorSite& site, const toml::node& node, const std::string& key,
                       std::string_view what,
                       const std::function<Status(const toml::node&, std::string)>& add) {
  const auto* array = node.as_array();
  if (array == nullptr) return site.WrongType(node, key, "an array of " + std::string(what));
  for (const auto& element : *array) {
    auto text = GetString(site, element, key, what);
    if (!text.ok()) return text.status();
    if (Status status = add(element, std::move(text).value()); !status.ok()) return status;
  }
  return Status::Ok();
}

Status ParseModelStore(const ErrorSite& site, const toml::table& table, DaemonConfig& config) {
  ModelStoreConfig& store = config.model_store;
  Status status = ForEachKnownKey(
      site, table, "model_store",
      {
          {"require_signatures",
           [&](const toml::node& node, const std::string& key) {
             auto value = GetBool(site, node, key);
             if (!value.ok()) return value.status();
             store.require_signatures = *value;
             return Status::Ok();
           }},
          {"trusted_keys",
           [&](const toml::node& node, const std::string& key) {
             store.trusted_keys_pem.clear();
             return ParseStringList(
                 site, node, key, "PEM public keys or absolute paths to them",
                 [&](const toml::node& element, std::string text) {
                   if (text.find("-----BEGIN PUBLIC KEY-----") != std::string::npos) {
                     store.trusted_keys_pem.push_back(std::move(text));
                     return Status::Ok();
                   }
                   const std::filesystem::path path(text);
                   if (!path.is_absolute()) {
                     return site.At(
                         element, key,
                         "\"" + text + "\" is neither a PEM public key nor an absolute path");
                   }
                   auto pem = ReadFile(path);
                   if (!pem.ok()) return site.At(element, key, pem.status().message());
                   if (pem->find("-----BEGIN PUBLIC KEY-----") == std::string::npos)
                     return site.At(element, key, text + " holds no PEM public key");
                   store.trusted_keys_pem.push_back(std::move(pem).value());
                   return Status::Ok();
                 });
           }},
          {"mirrors",
           [&](const toml::node& node, const std::string& key) {
             store.mirrors.clear();
             return ParseStringList(site, node, key, "URL prefixes",
                                    [&](const toml::node& element, std::string prefix) {
                                      if (Status valid = provisioning::CheckMirrorPrefix(prefix);
                                          !valid.ok())
                                        return site.At(element, key, valid.message());
                                      store.mirrors.push_back(std::move(prefix));
                                      return Status::Ok();
                                    });
           }},
          {"ca_file",
           [&](const toml::node& node, const std::string& key) {
             if (Status parsed = ParsePath(site, node, key, store.ca_file); !parsed.ok())
               return parsed;
             std::error_code error;
             if (!std::filesystem::is_regular_file(*store.ca_file, error))
               return site.At(node, key, store.ca_file->string() + " is not a readable file");
             return Status::Ok();
           }},
          {"proxy",
           [&](const toml::node& node, const std::string& key) {
             auto proxy = GetString(site, node, key, "a string (proxy URL)");
             if (!proxy.ok()) return proxy.status();
             const bool known_scheme =
                 proxy->starts_with("http://") || proxy->starts_with("https://") ||
                 proxy->starts_with("socks5://") || proxy->starts_with("socks5h://");
             if (!proxy->empty() && !known_scheme)
               return site.At(
                   node, key,
                   "\"" + *proxy + "\" is not an http://, https:// or socks5:// proxy URL");
             store.proxy = *proxy;
             return Status::Ok();
           }},
      });
  if (!status.ok()) return status;
  if (store.require_signatures && store.trusted_keys_pem.empty()) {
    return site.At(table, "model_store.require_signatures",
                   "needs at least one key in model_store.trusted_keys");
  }
  return Status::Ok();
}

}  // namespace

namespace {

Status ParseModel(const ErrorSite& site, const toml::table& table, const std::string& section,
                  ModelServeConfig& model) {
  bool replicas_set = false;
  Status status = ForEachKnownKey(
      site, table, section,
      {
          {"name",
           [&](const toml::node& node, const std::string& key) {
             auto name = GetString(site, node, key);
             if (!name.ok()) return name.status();
             if (!IsModelId(*name))
               return site.At(node, key, fmt::format("\"{}\" is not {}", *name, kModelIdPattern));
             model.name = *name;
             return Status::Ok();
           }},
          {"path",
           [&](const toml::node& node, const std::string& key) {
             auto path = GetString(site, node, key, "a string (a folder)");
             if (!path.ok()) return path.status();
             if (path->empty()) return site.At(node, key, "is empty");
             model.path = std::filesystem::path(*path).lexically_normal();
             return Status::Ok();
           }},
          {"device", EitherInto(site, model.device, "cpu", "cuda")},
          {"gpus",
           [&](const toml::node& node, const std::string& key) {
             const auto* array = node.as_array();
             if (array == nullptr) return site.WrongType(node, key, "an array of GPU indices");
             model.gpus.clear();
             for (const auto& element : *array) {
               auto index = GetIntegerIn(site, element, key, 0, 255);
               if (!index.ok()) return index.status();
               model.gpus.push_back(static_cast<uint32_t>(*index));
             }
             return Status::Ok();
           }},
          {"replicas",
           [&](const toml::node& node, const std::string& key) {
             auto value = GetIntegerIn(site, node, key, 1, 64);
             if (!value.ok()) return value.status();
             model.replicas = static_cast<uint32_t>(*value);
             replicas_set = true;
             return Status::Ok();
           }},
          {"tensor_parallel", IntegerInto(site, model.tensor_parallel, 1, 64)},
          {"kv_cache_gib", NumberInto(site, model.kv_cache_gib, 0.001, 4096)},
          {"gpu_memory_fraction", NumberInto(site, model.gpu_memory_fraction, 0.05, 0.99)},
          {"max_running", IntegerInto(site, model.max_running, 1, 4096)},
          {"token_budget", IntegerInto(site, model.token_budget, 1, 1 << 20)},
          {"max_model_len", IntegerInto(site, model.max_model_len, 0, 1 << 24)},
          {"max_waiting", IntegerInto(site, model.max_waiting, 1, 1 << 20)},
          {"max_waiting_tokens", IntegerInto(site, model.max_waiting_tokens, 0, int64_t{1} << 40)},
          {"queue_timeout_seconds", NumberInto(site, model.queue_timeout_seconds, 0.0, 86400.0)},
          {"quantization", EitherInto(site, model.quantization, "none", "fp8")},
          {"kv_cache_dtype", EitherInto(site, model.kv_cache_dtype, "auto", "fp8")},
          {"sampling_defaults", EitherInto(site, model.sampling_defaults, "model", "openai")},
      });
  if (!status.ok()) return status;
  if (model.name.empty()) return site.At(table, section + ".name", "is required");
  if (model.path.empty()) return site.At(table, section + ".path", "is required");
  // A cuda model placed by profile without a replica count takes as many as fit.
  if (model.device == "cuda" && model.gpus.empty() && !replicas_set) model.replicas = 0;
  if (auto error = CheckGpuSettings(model, Placed::kNotYet))
    return site.At(table, section + "." + error->key, error->message);
  return Status::Ok();
}

Status ParseModels(const ErrorSite& site, const toml::node& node, DaemonConfig& config) {
  const auto* array = node.as_array();
  if (array == nullptr || !array->is_array_of_tables())
    return site.WrongType(node, "models", "an array of tables [[models]]");
  for (size_t i = 0; i < array->size(); ++i) {
    ModelServeConfig model;
    const std::string section = fmt::format("models[{}]", i);
    if (Status status = ParseModel(site, *array->get(i)->as_table(), section, model); !status.ok())
      return status;
    for (const auto& other : config.models) {
      if (other.name == model.name)
        return site.At(*array->get(i), section + ".name", "\"" + model.name + "\" is used twice");
    }
    if (Status free = CheckGpusFree(model, config.models); !free.ok())
      return site.At(*array->get(i), section + ".gpus", std::string(free.message()));
    config.models.push_back(std::move(model));
  }
  return Status::Ok();
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
      {"server", &ParseServer},   {"paths", &ParsePaths},
      {"log", &ParseLog},         {"auth", &ParseAuth},
      {"engines", &ParseEngines}, {"economics", &ParseEconomics},
      {"metrics", &ParseMetrics}, {"model_store", &ParseModelStore},
  };
  for (const auto& [name, node] : root) {
    if (name.str() == "models") {
      if (Status status = ParseModels(site, node, config); !status.ok()) return status;
      continue;
    }
    const auto section = kSections.find(name.str());
    if (section == kSections.end()) {
      return site.At(
          node, name.str(),
          "unknown key (known: [auth], [economics], [engines], [log], [metrics], [model_store], "
          "[paths], [server], [[models]])");
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
  if (allow_unauthenticated_remote) return Status::Ok();
  for (const auto& [key, address] : {std::pair{"server.grpc_listen", &config.grpc_listen},
                                     std::pair{"server.http_listen", &config.http_listen}}) {
    if (address->IsLoopback()) continue;
    if (!config.tls.enabled()) {
      return FailedPreconditionError(fmt::format(
          "{} = \"{}\" is not a loopback address, and [server.tls] is not set: API keys and "
          "prompts would cross the network in clear text. Set [server.tls] certificate and "
          "private_key, or listen on 127.0.0.1 (or [::1]), or start with "
          "--insecure-allow-unauthenticated if the network is trusted.",
          key, address->ToString()));
    }
    if (!config.require_keys) {
      return FailedPreconditionError(fmt::format(
          "{} = \"{}\" is not a loopback address, and [auth] require_keys is false: anyone "
          "who reaches it could use the box. Set require_keys = true (and create keys with "
          "inferboxctl keys create), or listen on 127.0.0.1 (or [::1]), or start with "
          "--insecure-allow-unauthenticated if the network is trusted.",
          key, address->ToString()));
    }
  }
  return Status::Ok();
}

}  // namespace inferbox::daemon
