#include "inferbox/daemon/openai_gateway.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <list>
#include <mutex>
#include <system_error>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "openai_http.h"
#include "openai_json.h"
#include "openai_socket.h"

namespace inferbox::daemon {

using openai::Signal;
using openai::UniqueFd;

// Owns the listener, the acceptor thread and the connection threads.
class OpenAiGateway::Impl {
 public:
  Impl(Options options, InferenceFrontend& frontend, const Authenticator& authenticator,
       UniqueFd listener, Signal drain, Signal abort)
      : options_(std::move(options)),
        listener_(std::move(listener)),
        port_(openai::BoundPort(listener_.get())),
        drain_(std::move(drain)),
        abort_(std::move(abort)),
        context_{.options = options_,
                 .frontend = frontend,
                 .authenticator = authenticator,
                 .serving = serving_,
                 .drain = drain_,
                 .abort = abort_} {}

  ~Impl() { Stop(std::chrono::milliseconds(0)); }

  void StartAcceptor() {
    acceptor_ = std::thread([this] { Accept(); });
  }

  uint16_t port() const { return port_; }
  void SetServing(bool serving) { serving_.store(serving); }
  std::chrono::steady_clock::duration AcceptorIdle() const {
    return std::chrono::steady_clock::now() -
           std::chrono::steady_clock::time_point(
               std::chrono::steady_clock::duration(acceptor_turned_.load()));
  }

  void Stop(std::chrono::milliseconds drain) {
    if (stopped_.exchange(true)) return;
    const auto deadline = std::chrono::steady_clock::now() + drain;
    serving_.store(false);
    drain_.Raise();
    if (acceptor_.joinable()) acceptor_.join();
    listener_.reset();
    {
      std::unique_lock lock(mutex_);
      connection_ended_.wait_until(lock, deadline, [this] { return num_active_ == 0; });
      if (num_active_ > 0) {
        spdlog::log(drain.count() > 0 ? spdlog::level::warn : spdlog::level::debug,
                    "HTTP drain timeout: cancelling {} connection(s) still in flight", num_active_);
      }
    }
    abort_.Raise();
    std::list<ConnectionThread> all;
    {
      std::lock_guard lock(mutex_);
      all.splice(all.end(), connections_);
    }
    for (ConnectionThread& connection : all) connection.thread.join();
  }

 private:
  struct ConnectionThread {
    std::thread thread;
    bool finished = false;
  };

