// Status and Result<T>: expected failures (bad input, missing file, peer gone) travel as
// values with a message a person can act on. Broken invariants abort instead (INFERBOX_CHECK).
#pragma once

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace inferbox {

// Mirrors the gRPC status codes that the box maps to; mapped to gRPC codes and HTTP
// statuses in one place at each API edge.
enum class StatusCode {
  kOk,
  kInvalidArgument,
  kNotFound,
  kAlreadyExists,
  kFailedPrecondition,
  kPermissionDenied,
  kUnauthenticated,
  kResourceExhausted,
  kUnavailable,
  kDeadlineExceeded,
  kCancelled,
  kInternal,
};

std::string_view StatusCodeName(StatusCode code);

// Why a RESOURCE_EXHAUSTED status is the caller's own limit (an API key's quota) rather than
// the box's load, and when that limit frees. The API edges answer it with HTTP 429
// rate_limit_error and Retry-After, and gRPC RESOURCE_EXHAUSTED with google.rpc.RetryInfo
// and QuotaFailure (CONVENTIONS R1.7, R2.4), instead of 503 / a jittered retry.
struct QuotaViolation {
  // The limit reached, as KeyLimits names it: "tokens_per_minute", "tokens_per_day",
  // "max_concurrent_requests".
  std::string limit;
  // Whose limit it is, e.g. "api_key:ibx_abcdefghijkl".
  std::string subject;
  // When a request would be admitted again, as far as the box can tell.
  std::chrono::milliseconds retry_after{0};
};

// Why a request failed, where a program acts on the cause and not only on the code. Engine
// and daemon pass it as the reason of a google.rpc.ErrorInfo (domain kErrorDomain) in the
// gRPC status details, so that no caller matches message text; the daemon maps it to the
// OpenAI error code, the rejection metric and the usage ledger's outcome, and its gRPC API
// passes it on to clients. UPPER_SNAKE_CASE, as google.rpc.ErrorInfo asks.
inline constexpr std::string_view kErrorDomain = "inferbox";
namespace error_reason {
// The prompt, with the output it asks room for, does not fit the model's context or the KV
// cache (OpenAI: 400 context_length_exceeded).
inline constexpr std::string_view kPromptTooLong = "PROMPT_TOO_LONG";
// The engine's queue is full.
inline constexpr std::string_view kQueueFull = "QUEUE_FULL";
// The request waited past the model's queue_timeout_seconds without starting.
inline constexpr std::string_view kQueueTimeout = "QUEUE_TIMEOUT";
}  // namespace error_reason

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "INVALID_ARGUMENT: <message>", or "OK".
  std::string ToString() const;

  // Returns a status with `context` prepended to the message: "context: message".
  Status WithContext(std::string_view context) const;

  // Set only on statuses made by QuotaExceededError.
  const std::optional<QuotaViolation>& quota_violation() const { return quota_violation_; }

  // One of error_reason's, or empty.
  const std::string& reason() const { return reason_; }
  // This status with `reason` (ignored on OK).
  Status WithReason(std::string_view reason) const;

 private:
  friend Status QuotaExceededError(std::string message, QuotaViolation violation);

  StatusCode code_ = StatusCode::kOk;
  std::string message_;
  std::optional<QuotaViolation> quota_violation_;
  std::string reason_;
};

inline Status InvalidArgumentError(std::string message) {
  return {StatusCode::kInvalidArgument, std::move(message)};
}
inline Status NotFoundError(std::string message) {
  return {StatusCode::kNotFound, std::move(message)};
}
inline Status FailedPreconditionError(std::string message) {
  return {StatusCode::kFailedPrecondition, std::move(message)};
}
inline Status UnavailableError(std::string message) {
  return {StatusCode::kUnavailable, std::move(message)};
}
inline Status InternalError(std::string message) {
  return {StatusCode::kInternal, std::move(message)};
}
// RESOURCE_EXHAUSTED because the caller reached a limit of its own (see QuotaViolation).
inline Status QuotaExceededError(std::string message, QuotaViolation violation) {
  Status status(StatusCode::kResourceExhausted, std::move(message));
  status.quota_violation_ = std::move(violation);
  return status;
}

// Either a value or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}         // NOLINT(google-explicit-constructor)
  Result(Status status) : status_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (status_.ok()) {
      std::fprintf(stderr, "Result constructed from an OK status without a value\n");
      std::abort();
    }
  }

  bool ok() const { return value_.has_value(); }
  // OK when a value is held.
  const Status& status() const { return status_; }

  T& value() & { return Checked(); }
  const T& value() const& { return Checked(); }
  T&& value() && { return std::move(Checked()); }
  T* operator->() { return &Checked(); }
  const T* operator->() const { return &Checked(); }
  T& operator*() & { return Checked(); }
  const T& operator*() const& { return Checked(); }

 private:
  T& Checked() {
    if (!value_) AbortOnError();
    return *value_;
  }
  const T& Checked() const {
    if (!value_) AbortOnError();
    return *value_;
  }
  [[noreturn]] void AbortOnError() const {
    std::fprintf(stderr, "value() of a Result holding an error: %s\n", status_.ToString().c_str());
    std::abort();
  }

  Status status_;
  std::optional<T> value_;
};

}  // namespace inferbox

// Aborts with a message when an internal invariant is broken. Not for input validation.
#define INFERBOX_CHECK(condition)                                                        \
  do {                                                                                   \
    if (!(condition)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (false)
