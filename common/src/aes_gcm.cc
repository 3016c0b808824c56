// AES-256-GCM over OpenSSL's EVP interface.
#include "vtm/aes_gcm.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "vtm/ossl_ptr.h"

namespace vtm {
namespace {

using CipherCtxPtr = OsslPtr<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free>;

// OpenSSL takes int lengths; vtm's messages are far smaller.
constexpr size_t kMaxMessage = size_t{1} << 30;

const uint8_t* Bytes(std::string_view s) { return reinterpret_cast<const uint8_t*>(s.data()); }

}  // namespace

Result<AesGcmCiphertext> AesGcmSeal(const SecretBytes& key, const uint8_t* plaintext, size_t size,
                                    std::string_view aad) {
  if (key.size() != kAesGcmKeySize) {
    return Error(ErrorCode::kInvalidArgument, "an AES-256-GCM key has 32 bytes, not " + std::to_string(key.size()));
  }
  if (size > kMaxMessage || aad.size() > kMaxMessage) {
    return Error(ErrorCode::kInvalidArgument, "an AES-256-GCM message or its associated data exceeds 1 GiB");
  }
  AesGcmCiphertext out;
  out.iv.resize(kAesGcmIvSize);
  if (RAND_bytes(reinterpret_cast<uint8_t*>(out.iv.data()), static_cast<int>(kAesGcmIvSize)) != 1) {
    return OpenSslError(ErrorCode::kInternal, "drawing an AES-GCM IV");
  }
  out.ciphertext.resize(size);
  out.tag.resize(kAesGcmTagSize);
  CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), Bytes(out.iv)) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, Bytes(aad), static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), reinterpret_cast<uint8_t*>(out.ciphertext.data()), &len, plaintext,
                        static_cast<int>(size)) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), nullptr, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, static_cast<int>(kAesGcmTagSize), out.tag.data()) != 1) {
    return OpenSslError(ErrorCode::kInternal, "AES-256-GCM encryption");
  }
  return out;
}

Result<SecretBytes> AesGcmOpen(const SecretBytes& key, std::string_view iv, std::string_view ciphertext,
                               std::string_view tag, std::string_view aad) {
  if (key.size() != kAesGcmKeySize || iv.size() != kAesGcmIvSize || tag.size() != kAesGcmTagSize) {
    return Error(ErrorCode::kInvalidArgument, "AES-256-GCM takes a 32-byte key, a 12-byte IV and a 16-byte tag");
  }
  if (ciphertext.size() > kMaxMessage || aad.size() > kMaxMessage) {
    return Error(ErrorCode::kInvalidArgument, "an AES-256-GCM message or its associated data exceeds 1 GiB");
  }
  SecretBytes plain(ciphertext.size());
  CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  if (!ctx || EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), Bytes(iv)) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, Bytes(aad), static_cast<int>(aad.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), plain.data(), &len, Bytes(ciphertext), static_cast<int>(ciphertext.size())) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, static_cast<int>(kAesGcmTagSize),
                          const_cast<char*>(tag.data())) != 1) {
    return OpenSslError(ErrorCode::kInternal, "AES-256-GCM decryption");
  }
  if (EVP_DecryptFinal_ex(ctx.get(), nullptr, &len) != 1) {
    return Error(ErrorCode::kDataLoss, "AES-256-GCM authentication failed");  // plain is wiped on return
  }
  return plain;
}

}  // namespace vtm