  // The acceptor thread: until drain is raised.
  void Accept() {
    const auto started = std::chrono::steady_clock::now();
    while (!drain_.is_raised()) {
      const auto now = std::chrono::steady_clock::now();
      acceptor_turned_.store(now.time_since_epoch().count());
      if (options_.fault_stall_acceptor_after.count() >= 0 &&
          now - started >= options_.fault_stall_acceptor_after) {
        spdlog::warn("HTTP acceptor: stalled by fault injection (INFERBOX_TEST_FAULT_STALL)");
        pollfd wait{drain_.fd(), POLLIN, 0};
        while (!drain_.is_raised()) ::poll(&wait, 1, 1000);
        break;
      }
      std::array<pollfd, 2> entries{{{listener_.get(), POLLIN, 0}, {drain_.fd(), POLLIN, 0}}};
      // The timeout only bounds how long ended connection threads wait to be joined.
      const int ready = ::poll(entries.data(), entries.size(), 1000);
      JoinFinished();
      if (ready <= 0 || entries[1].revents != 0) continue;
      UniqueFd socket(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
      if (!socket.valid()) {
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          spdlog::warn("HTTP accept: {}; retrying in 100 ms", std::strerror(errno));
          pollfd wait{drain_.fd(), POLLIN, 0};
          ::poll(&wait, 1, 100);
        }
        continue;
      }
      const int on = 1;
      ::setsockopt(socket.get(), IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
      Spawn(std::move(socket));
    }
  }

  void Spawn(UniqueFd socket) {
    std::unique_lock lock(mutex_);
    if (num_active_ >= options_.max_connections) {
      lock.unlock();
      RejectOverloaded(std::move(socket), "too many open connections");
      return;
    }
    auto connection = connections_.emplace(connections_.end());
    try {
      connection->thread = std::thread([this, connection, fd = std::move(socket)]() mutable {
        Serve(std::move(fd), connection);
      });
      ++num_active_;
    } catch (const std::system_error& error) {
      // The socket moved into the lambda was closed with it.
      connections_.erase(connection);
      spdlog::warn("HTTP: cannot start a connection thread: {}", error.what());
    }
  }

  void RejectOverloaded(UniqueFd socket, std::string_view why) const {
    static std::atomic<int64_t> num_rejected{0};
    if (num_rejected.fetch_add(1) % 100 == 0) spdlog::warn("HTTP: rejecting connections: {}", why);
    // A plain answer means nothing to a TLS client, and a handshake here would hold the
    // acceptor: the client sees the connection closed.
    if (options_.tls) return;
    openai::RejectConnection(std::move(socket),
                             {.http_status = 503,
                              .type = "service_unavailable_error",
                              .message = fmt::format("the server is overloaded: {}", why),
                              .code = "server_is_overloaded",
                              .retry_after = true});
  }

  void Serve(UniqueFd socket, std::list<ConnectionThread>::iterator connection) {
    openai::ServeConnection(std::move(socket), context_);
    std::lock_guard lock(mutex_);
    connection->finished = true;
    --num_active_;
    connection_ended_.notify_all();
  }

  void JoinFinished() {
    std::list<ConnectionThread> finished;
    {
      std::lock_guard lock(mutex_);
      for (auto it = connections_.begin(); it != connections_.end();) {
        auto next = std::next(it);
        if (it->finished) finished.splice(finished.end(), connections_, it);
        it = next;
      }
    }
    for (ConnectionThread& connection : finished) connection.thread.join();
  }

  const Options options_;
  UniqueFd listener_;  // Reset by Stop after the acceptor thread ended.
  const uint16_t port_;
  const Signal drain_;
  const Signal abort_;
  std::atomic<bool> serving_{true};
  std::atomic<bool> stopped_{false};
  const openai::GatewayContext context_;
  std::thread acceptor_;
  // When the acceptor's loop last turned (steady_clock ticks since its epoch).
  std::atomic<std::chrono::steady_clock::rep> acceptor_turned_{
      std::chrono::steady_clock::now().time_since_epoch().count()};

  std::mutex mutex_;
  std::condition_variable connection_ended_;
  std::list<ConnectionThread> connections_;  // Guarded by mutex_.
  int num_active_ = 0;                       // Guarded by mutex_.
};

Result<std::unique_ptr<OpenAiGateway>> OpenAiGateway::Start(Options options,
                                                            InferenceFrontend& frontend,
                                                            const Authenticator& authenticator) {
  Result<UniqueFd> listener = openai::Listen(options.host, options.port);
  if (!listener.ok()) return listener.status();
  Result<Signal> drain = Signal::Create();
  if (!drain.ok()) return drain.status();
  Result<Signal> abort = Signal::Create();
  if (!abort.ok()) return abort.status();
  const std::string host = options.host;
  auto impl = std::make_unique<Impl>(std::move(options), frontend, authenticator,
                                     std::move(listener).value(), std::move(drain).value(),
                                     std::move(abort).value());
  impl->StartAcceptor();
  spdlog::info("OpenAI-compatible HTTP API listening on {}:{}", host, impl->port());
  return std::unique_ptr<OpenAiGateway>(new OpenAiGateway(std::move(impl)));
}

OpenAiGateway::OpenAiGateway(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

OpenAiGateway::~OpenAiGateway() = default;

uint16_t OpenAiGateway::port() const {
  return impl_->port();
}

std::chrono::steady_clock::duration OpenAiGateway::AcceptorIdle() const {
  return impl_->AcceptorIdle();
}

void OpenAiGateway::SetServing(bool serving) {
  impl_->SetServing(serving);
}

void OpenAiGateway::Stop(std::chrono::milliseconds drain) {
  impl_->Stop(drain);
}

}  // namespace inferbox::daemon
