#include "test_http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>

namespace inferbox::provisioning::testing {
namespace {

constexpr size_t kMaxRequestBytes = 16 * 1024;

[[noreturn]] void Die(const char* what) {
  std::perror(what);
  std::abort();
}

bool SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

std::string HeaderValue(std::string_view head, std::string_view name) {
  for (size_t start = 0; start < head.size();) {
    const size_t end = std::min(head.find("\r\n", start), head.size());
    const std::string_view line = head.substr(start, end - start);
    if (line.size() > name.size() + 1 && line[name.size()] == ':') {
      bool same = true;
      for (size_t i = 0; i < name.size(); ++i) {
        same &= std::tolower(static_cast<unsigned char>(line[i])) ==
                std::tolower(static_cast<unsigned char>(name[i]));
      }
      if (same) {
        std::string_view value = line.substr(name.size() + 1);
        while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
        return std::string(value);
      }
    }
    start = end + 2;
  }
  return {};
}

}  // namespace

TestHttpServer::TestHttpServer(std::filesystem::path root) : root_(std::move(root)) {
  listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listener_ < 0) Die("socket");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  if (::bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) Die("bind");
  if (::listen(listener_, 8) != 0) Die("listen");
  socklen_t length = sizeof(address);
  if (::getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    Die("getsockname");
  }
  port_ = ntohs(address.sin_port);
  if (::pipe2(wake_pipe_, O_CLOEXEC) != 0) Die("pipe2");
  thread_ = std::thread([this] { Serve(); });
}

TestHttpServer::~TestHttpServer() {
  const char byte = 0;
  if (::write(wake_pipe_[1], &byte, 1) != 1) Die("write");
  thread_.join();
  ::close(listener_);
  ::close(wake_pipe_[0]);
  ::close(wake_pipe_[1]);
}

std::string TestHttpServer::url() const {
  return "http://127.0.0.1:" + std::to_string(port_) + "/";
}

void TestHttpServer::CutNextResponse(const std::string& path, uint64_t bytes) {
  std::lock_guard lock(mutex_);
  cuts_[path] = bytes;
}

void TestHttpServer::Redirect(const std::string& path, const std::string& location) {
  std::lock_guard lock(mutex_);
  redirects_[path] = location;
}

std::vector<TestHttpServer::Request> TestHttpServer::requests() const {
  std::lock_guard lock(mutex_);
  return requests_;
}

size_t TestHttpServer::num_connections() const {
  std::lock_guard lock(mutex_);
  return num_connections_;
}

void TestHttpServer::Serve() {
  for (;;) {
    pollfd fds[2] = {{listener_, POLLIN, 0}, {wake_pipe_[0], POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      Die("poll");
    }
    if (fds[1].revents != 0) return;
    const int connection = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
    if (connection < 0) continue;
    {
      std::lock_guard lock(mutex_);
      ++num_connections_;
    }
    Handle(connection);
    ::close(connection);
  }
}

void TestHttpServer::Handle(int connection) {
  std::string head;
  char buffer[4096];
  while (head.find("\r\n\r\n") == std::string::npos) {
    if (head.size() > kMaxRequestBytes) return;
    const ssize_t n = ::recv(connection, buffer, sizeof(buffer), 0);
    if (n <= 0) return;
    head.append(buffer, static_cast<size_t>(n));
  }
  // "GET /path HTTP/1.1"
  const size_t first_space = head.find(' ');
  const size_t second_space = head.find(' ', first_space + 1);
  if (first_space == std::string::npos || second_space == std::string::npos) return;
  const std::string path = head.substr(first_space + 1, second_space - first_space - 1);

  Request request{.path = path};
  const std::string range = HeaderValue(head, "Range");
  if (range.starts_with("bytes=")) {
    uint64_t start = 0;
    std::from_chars(range.data() + 6, range.data() + range.size(), start);
    request.range_start = start;
  }
  std::optional<uint64_t> cut;
  std::optional<std::string> redirect;
  {
    std::lock_guard lock(mutex_);
    requests_.push_back(request);
    if (const auto found = cuts_.find(path); found != cuts_.end()) {
      cut = found->second;
      cuts_.erase(found);
    }
    if (const auto found = redirects_.find(path); found != redirects_.end()) {
      redirect = found->second;
    }
  }
  if (redirect) {
    SendAll(connection, "HTTP/1.1 302 Found\r\nLocation: " + *redirect +
                            "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    return;
  }

  const std::filesystem::path file = root_ / std::filesystem::path(path).relative_path();
  std::ifstream in(file, std::ios::binary);
  if (path.find("..") != std::string::npos || !std::filesystem::is_regular_file(file) || !in) {
    SendAll(connection, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    return;
  }
  const std::string body{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  const uint64_t start = request.range_start.value_or(0);
  std::string response;
  if (request.range_start && start < body.size()) {
    response = "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes " + std::to_string(start) +
               "-" + std::to_string(body.size() - 1) + "/" + std::to_string(body.size()) + "\r\n";
  } else if (request.range_start) {
    SendAll(connection,
            "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    return;
  } else {
    response = "HTTP/1.1 200 OK\r\n";
  }
  const std::string_view rest = std::string_view(body).substr(start);
  response += "Content-Length: " + std::to_string(rest.size()) +
              "\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n";
  response += cut ? rest.substr(0, *cut) : rest;
  SendAll(connection, response);
}

}  // namespace inferbox::provisioning::testing
