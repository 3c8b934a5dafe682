// Free and total space of the file systems the box writes to (the state directory, the model
// store), read with statvfs at scrape time, so that a disk filling up shows on dashboards and
// alerts before installs, the usage ledger or update slots fail on it.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

namespace inferbox::monitoring {

struct WatchedDirectory {
  // The `dir` label: "state", "models".
  std::string role;
  std::filesystem::path path;
};

// Thread-safe: Collect holds no state and may run on any thread.
class FilesystemCollector final : public prometheus::Collectable {
 public:
  explicit FilesystemCollector(std::vector<WatchedDirectory> directories)
      : directories_(std::move(directories)) {}

  // inferbox_filesystem_free_bytes (what the daemon's user may still write: statvfs's
  // f_bavail) and inferbox_filesystem_size_bytes, labelled dir and path. A directory statvfs
  // cannot read (not created yet, removed) is left out.
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const std::vector<WatchedDirectory> directories_;
};

}  // namespace inferbox::monitoring
