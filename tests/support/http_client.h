// A minimal blocking HTTP GET for tests (libcurl).
#pragma once

#include <chrono>
#include <string>

namespace inferbox::testing {

struct HttpResponse {
  long status = 0;  // 0 when no response arrived.
  std::string body;
  std::string error;  // Transport error, empty on success.
  std::string content_type;
};

HttpResponse HttpGet(const std::string& url,
                     std::chrono::milliseconds timeout = std::chrono::seconds(10));

}  // namespace inferbox::testing
