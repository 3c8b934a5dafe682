// What the daemon reports about itself through Admin.GetStatus. The daemon's main thread
// writes it; gRPC threads read snapshots. Guarded by one mutex.
#pragma once

#include <chrono>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "inferbox/v1/admin.pb.h"

namespace inferbox::admin {

class StatusBoard {
 public:
  StatusBoard(std::string_view version, std::string_view commit);

  void SetState(inferbox::v1::DaemonState state);
  void SetPaths(const std::string& config_path, const std::string& state_dir,
                const std::string& runtime_dir);
  // `security`: Listener.security (empty: plain TCP).
  void AddListener(const std::string& name, const std::string& address,
                   const std::string& security);
  // A reload was applied (error empty) or refused (error says why).
  void RecordReload(const std::string& error);
  // Where Snapshot gets the engines from (the supervisor); called without the board's lock.
  void SetEngineSource(std::function<std::vector<inferbox::v1::EngineInfo>()> source);
  // Where Snapshot gets the economics from; called without the board's lock.
  void SetEconomicsSource(std::function<inferbox::v1::Economics()> source);
  // Where Snapshot gets the health layers from; called without the board's lock.
  void SetHealthSource(std::function<inferbox::v1::BoxHealth()> source);

  inferbox::v1::DaemonState state() const;
  // A copy with uptime filled in at the time of the call.
  inferbox::v1::GetStatusResponse Snapshot() const;

 private:
  const std::chrono::steady_clock::time_point started_;
  mutable std::mutex mutex_;
  inferbox::v1::GetStatusResponse status_;                          // Guarded by mutex_.
  std::function<std::vector<inferbox::v1::EngineInfo>()> engines_;  // Guarded by mutex_.
  std::function<inferbox::v1::Economics()> economics_;              // Guarded by mutex_.
  std::function<inferbox::v1::BoxHealth()> health_;                 // Guarded by mutex_.
};

}  // namespace inferbox::admin
