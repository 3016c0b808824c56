// TPM2_MakeCredential without a TPM (TPM 2.0 Part 1, 24 "Credential Protection"; Part 1
// Annex B.10.4 / C.6.4 for the seed): a remote verifier wraps a secret to a host's EK for the
// name of the key it wants bound to that EK (the host AK). Only the TPM holding both the EK and
// an object of that name recovers the secret with TPM2_ActivateCredential, so a verifier that
// gets its secret back knows the AK lives in the TPM of the EK whose certificate it checked.
// EKs: ECC (the TCG default templates' curves) or RSA, each with its symmetric definition
// (AES-CFB) and nameAlg from its public area. Stateless; thread-safe.
#pragma once

#include <openssl/types.h>

#include <string>
#include <string_view>

#include "vtm/error.h"
#include "vtm/secret.h"

namespace vtm::attest {

struct MadeCredential {
  std::string id_object;         // marshalled TPM2B_ID_OBJECT
  std::string encrypted_secret;  // marshalled TPM2B_ENCRYPTED_SECRET
};

// ek_tpm2b_public: the EK's marshalled TPM2B_PUBLIC (a restricted decryption key);
// object_name: the TPM name of the key to bind (nameAlg || digest); secret: 1..digest-size
// bytes of the EK's nameAlg. kInvalidArgument for anything else.
Result<MadeCredential> MakeCredential(std::string_view ek_tpm2b_public, std::string_view secret,
                                      std::string_view object_name);

// TPM2_ActivateCredential computed in software by the holder of an ECC decryption key's private
// part (private_key; key_tpm2b_public its public area, with the symmetric definition and
// nameAlg MakeCredential used): for tests without a TPM and for checking MakeCredential against
// the TPM's algorithm. kDataLoss for a credential that fails its integrity check (made to
// another key or name, or altered); kInvalidArgument for malformed input.
Result<SecretBytes> ActivateCredentialInSoftware(EVP_PKEY* private_key, std::string_view key_tpm2b_public,
                                                 std::string_view id_object, std::string_view encrypted_secret,
                                                 std::string_view object_name);

}  // namespace vtm::attest
