// Sealing/unsealing of the master key and AES-256-GCM key wrapping.
#include "master_key.h"

#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <algorithm>
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

namespace {

Result<SealedObject> ReadSealed(const std::string& path) {
  VTM_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  auto sealed = SealedObject::Parse(bytes);
  if (!sealed.ok()) return std::move(sealed).error().Context("reading sealed master key " + path);
  return sealed;
}

std::string ResealAdvice(const std::string& sealed_path) {
  return "if the change was planned (a firmware or boot-chain update), the key had to be re-sealed to the new "
         "values before it with `vtmctl host reseal` (docs/operator-guide.md, \"Before a firmware update: "
         "re-seal\"): boot the host into the state the key was sealed to again (e.g. roll the firmware back), "
         "re-seal, then update; if it was not planned, investigate before anything else: the host's boot chain is "
         "not the one the key was sealed to. Do not delete " + sealed_path + ": without it the VMs' keys are lost";
}

}  // namespace

Result<MasterKey> MasterKey::LoadOrCreate(HostTpm& tpm, const std::string& sealed_path, const PcrSelection& pcrs) {
  const std::string prepared_path = PreparedPath(sealed_path);
  if (!PathExists(sealed_path)) {
    if (PathExists(prepared_path)) {
      // The sealed key was removed, but a re-sealed copy of it is here: never start over with a
      // new key (and so lose every VM's keys) while a sealed copy of the old one exists.
      return Error(ErrorCode::kFailedPrecondition,
                   sealed_path + " is missing but " + prepared_path + " (a re-sealed copy) exists; move it to " +
                       sealed_path + " and start again");
    }
    VTM_ASSIGN_OR_RETURN(SecretBytes key, RandomSecret(kKeyLen));
    VTM_ASSIGN_OR_RETURN(SealedObject sealed, tpm.Seal(key, pcrs));
    VTM_RETURN_IF_ERROR(WriteFileAtomic(sealed_path, sealed.Serialize(), 0600));
    LOG_INFO << "created a new master key sealed by the host TPM to PCRs " << pcrs.ToString() << " (" << sealed_path
             << ")";
    return MasterKey(std::move(key));
  }
  VTM_ASSIGN_OR_RETURN(SealedObject sealed, ReadSealed(sealed_path));
  auto key = tpm.Unseal(sealed);
  if (!key.ok() && key.error().code() == ErrorCode::kPolicyMismatch && PathExists(prepared_path)) {
    // The host's PCRs moved: perhaps to the values an operator re-sealed the key to before a
    // firmware update.
    Error current = std::move(key).error();
    auto prepared = ReadSealed(prepared_path);
    auto from_prepared = prepared.ok() ? tpm.Unseal(*prepared) : Result<SecretBytes>(prepared.error());
    if (!from_prepared.ok()) {
      return Error(ErrorCode::kPolicyMismatch,
                   "unsealing the master key: neither its copy nor the re-sealed one unseals. " + sealed_path + ": " +
                       current.message() + ". Re-sealed copy " + prepared_path + " (made by `vtmctl host reseal`): " +
                       from_prepared.error().message() + ". The host PCRs hold neither the values the key was sealed "
                       "to nor those given to `vtmctl host reseal`: boot the host into either state (e.g. the previous "
                       "firmware) and start vtmd again; to update, re-seal with the values the update really "
                       "produces first. If no such change was planned, investigate: the host's boot chain is not one "
                       "the key was sealed to. Keep both files: without them the VMs' keys are lost");
    }
    VTM_RETURN_IF_ERROR(RenameDurably(prepared_path, sealed_path));
    LOG_WARNING << "host PCRs " << prepared->pcrs_at_seal.selection.ToString()
                << " no longer hold the values the master key was sealed to (" << current.message()
                << "); they hold those it was re-sealed to by `vtmctl host reseal`: adopted the re-sealed copy ("
                << prepared_path << " is now " << sealed_path << ")";
    sealed = std::move(prepared).value();
    key = std::move(from_prepared);
  } else if (key.ok() && PathExists(prepared_path)) {
    LOG_INFO << "a re-sealed copy of the master key (" << prepared_path
             << ") waits for the planned change of host PCRs; the current copy still unseals and stays in use";
  }
  if (!key.ok()) {
    Error e = std::move(key).error();
    if (e.code() == ErrorCode::kPolicyMismatch) {
      return Error(e.code(), "unsealing the master key (" + sealed_path +
                                 "); the host is not in the state the key was sealed to: " + e.message() + "; " +
                                 ResealAdvice(sealed_path));
    }
    return std::move(e).Context("unsealing the master key (" + sealed_path + ")");
  }
  if (sealed.pcrs_at_seal.selection.ToString() != pcrs.ToString()) {
    VTM_ASSIGN_OR_RETURN(SealedObject resealed, tpm.Seal(*key, pcrs));
    VTM_RETURN_IF_ERROR(WriteFileAtomic(sealed_path, resealed.Serialize(), 0600));
    LOG_WARNING << "master key re-sealed from PCRs " << sealed.pcrs_at_seal.selection.ToString() << " to "
                << pcrs.ToString();
  }
  return MasterKey(std::move(key).value());
}

