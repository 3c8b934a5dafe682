#include "test_certificates.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

#include <gtest/gtest.h>

#include "subprocess.h"

namespace inferbox::testing {
namespace {

// Its own openssl configuration, so that the distribution's defaults do not matter.
constexpr std::string_view kOpenSslConfig = R"([req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,IP:0:0:0:0:0:0:0:1,DNS:localhost
[client]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:admin.inferbox.test
)";

bool Run(std::vector<std::string> arguments, const std::filesystem::path& dir) {
  if (arguments.front() == "openssl") arguments.front() = OpenSslCommand();
  const CommandResult result = RunCommand(arguments, dir);
  if (result.exit_code == 0) return true;
  std::string line;
  for (const std::string& argument : arguments) line += argument + " ";
  ADD_FAILURE() << "openssl failed (exit " << result.exit_code << "): " << line << "\n"
                << result.err;
  return false;
}

class Pki {
 public:
  explicit Pki(std::filesystem::path dir) : dir_(std::move(dir)), config_(dir_ / "openssl.cnf") {
    std::ofstream(config_) << kOpenSslConfig;
  }

  bool MakeCa(const std::string& name) {
    return Run({"openssl",
                "req",
                "-config",
                config_,
                "-x509",
                "-extensions",
                "ca",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-noenc",
                "-keyout",
                Path(name + ".key"),
                "-out",
                Path(name + ".crt"),
                "-days",
                "3",
                "-subj",
                "/CN=inferbox test " + name},
               dir_);
  }

  // `extensions`: "server" or "client".
  bool MakeLeaf(const std::string& name, const std::string& ca, const std::string& extensions,
                int serial) {
    return Run({"openssl", "req", "-config", config_, "-new", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:P-256", "-noenc", "-keyout", Path(name + ".key"), "-out",
                Path(name + ".csr"), "-subj", "/CN=" + name},
               dir_) &&
           Run({"openssl", "x509", "-req", "-in", Path(name + ".csr"), "-CA", Path(ca + ".crt"),
                "-CAkey", Path(ca + ".key"), "-set_serial", std::to_string(serial), "-days", "3",
                "-extfile", config_, "-extensions", extensions, "-out", Path(name + ".crt")},
               dir_);
  }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

 private:
  std::filesystem::path dir_;
  std::string config_;
};

}  // namespace

std::string OpenSslCommand() {
  const char* path = std::getenv("PATH");
  std::string_view rest = path != nullptr ? path : "/usr/bin:/bin";
  while (!rest.empty()) {
    const size_t colon = rest.find(':');
    const std::filesystem::path candidate =
        std::filesystem::path(rest.substr(0, colon)) / "openssl";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
    rest = colon == std::string_view::npos ? std::string_view() : rest.substr(colon + 1);
  }
  return "/usr/bin/openssl";
}

std::optional<TestCertificates> MakeTestCertificates(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  Pki pki(dir);
  if (!pki.MakeCa("server-ca") || !pki.MakeLeaf("server", "server-ca", "server", 2) ||
      !pki.MakeCa("client-ca") || !pki.MakeLeaf("client", "client-ca", "client", 3) ||
      !pki.MakeCa("rogue-ca") || !pki.MakeLeaf("rogue", "rogue-ca", "client", 4)) {
    return std::nullopt;
  }
  return TestCertificates{.ca = dir / "server-ca.crt",
                          .server_cert = dir / "server.crt",
                          .server_key = dir / "server.key",
                          .client_ca = dir / "client-ca.crt",
                          .client_cert = dir / "client.crt",
                          .client_key = dir / "client.key",
                          .rogue_cert = dir / "rogue.crt",
                          .rogue_key = dir / "rogue.key"};
}

std::string ReadTextFile(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace inferbox::testing
