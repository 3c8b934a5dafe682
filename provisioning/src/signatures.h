// ed25519 signatures over bundle manifests (OpenSSL EVP_PKEY_ED25519). A signature travels
// as base64 of its 64 bytes, on one line.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "inferbox/common/status.h"

namespace inferbox::provisioning {

// The public keys a box trusts. Immutable once loaded: any thread may verify.
class TrustedKeys {
 public:
  // INVALID_ARGUMENT naming the key (by position) that is not an ed25519 public key in PEM.
  static Result<std::unique_ptr<TrustedKeys>> Load(const std::vector<std::string>& public_keys_pem);
  ~TrustedKeys();
  TrustedKeys(const TrustedKeys&) = delete;
  TrustedKeys& operator=(const TrustedKeys&) = delete;

  bool empty() const;

  // The fingerprint of the trusted key that `signature` verifies `message` with;
  // INVALID_ARGUMENT when the signature is malformed or verifies with none of them.
  Result<std::string> Verify(std::string_view message, std::string_view signature) const;

 private:
  struct Key;
  TrustedKeys() = default;
  std::vector<Key> keys_;
};

// The box's signature policy for one manifest and the signatures found with it (embedded,
// detached; each base64): who signed it, "" for accepted unsigned. A signature that no trusted
// key verifies is refused (INVALID_ARGUMENT) whether or not signatures are required: it means
// a tampered manifest or a signer the box does not know. When `required`: no signature is
// PERMISSION_DENIED, no trusted keys FAILED_PRECONDITION.
Result<std::string> CheckManifestSignatures(const TrustedKeys& keys, std::string_view manifest,
                                            const std::vector<std::string>& signatures,
                                            bool required);

// "ed25519:<hex of the raw public key>" of a public key PEM.
Result<std::string> PublicKeyFingerprint(std::string_view public_key_pem);

}  // namespace inferbox::provisioning
