// X.509 for vtm's certificate authority: vTPM EK certificates per the TCG EK Credential
// Profile, AK/IK certificates naming the VM and the service, the host CA certificate with a
// TPM2_Certify proof that its key lives in the host TPM, CSRs for a fleet CA, and CRLs.
// Every signature is made by a Signer, so the CA key may live inside the host TPM (a TPM
// signing key) or be a software key sealed by the host TPM; this library never sees a
// TPM-resident private key. Parsers of outside data (certificates, CSRs, CRLs, the certify
// extension) refuse malformed input with kInvalidArgument/kDataLoss and are fuzzed.
#pragma once

#include <cstdint>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "vtm/certificates.h"
#include "vtm/error.h"
#include "vtm/secret.h"

namespace vtm::ca {

// Makes ECDSA P-256 signatures over SHA-256 digests.
class Signer {
 public:
  virtual ~Signer() = default;
  // DER ECDSA-Sig-Value over a 32-byte SHA-256 digest.
  virtual Result<std::string> SignDigest(const std::string& sha256_digest) = 0;
  // DER SubjectPublicKeyInfo of the signing key.
  virtual const std::string& PublicKeySpki() const = 0;
};

// A software P-256 key (the `sealed` CA residency mode, test manufacturer CAs, tests).
class SoftwareSigner : public Signer {
 public:
  static Result<std::unique_ptr<SoftwareSigner>> Generate();
  // From a DER PKCS#8 / EC private key.
  static Result<std::unique_ptr<SoftwareSigner>> FromPrivateKeyDer(const SecretBytes& der);
  SecretBytes PrivateKeyDer() const;
  Result<std::string> SignDigest(const std::string& sha256_digest) override;
  const std::string& PublicKeySpki() const override { return spki_; }
  ~SoftwareSigner() override;

