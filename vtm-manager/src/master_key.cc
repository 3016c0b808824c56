// Sealing/unsealing of the master key and AES-256-GCM key wrapping.
#include "master_key.h"

#include <string_view>

#include "vtm/aes_gcm.h"
#include "vtm/fs.h"
#include "vtm/log.h"

namespace vtm {
namespace {
constexpr char kMagic[] = "VTMK";
constexpr size_t kMagicLen = 4;
constexpr uint8_t kVersion = 1;
constexpr size_t kKeyLen = kAesGcmKeySize;
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
  auto sealed = AesGcmSeal(key_, key.data(), key.size(), aad);
  if (!sealed.ok()) return std::move(sealed).error().Context("wrapping a key for " + aad);
  std::string out(kMagic, kMagicLen);
  out.push_back(static_cast<char>(kVersion));
  out += sealed->iv;
  out += sealed->ciphertext;
  out += sealed->tag;
  return out;
}

Result<SecretBytes> MasterKey::Unwrap(const std::string& wrapped, const std::string& aad) const {
  const size_t header = kMagicLen + 1 + kAesGcmIvSize;
  if (wrapped.size() <= header + kAesGcmTagSize || wrapped.compare(0, kMagicLen, kMagic) != 0) {
    return Error(ErrorCode::kDataLoss, "wrapped key for " + aad + " is malformed");
  }
  if (static_cast<uint8_t>(wrapped[kMagicLen]) != kVersion) {
    return Error(ErrorCode::kDataLoss, "wrapped key for " + aad + " has unknown version " +
                                           std::to_string(static_cast<uint8_t>(wrapped[kMagicLen])));
  }
  const std::string_view all(wrapped);
  const size_t ct_len = wrapped.size() - header - kAesGcmTagSize;
  auto key = AesGcmOpen(key_, all.substr(kMagicLen + 1, kAesGcmIvSize), all.substr(header, ct_len),
                        all.substr(header + ct_len), aad);
  if (!key.ok()) {
    return Error(ErrorCode::kDataLoss, "wrapped key for " + aad +
                                           " fails authentication: it was altered or belongs to another master key");
  }
  return key;
}

}  // namespace vtm
