#include "openai_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string_view>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "inferbox/common/logging.h"
#include "openai_reasoning.h"
#include "openai_sse.h"

namespace inferbox::daemon::openai {
namespace {

namespace http = boost::beast::http;
namespace v1 = inferbox::v1;
using Clock = std::chrono::steady_clock;
using Request = http::request<http::string_body>;

constexpr size_t kMaxHeaderBytes = 64 << 10;
// Distinct ignored field names logged at info level; past that, at debug only.
constexpr size_t kMaxLoggedFieldNames = 256;

// The Retry-After header of `error`; empty for none.
std::string RetryAfter(const ApiError& error) {
  if (!error.retry_after) return {};
  if (error.retry_after_seconds > 0) return std::to_string(error.retry_after_seconds);
  thread_local std::mt19937 random{std::random_device{}()};
  return std::to_string(std::uniform_int_distribution<int>(1, 3)(random));
}

// R1.2: ignored fields get a log line; the first time a name is seen at info, later at debug,
// so that a client that always sends one does not flood the journal.
void LogIgnoredFields(std::string_view path, const std::vector<std::string>& fields) {
  if (fields.empty()) return;
  static std::mutex mutex;
  static std::set<std::string, std::less<>> logged;
  bool first_time = false;
  {
    std::lock_guard lock(mutex);
    for (const std::string& field : fields) {
      if (logged.size() < kMaxLoggedFieldNames && logged.insert(field).second) first_time = true;
    }
  }
  spdlog::log(first_time ? spdlog::level::info : spdlog::level::debug,
              "{}: ignoring unknown request fields: {}", path, fmt::join(fields, ", "));
}

// R1.8: what GET /v1/models lists and GET /v1/models/{id} finds. A model whose engine is
// restarting or draining stays loaded (its requests get 503 and Retry-After meanwhile); one
// still loading, failed, or without an engine is not.
bool IsLoaded(const v1::ModelInfo& model) {
  return model.state() == v1::MODEL_STATE_READY || model.state() == v1::MODEL_STATE_RESTARTING ||
         model.state() == v1::MODEL_STATE_DRAINING;
}

std::string_view NotLoadedReason(const v1::ModelInfo& model) {
  switch (model.state()) {
    case v1::MODEL_STATE_LOADING: return "it is still loading";
    case v1::MODEL_STATE_FAILED: return "its engine failed to start (inferboxctl status says why)";
    default: return "it has no engine (inferboxctl status says why)";
  }
}

ApiError NotServing() {
  return {.http_status = 503,
          .type = "service_unavailable_error",
          .message = "the server is shutting down; retry on another instance or shortly",
          .retry_after = true};
}

ApiError ShuttingDown() {
  return {.http_status = 503,
          .type = "service_unavailable_error",
          .message = "the server shut down before the generation finished",
          .retry_after = true};
}

std::string_view HealthStatus(const std::vector<v1::ModelInfo>& models) {
  const auto in_state = [&](auto predicate) {
    return std::any_of(models.begin(), models.end(),
                       [&](const v1::ModelInfo& model) { return predicate(model.state()); });
  };
  if (in_state([](v1::ModelState state) { return state == v1::MODEL_STATE_READY; })) return "ok";
  if (in_state([](v1::ModelState state) {
        return state == v1::MODEL_STATE_LOADING || state == v1::MODEL_STATE_RESTARTING;
      })) {
    return "loading";
  }
  return "unavailable";
}

// A parse error worth a 400; the client closing or stalling gets no answer.
bool IsMalformedRequest(const boost::system::error_code& ec) {
  const boost::system::error_code http_error = http::error::bad_target;
  return ec.category() == http_error.category() && ec != http::error::end_of_stream &&
         ec != http::error::partial_message;
}

// %XX-decodes a path segment; nullopt when malformed.
std::optional<std::string> PercentDecode(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out += text[i];
      continue;
    }
    if (i + 2 >= text.size()) return std::nullopt;
    int value = 0;
    for (size_t k = 1; k <= 2; ++k) {
      const char c = text[i + k];
      value *= 16;
      if (c >= '0' && c <= '9')
        value += c - '0';
      else if (c >= 'a' && c <= 'f')
        value += c - 'a' + 10;
      else if (c >= 'A' && c <= 'F')
        value += c - 'A' + 10;
      else
        return std::nullopt;
    }
    out += static_cast<char>(value);
    i += 2;
  }
  return out;
}