 private:
  SoftwareSigner() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string spki_;
};

struct Validity {
  std::time_t not_before = 0;
  std::time_t not_after = 0;  // 0: 99991231235959Z (RFC 5280 "no well-defined expiration")
};

// The certify evidence and its checks are vtm_attest's (vtm/certificates.h): one appraisal
// library for the CA, vtmd and remote verifiers.
using attest::CertifyEvidence;
using attest::kCertifyEvidenceOid;
using attest::kUnprovisionedKeyPolicyOid;

// The host CA's own certificate: self-signed (subject == issuer), CA:TRUE, pathlen 0,
// keyCertSign|cRLSign, carrying the certify evidence as a non-critical extension.
// All-empty evidence (the `sealed` residency mode) leaves the extension out; evidence whose
// TPM structures do not parse is refused.
struct CaCertRequest {
  std::string common_name;  // e.g. "vtm host CA <hostname>"
  std::string organization = "vtm";
  uint64_t serial = 1;
  Validity validity;
  CertifyEvidence evidence;
};
Result<std::string> CreateSelfSignedCaCertificate(Signer& ca_key, const CaCertRequest& req);  // DER
// The same subject, key and extension as a PKCS#10 CSR, for an operator's fleet CA.
Result<std::string> CreateCaCsr(Signer& ca_key, const CaCertRequest& req);  // DER

// TCG EK Credential Profile certificate for a vTPM EK.
struct EkCertRequest {
  std::string ek_spki_der;
  bool rsa = false;              // keyEncipherment for RSA, keyAgreement for ECC
  std::string tpm_manufacturer;  // e.g. "id:00001014" (TPM_PT_MANUFACTURER as 8 hex digits)
  std::string tpm_model;         // e.g. "swtpm"
  std::string tpm_version;       // e.g. "id:20191023"
  uint64_t serial = 0;           // unique per issuer, positive (RFC 5280)
  Validity validity;
  // TPMSpecification in subjectDirectoryAttributes (tcg-at-tpmSpecification, 2.23.133.2.16):
  // family "2.0", level 0 and revision = TPM_PT_REVISION of the vTPM (159 for rev 1.59).
  std::string tpm_spec_family = "2.0";
  uint32_t tpm_spec_level = 0;
  uint32_t tpm_spec_revision = 159;
  // The key was not created by vtm in a vTPM it provisioned (swtpm_setup's certificate tool
  // asks for any public key): the certificate names kUnprovisionedKeyPolicyOid as its only
  // certificate policy instead of anyPolicy, so a verifier can refuse it as a vTPM EK.
  bool unprovisioned_key = false;
};
// issuer_cert_der: the CA certificate whose subject becomes the issuer.
Result<std::string> IssueEkCertificate(Signer& ca_key, const std::string& issuer_cert_der, const EkCertRequest& req);

// AK / IK certificate naming the VM (URI SAN urn:uuid:<vm>) and the service
// (URI SAN vtm:service:<name>); digitalSignature; subject CN = "<vm uuid> <role>".
struct IdentityCertRequest {
  std::string spki_der;
  std::string vm_uuid;
  std::string service;   // may be empty
  bool attestation_key;  // true: AK, false: IK
  uint64_t serial = 0;
  Validity validity;
};
Result<std::string> IssueIdentityCertificate(Signer& ca_key, const std::string& issuer_cert_der,
                                             const IdentityCertRequest& req);

// The TLS certificate of one of vtmd's network endpoints (the attestation service, later the
// migration channel): subject CN = "<host> vtmd <purpose>", URI SAN vtm:host:<host>,
// digitalSignature, serverAuth + clientAuth (a host is client and server between managers).
// Issued by the host CA at each vtmd start for a fresh key that never leaves vtmd's memory.
struct HostTlsCertRequest {
  std::string spki_der;
  std::string host_name;  // 1..64 characters of [A-Za-z0-9.-]
  std::string purpose;    // "attestation", "migration"
  uint64_t serial = 0;
  Validity validity;
};
Result<std::string> IssueHostTlsCertificate(Signer& ca_key, const std::string& issuer_cert_der,
                                            const HostTlsCertRequest& req);

struct RevokedCert {
  uint64_t serial;
  std::time_t revoked_at;
};
Result<std::string> CreateCrl(Signer& ca_key, const std::string& issuer_cert_der,
                              const std::vector<RevokedCert>& revoked, uint64_t crl_number, std::time_t this_update,
                              std::time_t next_update);  // DER

// Parsed facts about a certificate.
struct CertificateInfo {
  std::string subject;  // RFC 2253
  std::string issuer;
  // Serials vtm issues fit 64 bits; a fleet CA's (often 128-160 random bits) do not: then
  // serial is 0 and only serial_hex (upper-case hex, as `openssl x509 -serial` prints) names it.
  uint64_t serial = 0;
  std::string serial_hex;
  std::string spki_der;
  bool is_ca = false;
  std::vector<std::string> uris;  // URI SANs
  std::time_t not_after = 0;      // 0: 99991231235959Z, no well-defined expiration
};
// Accepts DER or PEM (the first CERTIFICATE block); kInvalidArgument with a clear message
// for anything else.
Result<CertificateInfo> ParseCertificate(const std::string& der_or_pem);
// kPermissionDenied unless cert names issuer as its issuer and carries issuer's signature (no
// other check: validity and chains are the caller's). `what` names cert in the message.
Status VerifyIssuedBy(const std::string& cert_der_or_pem, const std::string& issuer_der_or_pem, const std::string& what);
Result<std::string> CertificateToDer(const std::string& der_or_pem);
// The certificates of concatenated DER (e.g. HostCa::ca_chain_der()), in order; stops at the
// first bytes that are not a certificate.
std::vector<std::string> SplitDerCertificates(const std::string& concatenated);
std::string DerToPem(const std::string& der, const char* label = "CERTIFICATE");
// ExtractCertifyEvidence, VerifyCertifyEvidence (the evidence proves the certificate's key
// lives in the TPM of its AK) and VerifySignedBy: see vtm/certificates.h.
using attest::ExtractCertifyEvidence;
using attest::VerifyCertifyEvidence;
using attest::VerifySignedBy;

}  // namespace vtm::ca
