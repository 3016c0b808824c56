// TPM structures checked without a TPM (part of vtm_attest, the one appraisal library): for
// verifiers of what a TPM produced (the verifier, the CA checking TPM2_Certify evidence, the
// migration engine) and for the Tpm class itself: reading marshalled structures, TPM names,
// public areas as X.509 keys, and TPMT_SIGNATUREs. Built on tss2-mu and OpenSSL only (no
// ESAPI). This header speaks TSS2 and OpenSSL types, so code that includes it links
// PkgConfig::TSS2 and OpenSSL::Crypto itself. Stateless; every function is thread-safe.
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
UnmarshalOutcome UnmarshalInto(std::string_view blob, T* out) {
  size_t offset = 0;
  UnmarshalOutcome outcome;
  outcome.rc = Unmarshal(reinterpret_cast<const uint8_t*>(blob.data()), blob.size(), &offset, out);
  if (outcome.rc == TSS2_RC_SUCCESS) outcome.trailing = blob.size() - offset;
  return outcome;
}

// The kInvalidArgument error for outside bytes that did not unmarshal as one structure.
Error MalformedTpmStructure(const char* what, const UnmarshalOutcome& outcome);

// Unmarshals bytes from outside (evidence, certificates, files) that must hold exactly one T.
// kInvalidArgument naming `what` for bytes that do not unmarshal or leave bytes over.
template <typename T, TSS2_RC (*Unmarshal)(const uint8_t[], size_t, size_t*, T*)>
Result<T> ParseTpmStructure(std::string_view bytes, const char* what) {
  T value{};
  const UnmarshalOutcome outcome = UnmarshalInto<T, Unmarshal>(bytes, &value);
  if (outcome.rc != TSS2_RC_SUCCESS || outcome.trailing != 0) return MalformedTpmStructure(what, outcome);
  return value;
}

// "0x" and lower-case hex digits of a TPM constant (algorithm id, structure tag, magic, response
// code), for messages.
std::string TpmConstantHex(uint32_t value);

// A TPMS_ATTEST with the TPMT_SIGNATURE over it, as TPM2_Quote and TPM2_Certify return them.
struct SignedAttest {
  TPMS_ATTEST attest{};
  TPMT_SIGNATURE signature{};
};
// Unmarshals attest and signature from outside bytes (exactly one structure each) and checks
// that a TPM generated attest (magic TPM_GENERATED) as the result it claims to be: type
// TPM_ST_ATTEST_QUOTE or TPM_ST_ATTEST_CERTIFY. kInvalidArgument with a message that starts
// with context (e.g. "quote"). The signature itself is the caller's to check.
Result<SignedAttest> ParseSignedAttest(std::string_view attest, std::string_view signature, TPMI_ST_ATTEST type,
                                       const char* context);

// A marshalled TPM2B_PUBLIC from outside whose size field covers exactly the TPMT_PUBLIC after
// it (a TPM name is hashed over those bytes as given). kInvalidArgument naming `what`.
Result<TPM2B_PUBLIC> ParseTpm2bPublic(std::string_view bytes, const char* what);

// The OpenSSL digest of a TPM hash algorithm (SHA-1, SHA-256, SHA-384, SHA-512), fetched once
// per process; nullptr for any other algorithm id.
const EVP_MD* DigestForTpmAlg(TPM2_ALG_ID alg);

// H_alg(data) for a TPM hash algorithm DigestForTpmAlg knows; kInvalidArgument for others.
Result<std::string> TpmDigest(TPM2_ALG_ID alg, std::string_view data);

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

// The DER SubjectPublicKeyInfo of a marshalled TPM2B_PUBLIC (ECC NIST P-256/P-384/P-521 or
// RSA), for verifiers that hold a TPM public area but no TPM. kInvalidArgument for malformed
// bytes and other key types, kDataLoss for an invalid key.
Result<std::string> SpkiFromTpmPublic(std::string_view tpm2b_public);
// The TPM name of a marshalled TPM2B_PUBLIC: nameAlg (2 bytes) || nameAlg digest of the
// marshalled TPMT_PUBLIC. Lets a verifier check that a TPMS_ATTEST certifies a given key.
Result<std::string> TpmNameOfPublic(std::string_view tpm2b_public);

}  // namespace vtm
