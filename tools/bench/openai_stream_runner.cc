#include "bench/openai_stream_runner.h"

#include <curl/curl.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <boost/json.hpp>

namespace inferbox::engine::bench {
namespace {

namespace json = boost::json;

// Client threads sharing the requests in flight (fewer when fewer are in flight).
constexpr int64_t kClientThreads = 4;

// A server that sends no byte (not even its 10-second keep-alive comment) for this long is
// taken for gone.
constexpr long kStallSeconds = 60;
constexpr long kConnectTimeoutMs = 10'000;
// Of a response that is not 200, this much of the body is kept for the message.
constexpr size_t kMaxErrorBody = 4096;

struct CurlGlobal {
  CurlGlobal() { curl_global_init(CURL_GLOBAL_DEFAULT); }
  ~CurlGlobal() { curl_global_cleanup(); }
};

struct MultiDeleter {
  void operator()(CURLM* multi) const { curl_multi_cleanup(multi); }
};
struct EasyDeleter {
  void operator()(CURL* easy) const { curl_easy_cleanup(easy); }
};
struct HeaderListDeleter {
  void operator()(curl_slist* list) const { curl_slist_free_all(list); }
};

// The message of an OpenAI error body ({"error": {"message": ...}}), else the body itself.
std::string ErrorText(long status, const std::string& body) {
  boost::system::error_code ec;
  const json::value parsed = json::parse(body, ec);
  if (!ec && parsed.is_object()) {
    const json::value* error = parsed.get_object().if_contains("error");
    if (error != nullptr && error->is_object()) {
      const json::value* message = error->get_object().if_contains("message");
      if (message != nullptr && message->is_string())
        return fmt::format("HTTP {}: {}", status, std::string_view(message->get_string()));
    }
  }
  return fmt::format("HTTP {}: {}", status, body);
}

// One request in flight: its easy handle, the bytes it sends, and what its stream said.
class Transfer {
 public:
  Transfer(size_t index, RequestRecord& record, const std::string& url,
           const OpenAiEndpoint& endpoint, const std::vector<int32_t>& prompt, int64_t output_len)
      : index_(index),
        record_(record),
        easy_(curl_easy_init()),
        body_(CompletionRequestBody(endpoint.model, prompt, output_len, endpoint.temperature,
                                    index)) {
    curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
    headers = curl_slist_append(headers, "Accept: text/event-stream");
    // No "Expect: 100-continue" for a long prompt's body: it would add a round trip (or
    // curl's one-second wait) to the time to first token.
    headers = curl_slist_append(headers, "Expect:");
    if (!endpoint.api_key.empty()) {
      headers = curl_slist_append(headers, ("Authorization: Bearer " + endpoint.api_key).c_str());
    }
    headers_.reset(headers);
    CURL* easy = easy_.get();
    curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
    // The benchmark measures the server, not a proxy between.
    curl_easy_setopt(easy, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(easy, CURLOPT_POST, 1L);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body_.data());
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body_.size()));
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers_.get());
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &Transfer::OnBytes);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, this);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, this);
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, kConnectTimeoutMs);
    curl_easy_setopt(easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(easy, CURLOPT_LOW_SPEED_TIME, kStallSeconds);
  }

  size_t index() const { return index_; }
  CURL* easy() const { return easy_.get(); }

  // The transfer ended with `result`: fills in the record's error, if any.
  void Finish(CURLcode result, const std::string& url) {
    if (!record_.error.ok()) return;
    long status = 0;
    curl_easy_getinfo(easy_.get(), CURLINFO_RESPONSE_CODE, &status);
    if (result != CURLE_OK) {
      record_.error = UnavailableError(fmt::format("POST {}: {}", url, curl_easy_strerror(result)));
    } else if (status != 200) {
      record_.error =
          UnavailableError(fmt::format("POST {}: {}", url, ErrorText(status, error_body_)));
    } else if (!saw_finish_ || !saw_usage_ || !saw_done_) {
      record_.error = InternalError(fmt::format("POST {}: the stream ended without {}", url,
                                                !saw_finish_  ? "a finish reason"
                                                : !saw_usage_ ? "usage (stream_options)"
                                                              : "[DONE]"));
    }
  }

 private:
  static size_t OnBytes(char* data, size_t size, size_t count, void* user) {
    auto* transfer = static_cast<Transfer*>(user);
    const size_t length = size * count;
    long status = 0;
    curl_easy_getinfo(transfer->easy_.get(), CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) {
      const size_t room = kMaxErrorBody - std::min(kMaxErrorBody, transfer->error_body_.size());
      transfer->error_body_.append(data, std::min(room, length));
      return length;
    }
    const Clock::time_point now = Clock::now();
    transfer->parser_.Feed(std::string_view(data, length), [transfer, now](std::string_view event) {
      transfer->OnEvent(event, now);
    });
    return length;
  }

  void OnEvent(std::string_view data, Clock::time_point now) {
    if (data == "[DONE]") {
      saw_done_ = true;
      return;
    }
    boost::system::error_code ec;
    const json::value event = json::parse(data, ec);
    if (ec || !event.is_object()) {
      Fail(InternalError(fmt::format("an event is not a JSON object: {}", data)));
      return;
    }
    const json::object& object = event.get_object();
    if (const json::value* error = object.if_contains("error")) {
      Fail(UnavailableError(
          fmt::format("the stream ended with an error: {}", json::serialize(*error))));
      return;
    }
    if (const json::value* choices = object.if_contains("choices");
        choices != nullptr && choices->is_array() && !choices->get_array().empty() &&
        choices->get_array()[0].is_object()) {
      const json::object& choice = choices->get_array()[0].get_object();
      const json::value* text = choice.if_contains("text");
      const json::value* finish = choice.if_contains("finish_reason");
      const bool has_text = text != nullptr && text->is_string() && !text->get_string().empty();
      const bool finished = finish != nullptr && finish->is_string();
      if (has_text || finished) record_.arrivals.push_back(now);
      if (finished) {
        saw_finish_ = true;
        record_.finished = now;
        record_.finished_by_length = finish->get_string() == "length";
      }
    }
    if (const json::value* usage = object.if_contains("usage");
        usage != nullptr && usage->is_object()) {
      const json::value* tokens = usage->get_object().if_contains("completion_tokens");
      if (tokens != nullptr && tokens->is_int64()) {
        record_.num_tokens = tokens->get_int64();
        saw_usage_ = true;
      } else if (tokens != nullptr && tokens->is_uint64()) {
        record_.num_tokens = static_cast<int64_t>(tokens->get_uint64());
        saw_usage_ = true;
      }
    }
  }

  void Fail(Status error) {
    if (record_.error.ok()) record_.error = std::move(error);
  }

  const size_t index_;
  RequestRecord& record_;
  std::unique_ptr<CURL, EasyDeleter> easy_;
  std::unique_ptr<curl_slist, HeaderListDeleter> headers_;
  std::string body_;
  SseParser parser_;
  std::string error_body_;
  bool saw_finish_ = false;
  bool saw_usage_ = false;
  bool saw_done_ = false;
};

}  // namespace

