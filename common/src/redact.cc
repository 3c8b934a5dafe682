#include "inferbox/common/redact.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <string>

namespace inferbox {
namespace {

bool EndsUrlPart(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '"' || c == '\'';
}

}  // namespace

bool IsSecretName(std::string_view name) {
  constexpr std::array<std::string_view, 6> kSecretWords = {
      "secret", "token", "password", "passphrase", "credential", "credentials"};
  size_t start = 0;
  while (start <= name.size()) {
    const size_t end = std::min(name.find_first_of("_-", start), name.size());
    std::string word(name.substr(start, end - start));
    std::transform(word.begin(), word.end(), word.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (std::find(kSecretWords.begin(), kSecretWords.end(), word) != kSecretWords.end())
      return true;
    start = end + 1;
  }
  return name.find("private_key") != std::string_view::npos;
}

void RedactUrlCredentials(std::string& text) {
  for (size_t scheme_end = text.find("://"); scheme_end != std::string::npos;
       scheme_end = text.find("://", scheme_end + 3)) {
    const size_t authority = scheme_end + 3;
    size_t end = authority;
    while (end < text.size() && !EndsUrlPart(text[end]) && text[end] != '/' && text[end] != '?' &&
           text[end] != '#') {
      ++end;
    }
    const size_t at = text.rfind('@', end == 0 ? 0 : end - 1);
    if (at != std::string::npos && at >= authority && at < end) {
      text.replace(authority, at - authority, kRedacted);
      end = end - (at - authority) + kRedacted.size();
    }
    while (end < text.size() && !EndsUrlPart(text[end]) && text[end] != '?' && text[end] != '#')
      ++end;
    if (end < text.size() && text[end] == '?') {
      size_t query_end = end + 1;
      while (query_end < text.size() && !EndsUrlPart(text[query_end]) && text[query_end] != '#')
        ++query_end;
      if (query_end > end + 1) text.replace(end + 1, query_end - end - 1, kRedacted);
    }
  }
}

}  // namespace inferbox
