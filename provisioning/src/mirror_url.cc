// The mirror allow-list (R6.10): a URL is compared with the prefixes part by part (scheme,
// host, port, path), never as text, so "https://mirror.corp.evil/" does not pass for
// "https://mirror.corp", nor "https://mirror.corp/models/../admin" for ".../models/".
#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <memory>
#include <optional>

#include <fmt/format.h>

#include "inferbox/provisioning/mirror.h"

namespace inferbox::provisioning {
namespace {

struct UrlFree {
  void operator()(CURLU* url) const { curl_url_cleanup(url); }
};

struct UrlParts {
  std::string scheme;
  std::string host;
  std::string port;
  std::string path;  // Always ends with '/': a mirror URL names a folder.
};

std::string Lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

std::optional<std::string> GetPart(CURLU* url, CURLUPart part, unsigned int flags = 0) {
  char* value = nullptr;
  if (curl_url_get(url, part, &value, flags) != CURLUE_OK || value == nullptr) return std::nullopt;
  std::string text = value;
  curl_free(value);
  return text;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// False for a segment that is, or decodes to, "." or "..", or that decodes to something
// holding a slash, a backslash or a NUL; and for a malformed %-escape.
bool IsPlainSegment(std::string_view segment) {
  std::string decoded;
  for (size_t i = 0; i < segment.size(); ++i) {
    if (segment[i] != '%') {
      decoded += segment[i];
      continue;
    }
    if (i + 2 >= segment.size()) return false;
    const int high = HexValue(segment[i + 1]);
    const int low = HexValue(segment[i + 2]);
    if (high < 0 || low < 0) return false;
    decoded += static_cast<char>(high * 16 + low);
    i += 2;
  }
  if (decoded == "." || decoded == "..") return false;
  return decoded.find_first_of(std::string_view("/\\\0", 3)) == std::string::npos;
}

Result<UrlParts> ParseUrl(std::string_view text, std::string_view what) {
  auto invalid = [&](std::string_view why) {
    return InvalidArgumentError(fmt::format("{} \"{}\" {}", what, text.substr(0, 200), why));
  };
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte <= 0x20 || byte == 0x7f) return invalid("holds a space or a control character");
  }
  std::unique_ptr<CURLU, UrlFree> url(curl_url());
  INFERBOX_CHECK(url != nullptr);
  if (curl_url_set(url.get(), CURLUPART_URL, std::string(text).c_str(), CURLU_PATH_AS_IS) !=
      CURLUE_OK) {
    return invalid("is not an absolute URL");
  }
  UrlParts parts;
  parts.scheme = Lower(GetPart(url.get(), CURLUPART_SCHEME).value_or(""));
  if (parts.scheme != "http" && parts.scheme != "https") return invalid("is not http or https");
  if (GetPart(url.get(), CURLUPART_USER) || GetPart(url.get(), CURLUPART_PASSWORD)) {
    return invalid("carries credentials; configure them on the mirror side, not in the URL");
  }
  if (GetPart(url.get(), CURLUPART_QUERY)) return invalid("has a query ('?')");
  if (GetPart(url.get(), CURLUPART_FRAGMENT)) return invalid("has a fragment ('#')");
  parts.host = Lower(GetPart(url.get(), CURLUPART_HOST).value_or(""));
  if (parts.host.empty()) return invalid("has no host");
  parts.port = GetPart(url.get(), CURLUPART_PORT, CURLU_DEFAULT_PORT).value_or("");
  parts.path = GetPart(url.get(), CURLUPART_PATH).value_or("/");
  if (!parts.path.starts_with('/')) parts.path = "/" + parts.path;
  for (size_t start = 1; start < parts.path.size();) {
    const size_t slash = std::min(parts.path.find('/', start), parts.path.size());
    if (!IsPlainSegment(std::string_view(parts.path).substr(start, slash - start))) {
      return invalid("has a \".\" or \"..\" path segment (or an encoded one)");
    }
    start = slash + 1;
  }
  if (!parts.path.ends_with('/')) parts.path += '/';
  return parts;
}

}  // namespace

Status CheckMirrorPrefix(std::string_view prefix) {
  auto parsed = ParseUrl(prefix, "mirror prefix");
  return parsed.ok() ? Status::Ok() : parsed.status();
}

Status CheckMirrorUrl(std::string_view url, const std::vector<std::string>& allowed_prefixes) {
  auto parts = ParseUrl(url, "mirror URL");
  if (!parts.ok()) return parts.status();
  for (const std::string& prefix : allowed_prefixes) {
    auto allowed = ParseUrl(prefix, "mirror prefix");
    if (!allowed.ok()) continue;
    if (allowed->scheme == parts->scheme && allowed->host == parts->host &&
        allowed->port == parts->port && parts->path.starts_with(allowed->path)) {
      return Status::Ok();
    }
  }
  return Status(StatusCode::kPermissionDenied,
                fmt::format("mirror URL \"{}\" is not under any allow-listed mirror prefix ({}); "
                            "an administrator adds prefixes to the box's configuration",
                            url.substr(0, 200),
                            allowed_prefixes.empty()
                                ? "none is configured"
                                : fmt::format("{} configured", allowed_prefixes.size())));
}

}  // namespace inferbox::provisioning
