// The standard process_* metrics of the Prometheus client libraries (CPU time, memory,
// file descriptors, start time), read from /proc/self at scrape time.
#pragma once

#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

namespace inferbox::monitoring {

class ProcessCollector final : public prometheus::Collectable {
 public:
  // Called on a metrics-server thread per scrape; reads only /proc, holds no state.
  std::vector<prometheus::MetricFamily> Collect() const override;
};

}  // namespace inferbox::monitoring
