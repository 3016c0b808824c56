// The certify-evidence extension of the host CA certificate: a TPM2_Certify of the CA key by
// the host AK, carried as DER (EncodeCertifyEvidence/DecodeCertifyEvidence) and verified with
// host-tpm's TPM-structure helpers (unmarshalling, TPM names, keys, signatures). All of it
// parses outside data.
#include <openssl/err.h>
#include <tss2/tss2_mu.h>

#include <cstdio>
#include <cstring>

#include "der.h"
#include "internal.h"
#include "openssl_util.h"
#include "vtm/tpm_structures.h"
#include "vtm/x509.h"

namespace vtm::ca {

// 2.25.<UUID 79cd8300-21de-42a6-9d17-30cc9146d5ba as an integer>: generated once for vtm
// (ITU-T X.667), so no registration is needed. Never change it: verifiers look for it.
const char* const kCertifyEvidenceOid = "2.25.161903665352114240259760733551990330810";

namespace {

constexpr uint64_t kEvidenceVersion = 1;

struct ParsedEvidence {
  TPM2B_PUBLIC key{};
  TPMS_ATTEST attest{};
  TPMT_SIGNATURE signature{};
  TPM2B_PUBLIC ak{};
};

std::string Hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%x", v);
  return buf;
}

// Unmarshals one TPM structure that must fill `bytes` exactly. Evidence comes from outside, so
// failures are kInvalidArgument and name the evidence field.
template <typename T, TSS2_RC (*Unmarshal)(const uint8_t[], size_t, size_t*, T*)>
Status UnmarshalExactly(const std::string& bytes, T* out, const char* what) {
  const UnmarshalOutcome outcome = UnmarshalInto<T, Unmarshal>(bytes, out);
  if (outcome.rc != TSS2_RC_SUCCESS) {
    return Error(ErrorCode::kInvalidArgument,
                 std::string(what) + " does not unmarshal (TSS2 rc " + Hex(outcome.rc) + ")");
  }
  if (outcome.trailing != 0) {
    return Error(ErrorCode::kInvalidArgument,
                 std::string(what) + " has " + std::to_string(outcome.trailing) + " trailing bytes");
  }
  return OkStatus();
}

Status UnmarshalPublic(const std::string& bytes, TPM2B_PUBLIC* out, const char* what) {
  VTM_RETURN_IF_ERROR((UnmarshalExactly<TPM2B_PUBLIC, Tss2_MU_TPM2B_PUBLIC_Unmarshal>(bytes, out, what)));
  // The name is hashed over these bytes, so the size field must cover exactly the rest.
  if (out->size != bytes.size() - 2) {
    return Error(ErrorCode::kInvalidArgument, std::string(what) + ": TPM2B size does not match its content");
  }
  return OkStatus();
}

Result<ParsedEvidence> ParseEvidence(const CertifyEvidence& e) {
  ParsedEvidence p;
  VTM_RETURN_IF_ERROR(UnmarshalPublic(e.key_tpm2b_public, &p.key, "evidence: the key's TPM2B_PUBLIC"));
  VTM_RETURN_IF_ERROR(
      (UnmarshalExactly<TPMS_ATTEST, Tss2_MU_TPMS_ATTEST_Unmarshal>(e.attest, &p.attest, "evidence: the TPMS_ATTEST")));
  VTM_RETURN_IF_ERROR((UnmarshalExactly<TPMT_SIGNATURE, Tss2_MU_TPMT_SIGNATURE_Unmarshal>(
      e.signature, &p.signature, "evidence: the AK's TPMT_SIGNATURE")));
  VTM_RETURN_IF_ERROR(UnmarshalPublic(e.ak_tpm2b_public, &p.ak, "evidence: the AK's TPM2B_PUBLIC"));
  return p;
}

// The certified key as the certificate would carry it, for comparison with the certificate's key.
Result<EvpPkeyPtr> CertifiedKey(const TPMT_PUBLIC& area) {
  auto spki = SpkiFromTpmt(area);
  if (!spki.ok()) return std::move(spki).error().Context("evidence: the certified key");
  return PublicKeyFromSpki(*spki, "evidence: the certified key");
}

}  // namespace

std::string EncodeCertifyEvidence(const CertifyEvidence& e) {
  return der::Tlv(der::kSequence, der::Integer(kEvidenceVersion) + der::Tlv(der::kOctetString, e.key_tpm2b_public) +
                                      der::Tlv(der::kOctetString, e.attest) + der::Tlv(der::kOctetString, e.signature) +
                                      der::Tlv(der::kOctetString, e.ak_tpm2b_public));
}

Result<CertifyEvidence> DecodeCertifyEvidence(std::string_view data) {
  der::Reader outer(data);
  VTM_ASSIGN_OR_RETURN(std::string_view body, outer.Read(der::kSequence, "certify evidence"));
  if (!outer.empty()) {
    return Error(ErrorCode::kInvalidArgument,
                 "certify evidence: " + std::to_string(outer.remaining()) + " trailing bytes after the SEQUENCE");
  }
  der::Reader fields(body);
  VTM_ASSIGN_OR_RETURN(uint64_t version, fields.ReadSmallInteger("certify evidence version"));
  if (version != kEvidenceVersion) {
    return Error(ErrorCode::kInvalidArgument,
                 "certify evidence: unsupported version " + std::to_string(version) + " (this vtm reads 1)");
  }
  CertifyEvidence e;
  struct Field {
    std::string* out;
    const char* name;
  };
  for (Field f :
       {Field{&e.key_tpm2b_public, "certify evidence keyPublic"}, Field{&e.attest, "certify evidence attest"},
        Field{&e.signature, "certify evidence signature"}, Field{&e.ak_tpm2b_public, "certify evidence akPublic"}}) {
    VTM_ASSIGN_OR_RETURN(std::string_view v, fields.Read(der::kOctetString, f.name));
    if (v.empty()) return Error(ErrorCode::kInvalidArgument, std::string(f.name) + " is empty");
    f.out->assign(v);
  }
  if (!fields.empty()) {
    return Error(ErrorCode::kInvalidArgument,
                 "certify evidence: " + std::to_string(fields.remaining()) + " unexpected bytes after the last field");
  }
  return e;
}

