#include "inferbox/monitoring/filesystem_collector.h"

#include <sys/statvfs.h>

#include "inferbox/monitoring/metric_family.h"

namespace inferbox::monitoring {

std::vector<prometheus::MetricFamily> FilesystemCollector::Collect() const {
  auto free = MakeFamily("inferbox_filesystem_free_bytes",
                         "Bytes the daemon may still write on the file system holding the "
                         "directory (statvfs f_bavail).",
                         prometheus::MetricType::Gauge);
  auto size = MakeFamily("inferbox_filesystem_size_bytes",
                         "Size of the file system holding the directory, in bytes.",
                         prometheus::MetricType::Gauge);
  for (const WatchedDirectory& directory : directories_) {
    struct statvfs stats {};
    if (statvfs(directory.path.c_str(), &stats) != 0) continue;
    const std::vector<prometheus::ClientMetric::Label> labels = {{"dir", directory.role},
                                                                 {"path", directory.path.string()}};
    AddSample(free, labels,
              static_cast<double>(stats.f_bavail) * static_cast<double>(stats.f_frsize));
    AddSample(size, labels,
              static_cast<double>(stats.f_blocks) * static_cast<double>(stats.f_frsize));
  }
  return {free, size};
}

}  // namespace inferbox::monitoring
