#include "signatures.h"

#include <array>
#include <cctype>

#include <fmt/format.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <spdlog/spdlog.h>

#include "inferbox/provisioning/bundle.h"

namespace inferbox::provisioning {
namespace {

constexpr size_t kSignatureBytes = 64;
constexpr size_t kSignatureBase64Chars = 88;  // 4 * ceil(64 / 3), with "==" padding.
constexpr size_t kPublicKeyBytes = 32;

struct PkeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
struct MdCtxFree {
  void operator()(EVP_MD_CTX* context) const { EVP_MD_CTX_free(context); }
};
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;

enum class KeyKind { kPublic, kPrivate };

Result<Pkey> ReadEd25519Key(std::string_view pem, KeyKind kind) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), &BIO_free);
  INFERBOX_CHECK(bio != nullptr);
  Pkey key(kind == KeyKind::kPublic
               ? PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr)
               : PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  const std::string_view what = kind == KeyKind::kPublic ? "public" : "private";
  if (key == nullptr) {
    return InvalidArgumentError(fmt::format("not a PEM {} key", what));
  }
  if (EVP_PKEY_id(key.get()) != EVP_PKEY_ED25519) {
    return InvalidArgumentError(fmt::format(
        "the {} key is not ed25519 (openssl genpkey -algorithm ed25519 makes one)", what));
  }
  return key;
}

std::string Fingerprint(EVP_PKEY* key) {
  std::array<unsigned char, kPublicKeyBytes> raw{};
  size_t length = raw.size();
  INFERBOX_CHECK(EVP_PKEY_get_raw_public_key(key, raw.data(), &length) == 1 &&
                 length == raw.size());
  std::string text = "ed25519:";
  for (const unsigned char byte : raw) text += fmt::format("{:02x}", byte);
  return text;
}

Result<std::string> DecodeSignature(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back())))
    text.remove_suffix(1);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front())))
    text.remove_prefix(1);
  if (text.size() != kSignatureBase64Chars || !text.ends_with("==")) {
    return InvalidArgumentError("the signature is not 64 bytes in base64");
  }
  std::array<unsigned char, kSignatureBase64Chars> decoded{};
  const int length =
      EVP_DecodeBlock(decoded.data(), reinterpret_cast<const unsigned char*>(text.data()),
                      static_cast<int>(text.size()));
  // EVP_DecodeBlock counts the padding as zero bytes.
  if (length != static_cast<int>(kSignatureBytes + 2)) {
    return InvalidArgumentError("the signature is not valid base64");
  }
  return std::string(reinterpret_cast<const char*>(decoded.data()), kSignatureBytes);
}

}  // namespace

struct TrustedKeys::Key {
  Pkey key;
  std::string fingerprint;
};

TrustedKeys::~TrustedKeys() = default;

bool TrustedKeys::empty() const {
  return keys_.empty();
}

Result<std::unique_ptr<TrustedKeys>> TrustedKeys::Load(
    const std::vector<std::string>& public_keys_pem) {
  auto keys = std::unique_ptr<TrustedKeys>(new TrustedKeys());
  for (size_t i = 0; i < public_keys_pem.size(); ++i) {
    auto key = ReadEd25519Key(public_keys_pem[i], KeyKind::kPublic);
    if (!key.ok()) return key.status().WithContext(fmt::format("trusted key {}", i + 1));
    std::string fingerprint = Fingerprint(key->get());
    keys->keys_.push_back(Key{std::move(key).value(), std::move(fingerprint)});
  }
  return keys;
}

Result<std::string> TrustedKeys::Verify(std::string_view message,
                                        std::string_view signature) const {
  auto raw = DecodeSignature(signature);
  if (!raw.ok()) return raw.status();
  for (const Key& key : keys_) {
    MdCtx context(EVP_MD_CTX_new());
    INFERBOX_CHECK(context != nullptr);
    if (EVP_DigestVerifyInit(context.get(), nullptr, nullptr, nullptr, key.key.get()) != 1)
      continue;
    const int verified = EVP_DigestVerify(
        context.get(), reinterpret_cast<const unsigned char*>(raw->data()), raw->size(),
        reinterpret_cast<const unsigned char*>(message.data()), message.size());
    if (verified == 1) return key.fingerprint;
  }
  return InvalidArgumentError(fmt::format(
      "the signature over {} verifies with none of the box's {} trusted keys: the bundle was "
      "changed after signing, or its signer's public key is not in the box's keyring",
      kBundleManifestName, keys_.size()));
}

Result<std::string> CheckManifestSignatures(const TrustedKeys& keys, std::string_view manifest,
                                            const std::vector<std::string>& signatures,
                                            bool required) {
  if (required && keys.empty()) {
    return FailedPreconditionError(
        "a signature is required but the box has no trusted keys to check it with");
  }
  if (signatures.empty()) {
    if (required) {
      return Status(StatusCode::kPermissionDenied,
                    "the model is not signed, and this box requires a signature from a trusted key "
                    "(make a signed bundle with inferbox-bundle create --sign-key)");
    }
    return std::string();
  }
  if (keys.empty()) {
    spdlog::warn(
        "model manifest carries a signature, but the box has no trusted keys: "
        "installing it as unsigned");
    return std::string();
  }
  Status last_error;
  for (const std::string& signature : signatures) {
    auto signer = keys.Verify(manifest, signature);
    if (signer.ok()) return signer;
    last_error = signer.status();
  }
  return last_error;
}

Result<std::string> PublicKeyFingerprint(std::string_view public_key_pem) {
  auto key = ReadEd25519Key(public_key_pem, KeyKind::kPublic);
  if (!key.ok()) return key.status();
  return Fingerprint(key->get());
}

Result<std::string> SignEd25519(std::string_view message, std::string_view private_key_pem) {
  auto key = ReadEd25519Key(private_key_pem, KeyKind::kPrivate);
  if (!key.ok()) return key.status();
  MdCtx context(EVP_MD_CTX_new());
  INFERBOX_CHECK(context != nullptr);
  std::array<unsigned char, kSignatureBytes> signature{};
  size_t length = signature.size();
  if (EVP_DigestSignInit(context.get(), nullptr, nullptr, nullptr, key->get()) != 1 ||
      EVP_DigestSign(context.get(), signature.data(), &length,
                     reinterpret_cast<const unsigned char*>(message.data()), message.size()) != 1 ||
      length != signature.size()) {
    return InternalError("ed25519 signing failed in OpenSSL");
  }
  std::array<unsigned char, kSignatureBase64Chars + 1> encoded{};
  const int chars = EVP_EncodeBlock(encoded.data(), signature.data(), static_cast<int>(length));
  return std::string(reinterpret_cast<const char*>(encoded.data()), static_cast<size_t>(chars));
}

}  // namespace inferbox::provisioning