void SseParser::Feed(std::string_view bytes, const DataHandler& on_data) {
  for (const char c : bytes) {
    if (c != '\n') {
      line_.push_back(c);
      continue;
    }
    if (!line_.empty() && line_.back() == '\r') line_.pop_back();
    if (line_.empty()) {
      // A blank line ends the event.
      if (has_data_) on_data(data_);
      data_.clear();
      has_data_ = false;
    } else if (line_.starts_with("data:")) {
      std::string_view value = std::string_view(line_).substr(5);
      if (value.starts_with(' ')) value.remove_prefix(1);
      if (has_data_) data_.push_back('\n');
      data_.append(value);
      has_data_ = true;
    }
    line_.clear();
  }
}

std::string CompletionsUrl(std::string_view base_url) {
  while (base_url.ends_with('/')) base_url.remove_suffix(1);
  if (base_url.ends_with("/v1")) base_url.remove_suffix(3);
  return std::string(base_url) + "/v1/completions";
}

std::string CompletionRequestBody(const std::string& model, const std::vector<int32_t>& prompt,
                                  int64_t output_len, float temperature, uint64_t seed) {
  json::array ids;
  ids.reserve(prompt.size());
  for (const int32_t id : prompt) ids.push_back(id);
  json::object body{{"model", model},
                    {"prompt", std::move(ids)},
                    {"max_tokens", output_len},
                    {"temperature", 0},
                    {"ignore_eos", true},
                    {"stream", true},
                    {"stream_options", {{"include_usage", true}}}};
  if (temperature > 0.0f) {
    body["temperature"] = static_cast<double>(temperature);
    body["seed"] = seed;
  }
  return json::serialize(body);
}