Status CheckEvidenceStructure(const CertifyEvidence& evidence) {
  VTM_RETURN_IF_ERROR(ParseEvidence(evidence));
  return OkStatus();
}

Result<CertifyEvidence> ExtractCertifyEvidence(const std::string& cert_der_or_pem) {
  VTM_ASSIGN_OR_RETURN(X509Ptr x, LoadCertificate(cert_der_or_pem));
  Asn1ObjectPtr oid(OBJ_txt2obj(kCertifyEvidenceOid, 1));
  if (!oid) return OpenSslError(ErrorCode::kInternal, "the certify-evidence OID");
  const int index = X509_get_ext_by_OBJ(x.get(), oid.get(), -1);
  if (index < 0) {
    return Error(ErrorCode::kNotFound,
                 std::string("the certificate has no certify-evidence extension (") + kCertifyEvidenceOid + ")");
  }
  if (X509_get_ext_by_OBJ(x.get(), oid.get(), index) >= 0) {
    return Error(ErrorCode::kInvalidArgument, "the certificate has more than one certify-evidence extension");
  }
  const ASN1_OCTET_STRING* value = X509_EXTENSION_get_data(X509_get_ext(x.get(), index));
  std::string_view der(reinterpret_cast<const char*>(ASN1_STRING_get0_data(value)),
                       static_cast<size_t>(ASN1_STRING_length(value)));
  VTM_ASSIGN_OR_RETURN(CertifyEvidence evidence, DecodeCertifyEvidence(der));
  VTM_RETURN_IF_ERROR(ParseEvidence(evidence));
  return evidence;
}

Status VerifyCertifyEvidence(const std::string& cert_der_or_pem, const CertifyEvidence& evidence) {
  auto cert = LoadCertificate(cert_der_or_pem);
  if (!cert.ok()) return std::move(cert).error().Context("the certificate");
  VTM_ASSIGN_OR_RETURN(ParsedEvidence p, ParseEvidence(evidence));

  if (p.attest.magic != TPM2_GENERATED_VALUE) {
    return Error(ErrorCode::kInvalidArgument,
                 "evidence: attest was not generated by a TPM (magic " + Hex(p.attest.magic) + ")");
  }
  if (p.attest.type != TPM2_ST_ATTEST_CERTIFY) {
    return Error(ErrorCode::kInvalidArgument,
                 "evidence: attest is not a TPM2_Certify result (type " + Hex(p.attest.type) + ")");
  }
  // Only a restricted key refuses to sign outside data that starts with TPM_GENERATED; an
  // unrestricted key's "attestation" could be forged by whoever may use that key.
  const TPMA_OBJECT ak_attrs = p.ak.publicArea.objectAttributes;
  if (!(ak_attrs & TPMA_OBJECT_RESTRICTED) || !(ak_attrs & TPMA_OBJECT_SIGN_ENCRYPT)) {
    return Error(ErrorCode::kInvalidArgument,
                 "evidence: the AK is not a restricted signing key, so its attestation proves nothing");
  }
  auto signed_by_ak = VerifyTpmSignature(p.ak.publicArea, p.signature, evidence.attest);
  if (!signed_by_ak.ok()) return std::move(signed_by_ak).error().Context("evidence: checking the AK's signature");
  if (!*signed_by_ak) {
    return Error(ErrorCode::kDataLoss,
                 "evidence: the AK's signature over attest does not verify (attest was altered, or "
                 "another AK signed it)");
  }

  // The name is hashed over the bytes as given (ParseEvidence checked that the TPM2B's size
  // covers exactly the TPMT_PUBLIC after it).
  auto name = TpmNameOf(p.key.publicArea.nameAlg, std::string_view(evidence.key_tpm2b_public).substr(2));
  if (!name.ok()) return std::move(name).error().Context("evidence: the key's nameAlg");
  const TPM2B_NAME& certified = p.attest.attested.certify.name;
  if (name->size() != certified.size || std::memcmp(name->data(), certified.name, name->size()) != 0) {
    return Error(ErrorCode::kInvalidArgument,
                 "evidence: the certified TPM name is not the name of keyPublic (the TPM2_Certify "
                 "was made for another key)");
  }
  // Residency: fixedTPM (cannot be duplicated out) and sensitiveDataOrigin (generated inside).
  const TPMA_OBJECT key_attrs = p.key.publicArea.objectAttributes;
  if (!(key_attrs & TPMA_OBJECT_FIXEDTPM) || !(key_attrs & TPMA_OBJECT_SENSITIVEDATAORIGIN)) {
    return Error(ErrorCode::kInvalidArgument,
                 "evidence: the certified key is not fixedTPM with sensitiveDataOrigin, so it "
                 "may exist outside the TPM");
  }
  VTM_ASSIGN_OR_RETURN(EvpPkeyPtr key, CertifiedKey(p.key.publicArea));
  EVP_PKEY* cert_key = X509_get0_pubkey(cert->get());
  if (cert_key == nullptr || EVP_PKEY_eq(cert_key, key.get()) != 1) {
    ERR_clear_error();
    return Error(ErrorCode::kInvalidArgument,
                 "evidence: the certified TPM key is not the certificate's public key (evidence "
                 "for another certificate)");
  }
  return OkStatus();
}

}  // namespace vtm::ca
