// Keeping secrets out of what the box writes down for people (audit events, support
// bundles): one notion of what looks secret, shared by every place that redacts.
#pragma once

#include <string>
#include <string_view>

namespace inferbox {

// What replaces a secret.
inline constexpr std::string_view kRedacted = "[redacted]";

// True for a field or key name that names a secret: one of its snake_case (or kebab-case)
// words is secret, token, password, passphrase, credential(s) or it holds "private_key".
// "tokens_per_minute" is not a secret.
bool IsSecretName(std::string_view name);

// Replaces the credentials of URLs in `text`: the user information
// ("https://user:password@host" -> "https://[redacted]@host") and the query string
// ("?sig=..." -> "?[redacted]"), which often carries signed tokens.
void RedactUrlCredentials(std::string& text);

}  // namespace inferbox