namespace {

// One client thread's share: up to `concurrency` requests in flight through its own multi
// handle, taking the next request from `next` while `stop` is not set.
Status RunShare(const OpenAiEndpoint& endpoint, const std::string& url,
                const std::vector<std::vector<int32_t>>& prompts, int64_t output_len,
                int64_t concurrency, std::atomic<size_t>& next, const std::atomic<bool>& stop,
                std::vector<RequestRecord>& records) {
  std::unique_ptr<CURLM, MultiDeleter> multi(curl_multi_init());
  if (multi == nullptr) return InternalError("curl_multi_init failed");
  // Keep every connection for the next request rather than opening new ones.
  curl_multi_setopt(multi.get(), CURLMOPT_MAXCONNECTS, static_cast<long>(concurrency + 4));

  // Index i: request i while it is in flight. Declared after `multi`, so destroyed first;
  // every handle leaves the multi handle before it is cleaned up.
  std::vector<std::unique_ptr<Transfer>> transfers(prompts.size());
  const auto abandon = [&](Status error) {
    for (auto& transfer : transfers) {
      if (transfer != nullptr) curl_multi_remove_handle(multi.get(), transfer->easy());
      transfer.reset();
    }
    return error;
  };
  int64_t in_flight = 0;
  bool drained = false;  // `next` has run past the last request.
  Status failure;
  while (!drained || in_flight > 0) {
    while (failure.ok() && !drained && !stop.load() && in_flight < concurrency) {
      const size_t index = next.fetch_add(1);
      if (index >= prompts.size()) {
        drained = true;
        break;
      }
      auto transfer = std::make_unique<Transfer>(index, records[index], url, endpoint,
                                                 prompts[index], output_len);
      if (transfer->easy() == nullptr) {
        failure = InternalError("curl_easy_init failed");
        break;
      }
      records[index].submitted = Clock::now();
      if (const CURLMcode added = curl_multi_add_handle(multi.get(), transfer->easy());
          added != CURLM_OK) {
        failure =
            InternalError(fmt::format("curl_multi_add_handle: {}", curl_multi_strerror(added)));
        break;
      }
      transfers[index] = std::move(transfer);
      ++in_flight;
    }
    if (stop.load()) drained = true;
    if (in_flight == 0) break;

    int running = 0;
    if (const CURLMcode performed = curl_multi_perform(multi.get(), &running);
        performed != CURLM_OK) {
      return abandon(
          InternalError(fmt::format("curl_multi_perform: {}", curl_multi_strerror(performed))));
    }
    bool any_done = false;
    int queued = 0;
    while (CURLMsg* message = curl_multi_info_read(multi.get(), &queued)) {
      if (message->msg != CURLMSG_DONE) continue;
      char* owner = nullptr;
      curl_easy_getinfo(message->easy_handle, CURLINFO_PRIVATE, &owner);
      auto* transfer = reinterpret_cast<Transfer*>(owner);
      const CURLcode result = message->data.result;
      curl_multi_remove_handle(multi.get(), message->easy_handle);
      transfer->Finish(result, url);
      transfers[transfer->index()].reset();
      --in_flight;
      any_done = true;
    }
    if (!any_done && running > 0) {
      if (const CURLMcode polled = curl_multi_poll(multi.get(), nullptr, 0, 100, nullptr);
          polled != CURLM_OK) {
        return abandon(
            InternalError(fmt::format("curl_multi_poll: {}", curl_multi_strerror(polled))));
      }
    }
  }
  return failure;
}

}  // namespace

Status RunOverHttp(const OpenAiEndpoint& endpoint, const std::vector<std::vector<int32_t>>& prompts,
                   int64_t output_len, int64_t concurrency, std::vector<RequestRecord>& records) {
  const CurlGlobal curl;
  const std::string url = CompletionsUrl(endpoint.base_url);
  records.assign(prompts.size(), RequestRecord{});
  // Several client threads: one thread reading every stream's events (one per token) fell
  // behind at 256 streams, delaying the arrival times and the next requests it measures.
  const int64_t threads = std::clamp<int64_t>(concurrency, 1, kClientThreads);
  std::atomic<size_t> next{0};
  std::atomic<bool> stop{false};
  std::mutex failure_mutex;
  Status failure;
  std::vector<std::thread> workers;
  for (int64_t t = 0; t < threads; ++t) {
    const int64_t share = concurrency / threads + (t < concurrency % threads ? 1 : 0);
    workers.emplace_back([&, share] {
      Status status = RunShare(endpoint, url, prompts, output_len, share, next, stop, records);
      if (status.ok()) return;
      stop.store(true);
      std::lock_guard lock(failure_mutex);
      if (failure.ok()) failure = std::move(status);
    });
  }
  for (std::thread& worker : workers) worker.join();
  return failure;
}

}  // namespace inferbox::engine::bench
