// Declarations shared between vtm_ca's sources: loading certificates and the DER form of the
// certify-evidence extension. Internal to vtm_ca.
#pragma once

#include <string>
#include <string_view>

#include "openssl_util.h"
#include "vtm/x509.h"

namespace vtm::ca {

// A certificate from DER or PEM (the first certificate of a PEM file).
Result<X509Ptr> LoadCertificate(const std::string& der_or_pem);

// SEQUENCE { version INTEGER (1), keyPublic OCTET STRING, attest OCTET STRING,
//            signature OCTET STRING, akPublic OCTET STRING }
std::string EncodeCertifyEvidence(const CertifyEvidence& evidence);
// Strict inverse of EncodeCertifyEvidence: no trailing bytes, version 1, no empty field.
Result<CertifyEvidence> DecodeCertifyEvidence(std::string_view der);
// The four fields unmarshal as TPM2B_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE, TPM2B_PUBLIC, each
// filling its bytes exactly. Proves nothing about signatures or names.
Status CheckEvidenceStructure(const CertifyEvidence& evidence);

}  // namespace vtm::ca
