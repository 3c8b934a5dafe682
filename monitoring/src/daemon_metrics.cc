#include "inferbox/monitoring/daemon_metrics.h"

#include <prometheus/gauge.h>

namespace inferbox::monitoring {
DaemonMetrics::DaemonMetrics(const BuildInfo& build)
    : registry_(std::make_shared<prometheus::Registry>()),
      reloads_(prometheus::BuildCounter()
                   .Name("inferbox_config_reloads_total")
                   .Help("Configuration reloads (SIGHUP) by result: applied, or rejected "
                         "(the previous configuration stays in force).")
                   .Register(*registry_)),
      reload_success_(reloads_.Add({{"result", "applied"}})),
      reload_failure_(reloads_.Add({{"result", "rejected"}})) {
  prometheus::BuildGauge()
      .Name("inferbox_build_info")
      .Help(
          "Always 1; the labels say which build of inferboxd is running, the CUDA toolkit "
          "its engines were built with and the NVIDIA driver it found (none: no CUDA build, "
          "no driver).")
      .Register(*registry_)
      .Add({{"version", build.version},
            {"commit", build.commit},
            {"cuda", build.cuda},
            {"driver", build.driver}})
      .Set(1);
}

void DaemonMetrics::SetTlsCertificateExpiry(double unix_seconds) {
  prometheus::BuildGauge()
      .Name("inferbox_tls_certificate_expiry_timestamp_seconds")
      .Help(
          "When the TLS certificate of the gRPC and HTTP listeners ([server.tls]) expires, in "
          "seconds since the Unix epoch; absent without TLS.")
      .Register(*registry_)
      .Add({})
      .Set(unix_seconds);
}

}  // namespace inferbox::monitoring
