// TPM structures checked without a TPM, for verifiers of what a TPM produced (the CA checking
// TPM2_Certify evidence) and for the Tpm class itself: reading marshalled structures, TPM
// names, public areas as X.509 keys, and TPMT_SIGNATUREs. Unlike tpm.h and host_tpm.h this
// header speaks TSS2 and OpenSSL types, so code that includes it links PkgConfig::TSS2 and
// OpenSSL::Crypto itself.
#pragma once

#include <openssl/types.h>
#include <tss2/tss2_tpm2_types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "vtm/error.h"

namespace vtm {

// How reading a blob as one TPM structure went: the tss2-mu return code and, when it
// unmarshalled, how many bytes were left after it.
struct UnmarshalOutcome {
  TSS2_RC rc = TSS2_RC_SUCCESS;
  size_t trailing = 0;
};

// Unmarshals the T at the start of blob into *out. The caller decides what a failure or
// leftover bytes mean and words the error for its context (the host TPM reports its own blobs
// as corrupt, the CA reports outside evidence as malformed).
template <typename T, TSS2_RC (*Unmarshal)(const uint8_t[], size_t, size_t*, T*)>
UnmarshalOutcome UnmarshalInto(const std::string& blob, T* out) {
  size_t offset = 0;
  UnmarshalOutcome outcome;
  outcome.rc = Unmarshal(reinterpret_cast<const uint8_t*>(blob.data()), blob.size(), &offset, out);
  if (outcome.rc == TSS2_RC_SUCCESS) outcome.trailing = blob.size() - offset;
  return outcome;
}

// The OpenSSL digest of a TPM hash algorithm (SHA-1, SHA-256, SHA-384, SHA-512); nullptr for
// any other algorithm id.
const EVP_MD* DigestForTpmAlg(TPM2_ALG_ID alg);

// The TPM name of an object: name_alg (2 bytes, big-endian) || H_name_alg(marshalled TPMT_PUBLIC).
// kInvalidArgument for a name algorithm DigestForTpmAlg does not know.
Result<std::string> TpmNameOf(TPM2_ALG_ID name_alg, std::string_view marshalled_tpmt_public);

// The DER SubjectPublicKeyInfo of a public area: ECC NIST P-256/P-384/P-521 or RSA. The key
// passes OpenSSL's public-key check (an EC point lies on its curve). kInvalidArgument for other
// key types and curves, kDataLoss for a malformed key.
Result<std::string> SpkiFromTpmt(const TPMT_PUBLIC& area);

// The DER ECDSA-Sig-Value that X.509 and OpenSSL expect, from the TPM's (r, s).
Result<std::string> EcdsaSignatureDer(const TPMS_SIGNATURE_ECDSA& signature);

// Whether signature (ECDSA, RSASSA or RSAPSS, with the hash it names) is key's signature over
// signed_data: false for a signature that does not verify, including one of the wrong kind for
// the key; an Error for a key or signature that cannot be checked at all.
Result<bool> VerifyTpmSignature(const TPMT_PUBLIC& key, const TPMT_SIGNATURE& signature, std::string_view signed_data);

}  // namespace vtm
