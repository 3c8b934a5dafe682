// HTTP(S) mirrors of models, for boxes that may reach an internal file server. A mirror serves
// a bundle's contents unpacked under the model's URL, so any static file server does:
//
//   <url>/inferbox-bundle.json        the BundleManifest (required)
//   <url>/inferbox-bundle.json.sig    its detached ed25519 signature (optional; 404: none)
//   <url>/model/<path>                each file the manifest lists
//
// The box fetches only from allow-listed URL prefixes (R6.10: no request makes it fetch an
// arbitrary URL), follows no redirects, speaks only http and https, and resumes an
// interrupted file with an HTTP Range request on the next try.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "inferbox/common/status.h"

namespace inferbox::provisioning {

struct MirrorOptions {
  // Where models may be fetched from, e.g. "https://models.corp.example/inferbox/". Scheme,
  // host and port must match a URL's exactly and the URL's path must lie under the prefix's
  // path, taken as a folder. Empty: mirror installs are refused.
  std::vector<std::string> allowed_url_prefixes;
  // CA certificates (PEM) for https; empty: the system's.
  std::string ca_file;
  // Proxy URL; empty: none. Proxy environment variables are ignored.
  std::string proxy;
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(30)};
  // A transfer that moves less than 1 KiB/s for this long fails (UNAVAILABLE; a retry resumes).
  std::chrono::seconds stall_timeout{60};
};

// OK when `prefix` can be an allow-list entry: an absolute http(s) URL with a host and
// without credentials, query or fragment. INVALID_ARGUMENT otherwise.
Status CheckMirrorPrefix(std::string_view prefix);

// OK when `url` may be fetched: an http(s) URL without credentials, query or fragment, whose
// path has no "." or ".." segment (encoded or not), under one of `allowed_prefixes`.
// INVALID_ARGUMENT for a malformed URL, PERMISSION_DENIED for one outside the allow-list.
// Decides from the text alone: nothing is resolved or fetched.
Status CheckMirrorUrl(std::string_view url, const std::vector<std::string>& allowed_prefixes);

}  // namespace inferbox::provisioning
