// Sealing/unsealing of the master key and AES-256-GCM key wrapping.
#include "master_key.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <memory>

#include "vtm/fs.h"
#include "vtm/log.h"

namespace vtm {
namespace {
constexpr char kMagic[] = "VTMK";
constexpr size_t kMagicLen = 4;
constexpr uint8_t kVersion = 1;
constexpr size_t kNonceLen = 12;
constexpr size_t kTagLen = 16;
constexpr size_t kKeyLen = 32;

using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)>;
}  // namespace

std::string WrapLabel(const std::string& vm_uuid, const std::string& purpose) {
  return "vtm:vm:" + vm_uuid + ":" + purpose;
}

Result<MasterKey> MasterKey::LoadOrCreate(HostTpm& tpm, const std::string& sealed_path, const PcrSelection& pcrs) {
  if (!PathExists(sealed_path)) {
    VTM_ASSIGN_OR_RETURN(SecretBytes key, RandomSecret(kKeyLen));
    VTM_ASSIGN_OR_RETURN(SealedObject sealed, tpm.Seal(key, pcrs));
    VTM_RETURN_IF_ERROR(WriteFileAtomic(sealed_path, sealed.Serialize(), 0600));
    LOG_INFO << "created a new master key sealed by the host TPM to PCRs " << pcrs.ToString() << " (" << sealed_path
             << ")";
    return MasterKey(std::move(key));
  }
  VTM_ASSIGN_OR_RETURN(std::string bytes, ReadFile(sealed_path));
  auto sealed = SealedObject::Parse(bytes);
  if (!sealed.ok()) return std::move(sealed).error().Context("reading sealed master key " + sealed_path);
  auto key = tpm.Unseal(*sealed);
  if (!key.ok()) {
    return std::move(key).error().Context("unsealing the master key (" + sealed_path +
                                          "); the host is not in the state the key was sealed to");
  }
  if (sealed->pcrs_at_seal.selection.ToString() != pcrs.ToString()) {
    VTM_ASSIGN_OR_RETURN(SealedObject resealed, tpm.Seal(*key, pcrs));
    VTM_RETURN_IF_ERROR(WriteFileAtomic(sealed_path, resealed.Serialize(), 0600));
    LOG_WARNING << "master key re-sealed from PCRs " << sealed->pcrs_at_seal.selection.ToString() << " to "
                << pcrs.ToString();
  }
  return MasterKey(std::move(key).value());
}

Result<std::string> MasterKey::Wrap(const SecretBytes& key, const std::string& aad) const {
  uint8_t nonce[kNonceLen];
  if (RAND_bytes(nonce, sizeof nonce) != 1) return Error(ErrorCode::kInternal, "random nonce failed");
  CipherCtx ctx(EVP_CIPHER_CTX_new(), EVP_CIPHER_CTX_free);
  std::string out(kMagic, kMagicLen);
  out.push_back(static_cast<char>(kVersion));
  out.append(reinterpret_cast<char*>(nonce), kNonceLen);
  std::string ct(key.size(), '\0');
  int len = 0;
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key_.data(), nonce) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const uint8_t*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), reinterpret_cast<uint8_t*>(ct.data()), &len, key.data(),
                        static_cast<int>(key.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), nullptr, &len) != 1) {
    return Error(ErrorCode::kInternal, "AES-256-GCM key wrap failed");
  }
  uint8_t tag[kTagLen];
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTagLen, tag) != 1) {
    return Error(ErrorCode::kInternal, "AES-256-GCM tag failed");
  }
  out += ct;
  out.append(reinterpret_cast<char*>(tag), kTagLen);
  return out;
}

Result<SecretBytes> MasterKey::Unwrap(const std::string& wrapped, const std::string& aad) const {
  const size_t header = kMagicLen + 1 + kNonceLen;
  if (wrapped.size() <= header + kTagLen || wrapped.compare(0, kMagicLen, kMagic) != 0) {
    return Error(ErrorCode::kDataLoss, "wrapped key for " + aad + " is malformed");
  }
  if (static_cast<uint8_t>(wrapped[kMagicLen]) != kVersion) {
    return Error(ErrorCode::kDataLoss, "wrapped key for " + aad + " has unknown version " +
                                           std::to_string(static_cast<uint8_t>(wrapped[kMagicLen])));
  }
  const auto* p = reinterpret_cast<const uint8_t*>(wrapped.data());
  size_t ct_len = wrapped.size() - header - kTagLen;
  SecretBytes out(ct_len);
  CipherCtx ctx(EVP_CIPHER_CTX_new(), EVP_CIPHER_CTX_free);
  int len = 0;
  uint8_t tag[kTagLen];
  std::copy(p + header + ct_len, p + header + ct_len + kTagLen, tag);
  if (!ctx || EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key_.data(), p + kMagicLen + 1) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const uint8_t*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), out.data(), &len, p + header, static_cast<int>(ct_len)) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTagLen, tag) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), nullptr, &len) != 1) {
    return Error(ErrorCode::kDataLoss, "wrapped key for " + aad +
                                           " fails authentication: it was altered or belongs to another master key");
  }
  return out;
}

}  // namespace vtm
