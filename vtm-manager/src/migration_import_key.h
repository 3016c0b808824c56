// The destination's side of sealed migration in its host TPM: a fresh import key under the SRK
// (KeyRole::kImport: restricted decryption, fixedTPM|fixedParent), certified by the host AK for
// one migration (qualifying data = migration::ImportKeyQualifying), and the activation of the
// credential a source made to it, which yields the package's transport key. The source checks
// the key with migration::VerifyImportKey. docs/migration.md, "The sealed package and the import
// key".
//
// Thread safety: both functions may be called from any thread; every TPM command goes through
// the AK's HostTpmExecutor.
#pragma once

#include <string>

#include "host_attestation_key.h"
#include "vtm/error.h"
#include "vtm/secret.h"
#include "vtm/tpm.h"

namespace vtm {

struct ImportKey {
  // What re-derives the key for the activation: tpm2b_public, and in tpm2b_private the 32-byte
  // unique value of its primary template (not secret: only this TPM's owner seed derives the key).
  TpmKeyBlob blob;
  TpmKeyPublic pub;         // what the source wraps to (pub.tpm2b_public) and the package names (pub.name)
  TpmAttestation certify;   // TPM2_Certify of the key by the host AK
};

// A fresh import key (an owner-hierarchy primary with a random unique value), certified (TPM2_Certify) by the host AK with qualifying
// data migration::ImportKeyQualifying(migration_id, source_nonce). One host-TPM job.
Result<ImportKey> CreateImportKey(HostAttestationKey& ak, const std::string& migration_id,
                                  const std::string& source_nonce);

// Re-derives the key from blob and activates credential with it (the key is both the
// activated object and the decryption key): the package's transport key. kDataLoss (the TPM's
// integrity checks) for a blob of another TPM (TPM2_Load refuses it) and for a credential made
// to another key or altered (TPM2_ActivateCredential refuses it). One host-TPM job.
Result<SecretBytes> ActivateWithImportKey(HostAttestationKey& ak, const TpmKeyBlob& blob,
                                          const TpmCredential& credential);

}  // namespace vtm