// "host:port" / "[v6]:port" of the socket's peer, for log lines; "?" when it is gone.
std::string PeerAddress(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return "?";
  char host[INET6_ADDRSTRLEN] = "?";
  if (address.ss_family == AF_INET) {
    const auto& v4 = reinterpret_cast<const sockaddr_in&>(address);
    ::inet_ntop(AF_INET, &v4.sin_addr, host, sizeof(host));
    return fmt::format("{}:{}", host, ntohs(v4.sin_port));
  }
  const auto& v6 = reinterpret_cast<const sockaddr_in6&>(address);
  ::inet_ntop(AF_INET6, &v6.sin6_addr, host, sizeof(host));
  return fmt::format("[{}]:{}", host, ntohs(v6.sin6_port));
}

// Answers `error` on `socket` in the clear without blocking, and ends the sending direction.
void AnswerInTheClear(int socket, const ApiError& error) {
  http::response<http::string_body> response{static_cast<http::status>(error.http_status), 11};
  response.set(http::field::content_type, "application/json");
  if (error.retry_after) response.set(http::field::retry_after, RetryAfter(error));
  response.keep_alive(false);
  response.body() = ErrorBody(error);
  response.prepare_payload();
  std::ostringstream text;
  text << response;
  const std::string bytes = text.str();
  // One non-blocking try: a fresh socket's buffer takes a few hundred bytes.
  [[maybe_unused]] const ssize_t sent =
      ::send(socket, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  ::shutdown(socket, SHUT_WR);
  // Closing with unread input resets the connection, which can destroy the response in
  // flight: take in what the client has sent so far.
  char discard[4096];
  while (::recv(socket, discard, sizeof(discard), MSG_DONTWAIT) > 0) {
  }
}

class Connection {
 public:
  Connection(UniqueFd socket, const GatewayContext& context)
      : context_(context), stream_(std::move(socket), context.drain, context.abort) {}

  void Serve() {
    if (context_.options.tls && !AcceptTls()) return;
    for (;;) {
      std::optional<Request> request = ReadRequest();
      if (!request) return;
      version_ = request->version();
      // During drain every response closes its connection.
      keep_alive_ = request->keep_alive() && !context_.drain.is_raised();
      target_ = fmt::format("{} {}", std::string_view(request->method_string()),
                            std::string_view(request->target()));
      if (!Handle(*request) || !keep_alive_) return;
    }
  }

 private:
  // The TLS handshake, within the idle timeout; false: close the connection.
  bool AcceptTls() {
    stream_.set_deadline(Clock::now() + context_.options.idle_timeout);
    stream_.set_wake_on_drain(true);
    const std::string peer = PeerAddress(stream_.fd());  // Before the client can leave.
    std::string why;
    const SocketStream::Handshake handshake =
        stream_.AcceptTls(context_.options.tls->native(), &why);
    stream_.set_wake_on_drain(false);
    switch (handshake) {
      case SocketStream::Handshake::kDone: return true;
      case SocketStream::Handshake::kPlainHttp:
        // As nginx does: a person who typed http:// learns why nothing works.
        AnswerInTheClear(stream_.fd(),
                         InvalidRequest("", "this port serves HTTPS: use https:// in the URL"));
        return false;
      case SocketStream::Handshake::kFailed: {
        // Scanners and TCP health checks fail handshakes all day: a line now and then.
        static std::atomic<int64_t> num_failed{0};
        spdlog::log(num_failed.fetch_add(1) % 100 == 0 ? spdlog::level::info : spdlog::level::debug,
                    "HTTP: TLS handshake from {} failed: {}", peer, why);
        return false;
      }
    }
    return false;
  }

  // nullopt: close the connection (client gone, idle, drain, or an error already answered).
  std::optional<Request> ReadRequest() {
    http::request_parser<http::string_body> parser;
    parser.body_limit(context_.options.max_body_bytes);
    parser.header_limit(kMaxHeaderBytes);
    stream_.set_deadline(Clock::now() + context_.options.idle_timeout);
    stream_.set_wake_on_drain(true);
    boost::system::error_code ec;
    http::read_header(stream_, buffer_, parser, ec);
    if (!ec && !parser.is_done()) {
      if (boost::beast::iequals(parser.get()[http::field::expect], "100-continue")) {
        http::response<http::empty_body> proceed{http::status::continue_, parser.get().version()};
        http::write(stream_, proceed, ec);
      }
      if (!ec) http::read(stream_, buffer_, parser, ec);
    }
    stream_.set_wake_on_drain(false);
    if (!ec) return parser.release();
    version_ = parser.is_header_done() ? parser.get().version() : 11;
    keep_alive_ = false;
    if (ec == http::error::body_limit) {
      SendError({.http_status = 413,
                 .type = "invalid_request_error",
                 .message = fmt::format("the request body is larger than {} bytes",
                                        context_.options.max_body_bytes),
                 .code = "request_too_large"});
      LingeringClose();
    } else if (ec == http::error::header_limit) {
      SendError({.http_status = 431,
                 .type = "invalid_request_error",
                 .message =
                     fmt::format("the request headers are larger than {} bytes", kMaxHeaderBytes)});
    } else if (IsMalformedRequest(ec)) {
      SendError(InvalidRequest("", fmt::format("malformed HTTP request: {}", ec.message())));
    }
    return std::nullopt;
  }

  // Lets the client see a response sent before its whole request was read: closing a socket
  // with unread input sends a reset, which may destroy the response in flight.
  void LingeringClose() {
    stream_.ShutdownSend();
    stream_.set_deadline(Clock::now() + std::chrono::seconds(1));
    char discard[16384];
    boost::system::error_code ec;
    for (size_t total = 0; total < context_.options.max_body_bytes && !ec;)
      total += stream_.read_some(boost::asio::buffer(discard), ec);
  }

  // False: close the connection.
  bool Handle(const Request& request) {
    const std::string_view target = request.target();
    const std::string_view path = target.substr(0, target.find('?'));
    const http::verb method = request.method();
    if (path == "/health" || path == "/health/ready" || path == "/health/live") {
      if (method != http::verb::get) return MethodNotAllowed(method, path, "GET");
      if (path == "/health/live") return SendJson(200, StatusBody("ok"));
      if (!context_.serving.load()) return SendJson(503, StatusBody("draining"));
      const std::string_view status = HealthStatus(context_.frontend.ListModels());
      return SendJson(status == "ok" ? 200 : 503, StatusBody(status));
    }
    if (path != "/v1" && !path.starts_with("/v1/")) return NotFound(method, path);

    Result<Caller> caller =
        context_.authenticator.Authenticate(std::string_view(request[http::field::authorization]));
    if (!caller.ok()) return SendError(ApiErrorFromStatus(caller.status()));
    caller->api = "http";
    if (!context_.serving.load()) return SendError(NotServing());

    if (path == "/v1/chat/completions" || path == "/v1/completions") {
      if (method != http::verb::post) return MethodNotAllowed(method, path, "POST");
      const Endpoint endpoint =
          path == "/v1/completions" ? Endpoint::kCompletions : Endpoint::kChatCompletions;
      return Complete(endpoint, request.body(), *caller);
    }
    if (path == "/v1/models") {
      if (method != http::verb::get) return MethodNotAllowed(method, path, "GET");
      std::vector<v1::ModelInfo> loaded;
      for (v1::ModelInfo& model : context_.frontend.ListModels()) {
        if (IsLoaded(model)) loaded.push_back(std::move(model));
      }
      return SendJson(200, ModelListBody(loaded));
    }
    constexpr std::string_view kModelPrefix = "/v1/models/";
    if (path.starts_with(kModelPrefix) && path.size() > kModelPrefix.size()) {
      if (method != http::verb::get) return MethodNotAllowed(method, path, "GET");
      // Model ids may hold '/' (e.g. "Qwen/Qwen2.5-0.5B"): the id is the rest of the path.
      const std::optional<std::string> id = PercentDecode(path.substr(kModelPrefix.size()));
      if (!id) return SendError(InvalidRequest("model", "the model id is not valid %-encoding"));
      for (const v1::ModelInfo& model : context_.frontend.ListModels()) {
        if (model.id() != *id) continue;
        if (IsLoaded(model)) return SendJson(200, ModelBody(model));
        return SendError(ApiErrorFromStatus(NotFoundError(
            fmt::format("the model '{}' is not loaded: {}", *id, NotLoadedReason(model)))));
      }
      return SendError(ApiErrorFromStatus(
          NotFoundError(fmt::format("the model '{}' does not exist on this box", *id))));
    }
    return NotFound(method, path);
  }

  bool NotFound(http::verb method, std::string_view path) {
    ApiError error = InvalidRequest(
        "", fmt::format("Invalid URL ({} {})", std::string_view(http::to_string(method)), path));
    error.http_status = 404;
    return SendError(error);
  }

  bool MethodNotAllowed(http::verb method, std::string_view path, std::string_view allowed) {
    ApiError error =
        InvalidRequest("", fmt::format("{} is not allowed on {}; use {}",
                                       std::string_view(http::to_string(method)), path, allowed));
    error.http_status = 405;
    return Send(405, ErrorBody(error), {}, allowed);
  }

  bool SendError(const ApiError& error) {
    if (error.http_status >= 500) {
      spdlog::warn("{} -> {} {}: {}", target_, error.http_status, error.type, error.message);
    }
    return Send(error.http_status, ErrorBody(error), RetryAfter(error));
  }

  bool SendJson(int status, std::string body) { return Send(status, std::move(body), {}); }

  // False when the write failed (the connection is then closed). `retry_after`: the
  // Retry-After header, empty for none.
  bool Send(int status, std::string body, std::string_view retry_after,
            std::string_view allow = {}) {
    http::response<http::string_body> response{static_cast<http::status>(status), version_};
    response.set(http::field::content_type, "application/json");
    if (!retry_after.empty()) response.set(http::field::retry_after, retry_after);
    if (status == 401) response.set(http::field::www_authenticate, "Bearer");
    if (!allow.empty()) response.set(http::field::allow, allow);
    response.keep_alive(keep_alive_);
    response.body() = std::move(body);
    response.prepare_payload();
    spdlog::debug("{} -> {}", target_, status);
    boost::system::error_code ec;
    stream_.set_deadline(Clock::now() + context_.options.idle_timeout);
    http::write(stream_, response, ec);
    return !ec;
  }

  // POST /v1/chat/completions and /v1/completions.
  bool Complete(Endpoint endpoint, std::string_view body, const Caller& caller) {
    ResponseContext response;
    response.endpoint = endpoint;
    response.id = NewResponseId(endpoint);
    response.created = std::chrono::duration_cast<std::chrono::seconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
    ResponseOptions options;
    OutputSplit split;
    Result<std::unique_ptr<GenerationStream>> generation =
        UnavailableError("the request was not started");
    if (endpoint == Endpoint::kChatCompletions) {
      ChatCompletionRequest parsed;
      if (auto error = ParseChatCompletionRequest(body, &parsed)) return SendError(*error);
      LogIgnoredFields("/v1/chat/completions", parsed.ignored_fields);
      parsed.request.set_request_id(response.id);
      // The served model's name, "default" resolved: the response names it, and its chat
      // template says whether the prompt opens a reasoning block.
      response.model = context_.frontend.ResolveModel(parsed.request.model());
      response.logprobs = parsed.request.logprobs().enabled();
      options = parsed.response;
      split.reasoning.emplace(context_.frontend.ChatPromptOpensReasoning(response.model));
      // Tools offered: the model's calls are read out of its output (tool_choice "none" took
      // them out of the request).
      if (parsed.request.tools_size() > 0) {
        std::vector<std::string> names;
        for (const v1::Tool& tool : parsed.request.tools()) names.push_back(tool.function().name());
        split.tools = ToolCallExtractor::For(context_.frontend.ToolCallFormat(response.model),
                                             std::move(names));
      }
      generation = context_.frontend.Chat(parsed.request, caller, std::nullopt);
    } else {
      CompletionRequest parsed;
      if (auto error = ParseCompletionRequest(body, &parsed)) return SendError(*error);
      LogIgnoredFields("/v1/completions", parsed.ignored_fields);
      parsed.request.set_request_id(response.id);
      response.model = context_.frontend.ResolveModel(parsed.request.model());
      response.logprobs = parsed.request.logprobs().enabled();
      options = parsed.response;
      generation = context_.frontend.Generate(parsed.request, caller, std::nullopt);
    }
    if (!generation.ok()) return SendError(ApiErrorFromStatus(generation.status()));
    response.include_usage = options.include_usage;
    GenerationStream& stream = **generation;
    return options.stream ? StreamResponse(stream, response, split)
                          : WholeResponse(stream, response, split);
  }

  // The status a generation ended with, when it ended before its finishing chunk.
  static Status EndStatus(const GenerationStream& stream) {
    Status status = stream.status();
    if (status.ok()) return InternalError("the generation ended without a finish reason");
    return status;
  }

  // The output is gathered by an OutputCollector (openai_sse.h) on the thread that receives
  // it; this thread wakes at the end (or when the client leaves or the gateway aborts).
  bool WholeResponse(GenerationStream& stream, const ResponseContext& response,
                     OutputSplit& split) {
    auto collector = std::make_shared<OutputCollector>(stream_.fd(), std::move(split));
    if (!collector->ok()) return NoWaiter(stream);
    stream.Watch(collector);
    switch (collector->Wait(context_.abort)) {
      case OutputCollector::Step::kGone: return Abandon(stream);
      case OutputCollector::Step::kAborted: stream.Cancel(); return SendError(ShuttingDown());
      case OutputCollector::Step::kEnded: return SendError(ApiErrorFromStatus(EndStatus(stream)));
      case OutputCollector::Step::kFinished: break;
    }
    return SendJson(200, CompletionBody(response, collector->output()));
  }

  // The generation's events are written by an SsePump (openai_sse.h) as they come, on the
  // thread that receives them; this thread writes only what the socket did not take at once,
  // sends the keep-alive comments, and ends the response.
  bool StreamResponse(GenerationStream& stream, const ResponseContext& response,
                      OutputSplit& split) {
    auto pump =
        std::make_shared<SsePump>(stream_, response, std::move(split), version_, keep_alive_);
    if (!pump->ok()) return NoWaiter(stream);
    stream.Watch(pump);
    std::string bytes;
    for (;;) {
      switch (pump->Next(context_.options.sse_keepalive_interval, context_.abort, &bytes)) {
        case SsePump::Step::kWrite: {
          const bool written = Write(bytes);
          if (pump->Written(written)) stream.Resume();
          if (!written) return Abandon(stream);
          break;
        }
        case SsePump::Step::kFinished: return pump->keep_alive();
        case SsePump::Step::kFailed:
        case SsePump::Step::kGone: return Abandon(stream);
        case SsePump::Step::kEnded:
          return FailStream(*pump, response, ApiErrorFromStatus(EndStatus(stream)));
        case SsePump::Step::kAborted:
          stream.Cancel();
          return FailStream(*pump, response, ShuttingDown());
      }
    }
  }

  // A response whose connection cannot wait for its generation (no eventfd): 500.
  bool NoWaiter(GenerationStream& stream) {
    spdlog::error("{}: no eventfd for the response (out of file descriptors?)", target_);
    stream.Cancel();
    return SendError(ApiErrorFromStatus(InternalError("the response could not be started")));
  }

  // A stream that ends without its finishing chunk. R1.6: once the headers are out, an error
  // is one `data: {"error":...}` event, and the stream then ends WITHOUT `data: [DONE]`, so
  // that no client can take the truncated output for a complete one. The connection is closed.
  bool FailStream(SsePump& pump, const ResponseContext& response, const ApiError& error) {
    std::string rest;
    if (!pump.Fail(ErrorBody(error), &rest)) return SendError(error);
    // A client got part of an answer: a key event, findable by the id the client saw.
    LogEvent(
        spdlog::level::warn, message_ids::kRequestFailed,
        fmt::format("{} -> stream {} failed after start: {}", target_, response.id, error.message),
        {.model = response.model, .request_id = response.id});
    (void)Write(rest);
    return false;
  }

  // Writes all of `bytes`, waiting at most the idle timeout for the client to take them.
  bool Write(std::string_view bytes) {
    boost::system::error_code ec;
    stream_.set_deadline(Clock::now() + context_.options.idle_timeout);
    boost::asio::write(stream_, boost::asio::buffer(bytes.data(), bytes.size()), ec);
    return !ec;
  }

  // A write failed: the client is gone (or stalled past the timeout).
  static bool Abandon(GenerationStream& stream) {
    stream.Cancel();
    return false;
  }

  const GatewayContext& context_;
  SocketStream stream_;
  boost::beast::flat_buffer buffer_;
  // Of the request being served.
  unsigned version_ = 11;
  bool keep_alive_ = false;
  std::string target_;
};

}  // namespace

void ServeConnection(UniqueFd socket, const GatewayContext& context) {
  Connection(std::move(socket), context).Serve();
}

void RejectConnection(UniqueFd socket, const ApiError& error) {
  AnswerInTheClear(socket.get(), error);
}

}  // namespace inferbox::daemon::openai
