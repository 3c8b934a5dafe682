#include "inferbox/admin/status_board.h"

#include <unistd.h>

#include <google/protobuf/util/time_util.h>

namespace inferbox::admin {

StatusBoard::StatusBoard(std::string_view version, std::string_view commit)
    : started_(std::chrono::steady_clock::now()) {
  status_.set_version(std::string(version));
  status_.set_commit(std::string(commit));
  status_.set_state(inferbox::v1::DAEMON_STATE_STARTING);
  *status_.mutable_started_at() = google::protobuf::util::TimeUtil::GetCurrentTime();
  status_.set_config_generation(1);
  status_.set_pid(::getpid());
}

void StatusBoard::SetState(inferbox::v1::DaemonState state) {
  std::lock_guard lock(mutex_);
  status_.set_state(state);
}

void StatusBoard::SetPaths(const std::string& config_path, const std::string& state_dir,
                           const std::string& runtime_dir) {
  std::lock_guard lock(mutex_);
  status_.set_config_path(config_path);
  status_.set_state_dir(state_dir);
  status_.set_runtime_dir(runtime_dir);
}

void StatusBoard::AddListener(const std::string& name, const std::string& address,
                              const std::string& security) {
  std::lock_guard lock(mutex_);
  auto* listener = status_.add_listeners();
  listener->set_name(name);
  listener->set_address(address);
  listener->set_security(security);
}

void StatusBoard::RecordReload(const std::string& error) {
  std::lock_guard lock(mutex_);
  status_.set_last_reload_error(error);
  if (error.empty()) status_.set_config_generation(status_.config_generation() + 1);
}

inferbox::v1::DaemonState StatusBoard::state() const {
  std::lock_guard lock(mutex_);
  return status_.state();
}

void StatusBoard::SetEngineSource(std::function<std::vector<inferbox::v1::EngineInfo>()> source) {
  std::lock_guard lock(mutex_);
  engines_ = std::move(source);
}

void StatusBoard::SetEconomicsSource(std::function<inferbox::v1::Economics()> source) {
  std::lock_guard lock(mutex_);
  economics_ = std::move(source);
}

void StatusBoard::SetHealthSource(std::function<inferbox::v1::BoxHealth()> source) {
  std::lock_guard lock(mutex_);
  health_ = std::move(source);
}

inferbox::v1::GetStatusResponse StatusBoard::Snapshot() const {
  const std::chrono::duration<double> uptime = std::chrono::steady_clock::now() - started_;
  inferbox::v1::GetStatusResponse snapshot;
  std::function<std::vector<inferbox::v1::EngineInfo>()> engines;
  std::function<inferbox::v1::Economics()> economics;
  std::function<inferbox::v1::BoxHealth()> health;
  {
    std::lock_guard lock(mutex_);
    snapshot = status_;
    engines = engines_;
    economics = economics_;
    health = health_;
  }
  if (health) *snapshot.mutable_health() = health();
  if (economics) *snapshot.mutable_economics() = economics();
  snapshot.set_uptime_seconds(uptime.count());
  if (engines) {
    for (auto& engine : engines()) *snapshot.add_engines() = std::move(engine);
  }
  return snapshot;
}

}  // namespace inferbox::admin
