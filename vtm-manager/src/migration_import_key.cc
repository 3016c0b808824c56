// The import key in the destination's host TPM: creation with its certification, activation.
#include "migration_import_key.h"

#include "vtm/migration_package.h"

namespace vtm {

Result<ImportKey> CreateImportKey(HostAttestationKey& ak, const std::string& migration_id,
                                  const std::string& source_nonce) {
  const std::string qualifying = migration::ImportKeyQualifying(migration_id, source_nonce);
  VTM_ASSIGN_OR_RETURN(SecretBytes random, RandomSecret(32));
  const std::string unique(reinterpret_cast<const char*>(random.data()), random.size());
  auto key = ak.executor().Run([&](Tpm& tpm) -> Result<ImportKey> {
    // A primary: with vtmd's AK and CA key loaded, a TPM with three transient slots has one
    // left, and a child of the SRK would need two (TPM2_Create takes a scratch slot).
    VTM_ASSIGN_OR_RETURN(TpmKey loaded, tpm.CreateImportPrimary(unique));
    ImportKey out;
    VTM_ASSIGN_OR_RETURN(out.pub, tpm.ReadPublic(loaded));
    out.blob.tpm2b_public = out.pub.tpm2b_public;
    out.blob.tpm2b_private = unique;
    VTM_ASSIGN_OR_RETURN(out.certify, ak.CertifyInJob(tpm, loaded, qualifying));
    return out;
  });
  if (!key.ok()) return std::move(key).error().Context("creating the migration import key for migration " + migration_id);
  return key;
}

Result<SecretBytes> ActivateWithImportKey(HostAttestationKey& ak, const TpmKeyBlob& blob,
                                          const TpmCredential& credential) {
  auto secret = ak.executor().Run([&](Tpm& tpm) -> Result<SecretBytes> {
    VTM_ASSIGN_OR_RETURN(TpmKey key, tpm.CreateImportPrimary(blob.tpm2b_private));
    VTM_ASSIGN_OR_RETURN(TpmKeyPublic pub, tpm.ReadPublic(key));
    if (pub.tpm2b_public != blob.tpm2b_public) {
      return Error(ErrorCode::kDataLoss,
                   "the import key re-derived in this host TPM is not the one the source sealed to (the TPM's owner "
                   "hierarchy was cleared, or the record belongs to another TPM)");
    }
    return tpm.ActivateCredentialWithKey(key, key, credential);
  });
  if (!secret.ok()) return std::move(secret).error().Context("opening the package's transport key with the import key");
  return secret;
}

}  // namespace vtm
