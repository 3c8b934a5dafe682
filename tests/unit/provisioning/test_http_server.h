// A tiny static file server for mirror tests: HTTP/1.1 GET on 127.0.0.1, port 0, one
// connection at a time on its own thread, "Range: bytes=N-" honoured, and a one-shot fault
// that sends part of a file and then drops the connection. Every request is logged.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace inferbox::provisioning::testing {

class TestHttpServer {
 public:
  struct Request {
    std::string path;
    // The N of "Range: bytes=N-", when the request had one.
    std::optional<uint64_t> range_start;
  };

  // Serves the files under `root` at "/<relative path>". Aborts the test binary when it
  // cannot listen (loopback is always there).
  explicit TestHttpServer(std::filesystem::path root);
  ~TestHttpServer();
  TestHttpServer(const TestHttpServer&) = delete;
  TestHttpServer& operator=(const TestHttpServer&) = delete;

  // "http://127.0.0.1:<port>/".
  std::string url() const;

  // The next response for `path` sends its headers and `bytes` bytes of the body, then
  // closes the connection.
  void CutNextResponse(const std::string& path, uint64_t bytes);
  // Responses for `path` redirect (302) to `location`.
  void Redirect(const std::string& path, const std::string& location);

  std::vector<Request> requests() const;
  size_t num_connections() const;

 private:
  void Serve();
  void Handle(int connection);

  const std::filesystem::path root_;
  int listener_ = -1;
  int wake_pipe_[2] = {-1, -1};
  uint16_t port_ = 0;

  mutable std::mutex mutex_;
  std::map<std::string, uint64_t> cuts_;          // Guarded by mutex_.
  std::map<std::string, std::string> redirects_;  // Guarded by mutex_.
  std::vector<Request> requests_;                 // Guarded by mutex_.
  size_t num_connections_ = 0;                    // Guarded by mutex_.

  std::thread thread_;  // Last: starts once everything above exists.
};

}  // namespace inferbox::provisioning::testing
