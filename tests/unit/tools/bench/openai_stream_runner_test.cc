#include "bench/openai_stream_runner.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mutex>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <boost/json.hpp>

namespace inferbox::engine::bench {
namespace {

using ::testing::HasSubstr;

// Answers each connection on 127.0.0.1 (port 0) with the next canned response, whole, then
// closes it; one connection at a time, on its own thread. Keeps what each request sent.
class ScriptedServer {
 public:
  explicit ScriptedServer(std::vector<std::string> responses) : responses_(std::move(responses)) {
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&address), length) != 0 ||
        ::listen(listener_, 16) != 0 ||
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
      ADD_FAILURE() << "cannot listen on loopback";
    }
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this] { Serve(); });
  }
  ~ScriptedServer() {
    thread_.join();
    ::close(listener_);
  }

  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::vector<std::string> requests() const {
    std::lock_guard lock(mutex_);
    return requests_;
  }

 private:
  void Serve() {
    for (const std::string& response : responses_) {
      const int connection = ::accept(listener_, nullptr, nullptr);
      if (connection < 0) return;
      std::string request;
      char buffer[4096];
      size_t header_end = std::string::npos;
      size_t wanted = 0;
      while (header_end == std::string::npos || request.size() < header_end + 4 + wanted) {
        const ssize_t n = ::recv(connection, buffer, sizeof(buffer), 0);
        if (n <= 0) break;
        request.append(buffer, static_cast<size_t>(n));
        if (header_end == std::string::npos &&
            (header_end = request.find("\r\n\r\n")) != std::string::npos) {
          const size_t field = request.find("Content-Length: ");
          if (field != std::string::npos && field < header_end)
            wanted = std::stoul(request.substr(field + 16));
        }
      }
      {
        std::lock_guard lock(mutex_);
        requests_.push_back(request);
      }
      ::send(connection, response.data(), response.size(), MSG_NOSIGNAL);
      ::close(connection);
    }
  }

  const std::vector<std::string> responses_;
  int listener_ = -1;
  uint16_t port_ = 0;
  mutable std::mutex mutex_;
  std::vector<std::string> requests_;  // Guarded by mutex_.
  std::thread thread_;                 // Last: starts once everything above exists.
};

std::string EventStream(const std::vector<std::string>& events) {
  std::string response =
      "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
  for (const std::string& event : events) response += event + "\n\n";
  return response;
}

const std::string kTextA =
    R"(data: {"choices":[{"index":0,"text":"a","finish_reason":null}],"usage":null})";
const std::string kNoText =
    R"(data: {"choices":[{"index":0,"text":"","finish_reason":null}],"usage":null})";
const std::string kLastText =
    R"(data: {"choices":[{"index":0,"text":"bc","finish_reason":"length"}],"usage":null})";
const std::string kUsage =
    R"(data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":3,"total_tokens":6}})";

TEST(SseParser, HandsOverEachEventWhateverPiecesItsBytesCome) {
  const std::string stream =
      ": ping\n\ndata: {\"a\":1}\r\n\r\nevent: x\ndata: one\ndata: two\n\ndata:[DONE]\n\n";
  for (size_t piece = 1; piece <= stream.size(); ++piece) {
    SseParser parser;
    std::vector<std::string> events;
    for (size_t at = 0; at < stream.size(); at += piece) {
      parser.Feed(std::string_view(stream).substr(at, piece),
                  [&events](std::string_view data) { events.emplace_back(data); });
    }
    EXPECT_THAT(events, ::testing::ElementsAre("{\"a\":1}", "one\ntwo", "[DONE]"))
        << "in pieces of " << piece << " bytes";
  }
}

TEST(OpenAiStreamRunner, CompletionsUrlAcceptsABaseWithOrWithoutV1) {
  EXPECT_EQ(CompletionsUrl("http://h:1"), "http://h:1/v1/completions");
  EXPECT_EQ(CompletionsUrl("http://h:1/"), "http://h:1/v1/completions");
  EXPECT_EQ(CompletionsUrl("http://h:1/v1/"), "http://h:1/v1/completions");
}

