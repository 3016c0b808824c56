// Declarations shared between vtm_ca's sources: loading certificates and the DER form of the
// certify-evidence extension. Internal to vtm_ca.
#pragma once

#include <string>
#include <string_view>

#include "openssl_util.h"
#include "vtm/x509.h"

namespace vtm::ca {

using attest::CheckEvidenceStructure;
using attest::DecodeCertifyEvidence;
using attest::LoadCertificate;

// SEQUENCE { version INTEGER (1), keyPublic OCTET STRING, attest OCTET STRING,
//            signature OCTET STRING, akPublic OCTET STRING }
std::string EncodeCertifyEvidence(const CertifyEvidence& evidence);
// Its strict inverse is attest::DecodeCertifyEvidence.

}  // namespace vtm::ca
