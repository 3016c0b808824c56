// The import key's qualifying data and the source's check of the destination's import key,
// over the one TPM2_Certify verifier in vtm_attest.
#include <openssl/crypto.h>

#include <cstdint>

#include "internal.h"
#include "vtm/certificates.h"
#include "vtm/digest.h"
#include "vtm/migration_package.h"
#include "vtm/tpm_structures.h"

namespace vtm::migration {
namespace {

// Never change: sources and destinations of different versions compute the same bytes.
constexpr char kImportKeyLabel[] = "vtm migration import key v1";

}  // namespace

namespace internal {

Status CheckImportKeyAttributes(const TPMT_PUBLIC& key) {
  const TPMA_OBJECT attrs = key.objectAttributes;
  constexpr TPMA_OBJECT kRequired = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                                    TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
  if ((attrs & kRequired) != kRequired || (attrs & TPMA_OBJECT_SIGN_ENCRYPT) != 0) {
    return Error(ErrorCode::kPermissionDenied,
                 "the destination's import key is not a restricted decryption key that is fixedTPM, fixedParent "
                 "and sensitiveDataOrigin (attributes " + TpmConstantHex(attrs) +
                     "): a package wrapped to it could be opened outside that TPM");
  }
  return OkStatus();
}

}  // namespace internal

std::string ImportKeyQualifying(const std::string& migration_id, const std::string& source_nonce) {
  std::string data = internal::Labelled(kImportKeyLabel);
  internal::AppendLengthPrefixed(data, migration_id);
  internal::AppendLengthPrefixed(data, source_nonce);
  return Sha256Digest(data);
}

Status VerifyImportKey(const std::string& import_tpm2b_public, const TpmAttestation& certify,
                       const std::string& ak_tpm2b_public, const std::string& expected_qualifying) {
  const attest::CertifyEvidence evidence{import_tpm2b_public, certify.attest, certify.signature, ak_tpm2b_public};
  auto certified = attest::VerifyCertifiedKey(evidence);
  if (!certified.ok()) return std::move(certified).error().Context("the destination's import key");
  VTM_RETURN_IF_ERROR(internal::CheckImportKeyAttributes(certified->key));
  const TPM2B_DATA& extra = certified->attest.extraData;
  if (extra.size != expected_qualifying.size() ||
      CRYPTO_memcmp(extra.buffer, expected_qualifying.data(), expected_qualifying.size()) != 0) {
    return Error(ErrorCode::kPermissionDenied,
                 "the destination's import key was certified for another migration or source nonce (the "
                 "TPM2_Certify's qualifying data differs): a replayed or foreign key; ask the destination to "
                 "prepare again");
  }
  return OkStatus();
}

}  // namespace vtm::migration
