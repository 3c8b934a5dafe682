// A private PKI for TLS tests, made with the openssl command (ECDSA P-256, valid three days):
// a server CA and the server's certificate (127.0.0.1, ::1, localhost), a client CA and one
// client's certificate, and a client certificate from a CA the box does not trust.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace inferbox::testing {

struct TestCertificates {
  std::filesystem::path ca;  // Signed server_cert.
  std::filesystem::path server_cert;
  std::filesystem::path server_key;
  std::filesystem::path client_ca;  // Signed client_cert.
  std::filesystem::path client_cert;
  std::filesystem::path client_key;
  std::filesystem::path rogue_cert;  // Signed by a CA nobody trusts.
  std::filesystem::path rogue_key;
};

// Makes them under `dir`; nullopt (with a test failure saying what openssl printed) when the
// openssl command fails.
std::optional<TestCertificates> MakeTestCertificates(const std::filesystem::path& dir);

// The openssl command's path, found on PATH (RunCommand needs one).
std::string OpenSslCommand();

// The whole file; empty when it cannot be read.
std::string ReadTextFile(const std::filesystem::path& path);

}  // namespace inferbox::testing
