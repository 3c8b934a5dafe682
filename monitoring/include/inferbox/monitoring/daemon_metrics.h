// Metrics the daemon itself owns (as opposed to per-engine serving metrics).
// prometheus-cpp metric objects are thread-safe; any thread may update them.
#pragma once

#include <memory>
#include <string>

#include <prometheus/counter.h>
#include <prometheus/registry.h>

namespace inferbox::monitoring {

struct BuildInfo {
  std::string version;
  std::string commit;
  // The CUDA toolkit the engines were built with ("13.0"), "none" in a build without CUDA.
  std::string cuda = "none";
  // The NVIDIA driver found at start (NVML), "none" without one.
  std::string driver = "none";
};

class DaemonMetrics {
 public:
  explicit DaemonMetrics(const BuildInfo& build);

  // The registry to expose on /metrics.
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void RecordConfigReload(bool succeeded) {
    (succeeded ? reload_success_ : reload_failure_).Increment();
  }

  // inferbox_tls_certificate_expiry_timestamp_seconds: when the certificate the listeners
  // serve stops being valid (Unix seconds). Set once at start, by a daemon with TLS only.
  void SetTlsCertificateExpiry(double unix_seconds);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& reloads_;
  prometheus::Counter& reload_success_;
  prometheus::Counter& reload_failure_;
};

}  // namespace inferbox::monitoring
