// X.509 as a verifier checks it (vtm_attest): loading certificates from outside, chains to
// configured trust anchors, issuer signatures, and the host CA's TPM2_Certify evidence
// extension (that the CA key lives in the TPM of a given AK). The CA (vtm_ca) issues what
// this reads and uses the same code to check what it issues. Parsers refuse malformed input
// with kInvalidArgument and are fuzzed. Stateless; thread-safe.
#pragma once

#include <openssl/x509.h>
#include <tss2/tss2_tpm2_types.h>

#include <ctime>
#include <string>
#include <string_view>
#include <vector>

#include "vtm/error.h"
#include "vtm/ossl_ptr.h"

namespace vtm::attest {

using X509Ptr = OsslPtr<X509, X509_free>;

// Evidence that a key lives in a TPM: TPM2_Certify of the key by an AK.
struct CertifyEvidence {
  std::string key_tpm2b_public;  // TPM2B_PUBLIC of the certified key (its SPKI must match)
  std::string attest;            // marshalled TPMS_ATTEST (type TPM_ST_ATTEST_CERTIFY)
  std::string signature;         // marshalled TPMT_SIGNATURE by the AK
  std::string ak_tpm2b_public;   // TPM2B_PUBLIC of the AK
};

// OID of the certify-evidence extension: a UUID-based OID (ITU-T X.667, arc 2.25), so no
// registration is needed: 2.25.161903665352114240259760733551990330810. ASN.1 in ca/README.md:
//   SEQUENCE { version INTEGER (1), keyPublic OCTET STRING, attest OCTET STRING,
//              signature OCTET STRING, akPublic OCTET STRING }
extern const char* const kCertifyEvidenceOid;
// Certificate policy OID that marks certificates whose key vtm did NOT create in a vTPM it
// provisioned (the swtpm_setup create_certs tool path issues EK certificates for whatever
// public key it is given): 2.25.175342463645521248098509356622530514097. A verifier refuses
// a certificate carrying it as a vTPM EK certificate. Never change it.
extern const char* const kUnprovisionedKeyPolicyOid;

// A certificate from DER or PEM (the first CERTIFICATE block of PEM text); DER must not be
// followed by other bytes.
Result<X509Ptr> LoadCertificate(std::string_view der_or_pem);
// Every certificate of PEM text (or one DER certificate).
Result<std::vector<X509Ptr>> LoadCertificates(std::string_view der_or_pem);

// The certificate's SubjectPublicKeyInfo (DER).
Result<std::string> CertificateSpki(X509* cert);
// The certificate's URI subjectAltNames.
std::vector<std::string> CertificateUris(X509* cert);
// Whether the certificate's certificatePolicies extension names oid (dotted text).
bool HasCertificatePolicy(X509* cert, const char* oid);

// cert_der was signed by issuer_der's key (signature check only).
Status VerifySignedBy(const std::string& cert_der, const std::string& issuer_der);
// cert chains to one of anchors through intermediates (RFC 5280 path validation by OpenSSL,
// at time `at`; purpose not checked: EK certificates carry no TLS purposes).
Status VerifyChain(X509* cert, const std::vector<X509*>& intermediates, const std::vector<X509*>& anchors,
                   std::time_t at);

// Strict DER decoding of the extension's value: no trailing bytes, version 1, no empty field,
// and the four fields unmarshal as TPM2B_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE, TPM2B_PUBLIC.
Result<CertifyEvidence> DecodeCertifyEvidence(std::string_view der);
// The four fields unmarshal exactly. Proves nothing about signatures or names.
Status CheckEvidenceStructure(const CertifyEvidence& evidence);
// Extracts and structurally checks the certify-evidence extension (kNotFound if absent).
Result<CertifyEvidence> ExtractCertifyEvidence(const std::string& cert_der_or_pem);
// What a verified TPM2_Certify says: the certified key's public area and the attestation
// (qualifying data in attest.extraData, for the caller to compare).
struct CertifiedKey {
  TPMT_PUBLIC key{};
  TPMS_ATTEST attest{};
};
// Verifies that evidence proves key_tpm2b_public lives in the TPM of that AK: the AK is a
// restricted signing key and its signature over attest verifies, attest is a
// TPM_ST_ATTEST_CERTIFY with magic TPM_GENERATED whose certified name is the TPM name of
// key_tpm2b_public, and the key is fixedTPM|sensitiveDataOrigin. kDataLoss (bad signature) /
// kInvalidArgument with what failed. For evidence that stands without a certificate (the
// migration import key); trust in the AK is the caller's to establish.
Result<CertifiedKey> VerifyCertifiedKey(const CertifyEvidence& evidence);
// Verifies that evidence proves the certificate's key lives in the TPM of that AK:
// the AK's signature over attest, attest is a TPM_ST_ATTEST_CERTIFY with magic TPM_GENERATED,
// the certified name equals the TPM name of key_tpm2b_public, and that public key equals the
// certificate's SPKI; also that the AK is restricted and the key fixedTPM|sensitiveDataOrigin
// (VerifyCertifiedKey, then the SPKI).
// kDataLoss (bad signature) / kInvalidArgument with what failed. Trust in the AK itself (its
// binding to the host EK) is the caller's to establish.
Status VerifyCertifyEvidence(const std::string& cert_der_or_pem, const CertifyEvidence& evidence);

}  // namespace vtm::attest
