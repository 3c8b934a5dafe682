// A test client for the OpenAI gateway: HTTP requests through libcurl (with reusable
// connections and captured headers), an SSE body parser, and a raw TCP connection for what
// curl hides (closing mid-stream, idle connections, exact bytes).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <map>
#include <string>
#include <vector>

#include <curl/curl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <boost/json.hpp>

namespace inferbox::daemon::openai_test {

namespace json = boost::json;
using namespace std::chrono_literals;

struct Reply {
  long status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // Lower-case names.
  long num_connects = -1;                      // New connections curl opened for the request.
  std::string error;

  json::value Json() const {
    boost::system::error_code ec;
    json::value value = json::parse(body, ec);
    EXPECT_FALSE(ec) << "the body is not JSON: " << body;
    return value;
  }
  std::string Header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

inline size_t AppendBody(char* data, size_t size, size_t count, void* target) {
  static_cast<std::string*>(target)->append(data, size * count);
  return size * count;
}

inline size_t AppendHeader(char* data, size_t size, size_t count, void* target) {
  std::string line(data, size * count);
  const size_t colon = line.find(':');
  if (colon != std::string::npos) {
    std::string name = line.substr(0, colon);
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(' '));
    value.erase(value.find_last_not_of("\r\n ") + 1);
    (*static_cast<std::map<std::string, std::string>*>(target))[name] = value;
  }
  return size * count;
}

// One curl handle: requests made through the same client may reuse its connection.
class Client {
 public:
  Client() : curl_(curl_easy_init()) {}
  ~Client() { curl_easy_cleanup(curl_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // For https:// URLs: trust `ca` (PEM file) only, and present `certificate` with `key` when
  // given. Error text of a failed handshake is in Reply.error.
  void TrustOnly(const std::string& ca, const std::string& certificate = "",
                 const std::string& key = "") {
    curl_easy_setopt(curl_, CURLOPT_CAINFO, ca.c_str());
    curl_easy_setopt(curl_, CURLOPT_CAPATH, nullptr);
    if (!certificate.empty()) {
      curl_easy_setopt(curl_, CURLOPT_SSLCERT, certificate.c_str());
      curl_easy_setopt(curl_, CURLOPT_SSLKEY, key.c_str());
    }
  }

  Reply Request(const std::string& method, const std::string& url, const std::string* body,
                const std::vector<std::string>& headers = {"Authorization: Bearer good"}) {
    Reply reply;
    curl_easy_setopt(curl_, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl_, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(curl_, CURLOPT_TIMEOUT_MS, 10'000L);
    curl_easy_setopt(curl_, CURLOPT_CUSTOMREQUEST, method.c_str());
    if (body != nullptr) {
      curl_easy_setopt(curl_, CURLOPT_POSTFIELDS, body->data());
      curl_easy_setopt(curl_, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body->size()));
    } else {
      curl_easy_setopt(curl_, CURLOPT_HTTPGET, 1L);
      curl_easy_setopt(curl_, CURLOPT_CUSTOMREQUEST, method.c_str());
    }
    curl_slist* list = curl_slist_append(nullptr, "Content-Type: application/json");
    for (const std::string& header : headers) list = curl_slist_append(list, header.c_str());
    curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(curl_, CURLOPT_WRITEFUNCTION, &AppendBody);
    curl_easy_setopt(curl_, CURLOPT_WRITEDATA, &reply.body);
    curl_easy_setopt(curl_, CURLOPT_HEADERFUNCTION, &AppendHeader);
    curl_easy_setopt(curl_, CURLOPT_HEADERDATA, &reply.headers);
    const CURLcode result = curl_easy_perform(curl_);
    curl_slist_free_all(list);
    if (result != CURLE_OK) {
      reply.error = curl_easy_strerror(result);
    } else {
      curl_easy_getinfo(curl_, CURLINFO_RESPONSE_CODE, &reply.status);
      curl_easy_getinfo(curl_, CURLINFO_NUM_CONNECTS, &reply.num_connects);
    }
    return reply;
  }

 private:
  CURL* curl_;
};

// SSE: the `data:` payloads in order, and the comment lines.
struct Events {
  std::vector<std::string> data;
  std::vector<std::string> comments;
};

inline Events ParseSse(const std::string& body) {
  Events events;
  size_t start = 0;
  while (start < body.size()) {
    size_t end = body.find("\n\n", start);
    EXPECT_NE(end, std::string::npos)
        << "an event does not end with a blank line: " << body.substr(start);
    if (end == std::string::npos) break;
    const std::string event = body.substr(start, end - start);
    if (event.starts_with("data: ")) {
      events.data.push_back(event.substr(6));
    } else if (event.starts_with(":")) {
      events.comments.push_back(event);
    } else {
      ADD_FAILURE() << "unexpected SSE event: " << event;
    }
    start = end + 2;
  }
  return events;
}

// A raw TCP connection, for what curl hides (closing mid-stream, idle connections).
class RawConnection {
 public:
  // `receive_buffer`: SO_RCVBUF in bytes (0: the system's), for a client that reads slowly.
  explicit RawConnection(uint16_t port, int receive_buffer = 0)
      : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    if (receive_buffer > 0) {
      EXPECT_EQ(::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof(receive_buffer)),
                0);
    }
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  }
  ~RawConnection() { Close(); }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  void Send(const std::string& text) {
    ASSERT_EQ(::send(fd_, text.data(), text.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(text.size()));
  }
  // Reads until `needle` shows up, the peer closes, or the timeout passes.
  std::string ReadUntil(const std::string& needle, std::chrono::milliseconds timeout = 5s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    size_t searched = 0;  // Where the needle may start that was not looked at yet.
    while (received_.find(needle, searched) == std::string::npos) {
      searched = received_.size() >= needle.size() ? received_.size() - needle.size() + 1 : 0;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left <= 0ms) break;
      pollfd entry{fd_, POLLIN, 0};
      if (::poll(&entry, 1, static_cast<int>(left.count())) <= 0) break;
      char buffer[4096];
      const ssize_t n = ::recv(fd_, buffer, sizeof(buffer), 0);
      if (n <= 0) break;
      received_.append(buffer, static_cast<size_t>(n));
    }
    return received_;
  }

 private:
  int fd_;
  std::string received_;
};

inline std::string HttpPost(const std::string& path, const std::string& body) {
  return fmt::format(
      "POST {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good\r\nContent-Type: "
      "application/json\r\nContent-Length: {}\r\n\r\n{}",
      path, body.size(), body);
}

}  // namespace inferbox::daemon::openai_test