Result<PreparedReseal> MasterKey::PrepareReseal(HostTpm& tpm, const std::string& sealed_path,
                                                const PcrSelection& pcrs,
                                                const std::map<int, std::string>& expected) const {
  if (expected.empty()) {
    return Error(ErrorCode::kInvalidArgument,
                 "name the expected value of at least one PCR of " + pcrs.ToString() + " (--pcr N=HEX)");
  }
  for (const auto& [pcr, value] : expected) {
    if (std::find(pcrs.pcrs.begin(), pcrs.pcrs.end(), pcr) == pcrs.pcrs.end()) {
      return Error(ErrorCode::kInvalidArgument, "PCR " + std::to_string(pcr) +
                                                    " is not one the master key is sealed to (" + pcrs.ToString() +
                                                    ", vtmd --host-pcrs); its value does not matter to the key");
    }
  }
  VTM_ASSIGN_OR_RETURN(PcrValues now, tpm.ReadPcrs(pcrs));
  PreparedReseal out;
  out.expected = now;
  for (const auto& [pcr, value] : expected) {
    const size_t size = now.digests[pcr].size();
    if (value.size() != size) {
      return Error(ErrorCode::kInvalidArgument,
                   "the expected value of PCR " + now.selection.bank + ":" + std::to_string(pcr) + " has " +
                       std::to_string(value.size()) + " bytes (" + std::to_string(2 * value.size()) +
                       " hex digits); a " + now.selection.bank + " PCR holds " + std::to_string(size) + " (" +
                       std::to_string(2 * size) + " hex digits)");
    }
    if (value != now.digests[pcr]) out.changed.push_back(pcr);
    out.expected.digests[pcr] = value;
  }
  VTM_ASSIGN_OR_RETURN(SealedObject sealed, tpm.SealToPcrValues(key_, out.expected));
  out.path = PreparedPath(sealed_path);
  out.current_path = sealed_path;
  VTM_RETURN_IF_ERROR(WriteFileAtomic(out.path, sealed.Serialize(), 0600));
  LOG_WARNING << "master key re-sealed for a planned change of host PCRs to " << out.path << " (PCRs "
              << out.expected.selection.ToString() << ", " << out.changed.size()
              << " with new values); the current copy " << sealed_path << " stays in use until they change";
  return out;
}

Result<SecretBytes> MasterKey::DeriveAuth(const std::string& label) const {
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  EVP_KDF_CTX* ctx = kdf != nullptr ? EVP_KDF_CTX_new(kdf) : nullptr;
  EVP_KDF_free(kdf);
  if (ctx == nullptr) return Error(ErrorCode::kInternal, "OpenSSL has no HKDF");
  std::string info = "vtm host key auth v1: " + label;
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(key_.data()), key_.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info.size()),
      OSSL_PARAM_construct_end()};
  SecretBytes out(32);
  const int ok = EVP_KDF_derive(ctx, out.data(), out.size(), params);
  EVP_KDF_CTX_free(ctx);
  if (ok != 1) return Error(ErrorCode::kInternal, "HKDF failed deriving the auth value for " + label);
  return out;
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