TEST(OpenAiStreamRunner, RequestsAGreedyStreamOfExactlyTheOutputLength) {
  const boost::json::value body = boost::json::parse(CompletionRequestBody("m", {5, 6, 7}, 9));
  EXPECT_EQ(body.at("model"), "m");
  EXPECT_EQ(body.at("prompt"), boost::json::parse("[5,6,7]"));
  EXPECT_EQ(body.at("max_tokens"), 9);
  EXPECT_EQ(body.at("temperature"), 0);
  EXPECT_EQ(body.at("ignore_eos"), true);
  EXPECT_EQ(body.at("stream"), true);
  EXPECT_EQ(body.at("stream_options").at("include_usage"), true);
  EXPECT_FALSE(body.as_object().contains("seed"));
  // --temperature: sampled, seeded.
  const boost::json::value sampled =
      boost::json::parse(CompletionRequestBody("m", {5}, 9, 0.5f, 42));
  EXPECT_EQ(sampled.at("temperature"), 0.5);
  EXPECT_EQ(sampled.at("seed"), 42);
}

TEST(OpenAiStreamRunner, RecordsEventsWithTextAndTheUsageCount) {
  ScriptedServer server(
      {EventStream({kTextA, ": ping", kNoText, kLastText, kUsage, "data: [DONE]"})});
  std::vector<RequestRecord> records;
  const Status status = RunOverHttp({server.url(), "secret", "tiny"}, {{1, 2, 3}}, 3, 1, records);
  ASSERT_TRUE(status.ok()) << status.ToString();
  ASSERT_EQ(records.size(), 1u);
  EXPECT_TRUE(records[0].error.ok()) << records[0].error.ToString();
  EXPECT_EQ(records[0].num_tokens, 3) << "from the usage, not from the events";
  EXPECT_EQ(records[0].arrivals.size(), 2u) << "the event without text is no arrival";
  EXPECT_TRUE(records[0].finished_by_length);
  EXPECT_TRUE(CheckRecords(records, 3).ok());
  ASSERT_EQ(server.requests().size(), 1u);
  EXPECT_THAT(server.requests()[0], HasSubstr("POST /v1/completions HTTP/1.1"));
  EXPECT_THAT(server.requests()[0], HasSubstr("Authorization: Bearer secret"));
  EXPECT_THAT(server.requests()[0], HasSubstr(R"("prompt":[1,2,3])"));
}

TEST(OpenAiStreamRunner, SendsALongPromptWithoutWaitingForContinue) {
  ScriptedServer server({EventStream({kTextA, kLastText, kUsage, "data: [DONE]"})});
  std::vector<RequestRecord> records;
  // Over a megabyte of JSON: libcurl asks for 100-continue past 1 MiB (older versions past
  // 1 KiB, an 8k-token prompt).
  const std::vector<int32_t> prompt(200'000, 128000);
  ASSERT_TRUE(RunOverHttp({server.url(), "", "tiny"}, {prompt}, 3, 1, records).ok());
  EXPECT_TRUE(records[0].error.ok()) << records[0].error.ToString();
  const std::string request = server.requests()[0];
  EXPECT_THAT(request.substr(0, request.find("\r\n\r\n")), ::testing::Not(HasSubstr("Expect:")))
      << "a 100-continue round trip would count in the time to first token";
}

TEST(OpenAiStreamRunner, SaysWhyARequestFailed) {
  const std::string refusal = R"({"error":{"message":"a wrong key","type":"auth_error"}})";
  ScriptedServer server({
      "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nConnection: close\r\n"
      "Content-Length: " +
          std::to_string(refusal.size()) + "\r\n\r\n" + refusal,
      EventStream({kTextA, kLastText, kUsage}),
      EventStream({kTextA, R"(data: {"error":{"message":"engine restarted"}})"}),
  });
  const OpenAiEndpoint endpoint{server.url(), "", "tiny"};
  std::vector<RequestRecord> records;
  ASSERT_TRUE(RunOverHttp(endpoint, {{1}, {2}, {3}}, 3, 1, records).ok());
  ASSERT_EQ(records.size(), 3u);
  EXPECT_THAT(records[0].error.message(), HasSubstr("HTTP 401: a wrong key"));
  EXPECT_THAT(records[1].error.message(), HasSubstr("the stream ended without [DONE]"));
  EXPECT_THAT(records[2].error.message(), HasSubstr("the stream ended with an error"));
  EXPECT_THAT(records[2].error.message(), HasSubstr("engine restarted"));
  EXPECT_THAT(server.requests()[0], ::testing::Not(HasSubstr("Authorization")))
      << "no key, no header";
}

}  // namespace
}  // namespace inferbox::engine::bench
