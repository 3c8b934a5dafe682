// Building metric families by hand, for collectors that read their values at scrape time
// (engine state, GPUs, economics) instead of keeping prometheus-cpp metric objects.
#pragma once

#include <string>
#include <vector>

#include <prometheus/client_metric.h>
#include <prometheus/metric_family.h>
#include <prometheus/metric_type.h>

namespace inferbox::monitoring {

inline prometheus::MetricFamily MakeFamily(const std::string& name, const std::string& help,
                                           prometheus::MetricType type) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  return family;
}

// Adds one sample (a counter or gauge value, by the family's type).
inline void AddSample(prometheus::MetricFamily& family,
                      std::vector<prometheus::ClientMetric::Label> labels, double value) {
  prometheus::ClientMetric metric;
  metric.label = std::move(labels);
  if (family.type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
}

}  // namespace inferbox::monitoring
