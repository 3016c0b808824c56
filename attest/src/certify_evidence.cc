// X.509 for verifiers (see certificates.h): loading certificates, chains, issuer signatures,
// and the certify-evidence extension of the host CA certificate: a TPM2_Certify of the CA key
// by the host AK, decoded through OpenSSL's ASN.1 (strict DER: re-encoding must give the same
// bytes) and verified with the TPM-structure helpers. All of it parses outside data.
#include <openssl/asn1.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <tss2/tss2_mu.h>

#include <cstdio>
#include <cstring>

#include "vtm/certificates.h"
#include "vtm/tpm_structures.h"

namespace vtm::attest {

// 2.25.<UUID 79cd8300-21de-42a6-9d17-30cc9146d5ba as an integer>: generated once for vtm
// (ITU-T X.667), so no registration is needed. Never change it: verifiers look for it.
const char* const kCertifyEvidenceOid = "2.25.161903665352114240259760733551990330810";
// 2.25.<UUID 83e9bae9-857b-4085-8325-b0a2f6348cb1 as an integer>.
const char* const kUnprovisionedKeyPolicyOid = "2.25.175342463645521248098509356622530514097";

namespace {

constexpr long kEvidenceVersion = 1;

using BioPtr = OsslPtr<BIO, BIO_free_all>;
using Asn1ObjectPtr = OsslPtr<ASN1_OBJECT, ASN1_OBJECT_free>;
using StorePtr = OsslPtr<X509_STORE, X509_STORE_free>;
using StoreCtxPtr = OsslPtr<X509_STORE_CTX, X509_STORE_CTX_free>;

void FreeX509Stack(STACK_OF(X509) * s) { sk_X509_free(s); }
void FreeSequence(STACK_OF(ASN1_TYPE) * s) { sk_ASN1_TYPE_pop_free(s, ASN1_TYPE_free); }
void FreePolicies(CERTIFICATEPOLICIES* p) { sk_POLICYINFO_pop_free(p, POLICYINFO_free); }
void FreeNames(GENERAL_NAMES* n) { GENERAL_NAMES_free(n); }
using SequencePtr = OsslPtr<STACK_OF(ASN1_TYPE), FreeSequence>;
using PoliciesPtr = OsslPtr<CERTIFICATEPOLICIES, FreePolicies>;
using NamesPtr = OsslPtr<GENERAL_NAMES, FreeNames>;
using PkeyPtr = OsslPtr<EVP_PKEY, EVP_PKEY_free>;


struct ParsedEvidence {
  TPM2B_PUBLIC key{};
  TPMS_ATTEST attest{};
  TPMT_SIGNATURE signature{};
  TPM2B_PUBLIC ak{};
};

Result<ParsedEvidence> ParseEvidence(const CertifyEvidence& e) {
  ParsedEvidence p;
  VTM_ASSIGN_OR_RETURN(p.key, ParseTpm2bPublic(e.key_tpm2b_public, "evidence: the key's TPM2B_PUBLIC"));
  VTM_ASSIGN_OR_RETURN(SignedAttest signed_attest,
                       ParseSignedAttest(e.attest, e.signature, TPM2_ST_ATTEST_CERTIFY, "evidence"));
  p.attest = signed_attest.attest;
  p.signature = signed_attest.signature;
  VTM_ASSIGN_OR_RETURN(p.ak, ParseTpm2bPublic(e.ak_tpm2b_public, "evidence: the AK's TPM2B_PUBLIC"));
  return p;
}

Result<PkeyPtr> KeyFromSpki(const std::string& spki, const char* what) {
  const auto* p = reinterpret_cast<const unsigned char*>(spki.data());
  PkeyPtr key(d2i_PUBKEY(nullptr, &p, static_cast<long>(spki.size())));
  if (!key) return OpenSslError(ErrorCode::kInvalidArgument, std::string(what) + " is not a valid public key");
  return key;
}

}  // namespace

Result<X509Ptr> LoadCertificate(std::string_view der_or_pem) {
  // Far above any certificate vtm handles, and keeps sizes within OpenSSL's int lengths.
  constexpr size_t kMaxCertificateSize = 1 << 20;
  if (der_or_pem.empty()) return Error(ErrorCode::kInvalidArgument, "the certificate is empty");
  if (der_or_pem.size() > kMaxCertificateSize) {
    return Error(ErrorCode::kInvalidArgument, "the certificate is larger than 1 MiB");
  }
  ERR_clear_error();
  const bool has_pem = der_or_pem.find("-----BEGIN") != std::string_view::npos;
  // A DER certificate starts with a SEQUENCE tag; "-----BEGIN" could occur inside a DER
  // certificate's names, so the tag decides first.
  if (der_or_pem[0] == 0x30 || !has_pem) {
    const auto* begin = reinterpret_cast<const unsigned char*>(der_or_pem.data());
    const auto* p = begin;
    X509Ptr x(d2i_X509(nullptr, &p, static_cast<long>(der_or_pem.size())));
    if (x && p != begin + der_or_pem.size()) {
      return Error(
          ErrorCode::kInvalidArgument,
          "the DER certificate is followed by " + std::to_string(begin + der_or_pem.size() - p) + " unexpected bytes");
    }
    if (x) return x;
    if (!has_pem) {
      return OpenSslError(ErrorCode::kInvalidArgument,
                          "the data is neither a PEM nor a DER X.509 certificate (corrupt or truncated?)");
    }
    ERR_clear_error();
  }
  BioPtr bio(BIO_new_mem_buf(der_or_pem.data(), static_cast<int>(der_or_pem.size())));
  X509Ptr x(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr);
  if (!x) return OpenSslError(ErrorCode::kInvalidArgument, "the PEM text holds no valid CERTIFICATE block");
  return x;
}

Result<std::vector<X509Ptr>> LoadCertificates(std::string_view der_or_pem) {
  std::vector<X509Ptr> out;
  if (der_or_pem.find("-----BEGIN") == std::string_view::npos) {
    VTM_ASSIGN_OR_RETURN(X509Ptr one, LoadCertificate(der_or_pem));
    out.push_back(std::move(one));
    return out;
  }
  if (der_or_pem.size() > (1u << 24)) return Error(ErrorCode::kInvalidArgument, "PEM text larger than 16 MiB");
  BioPtr bio(BIO_new_mem_buf(der_or_pem.data(), static_cast<int>(der_or_pem.size())));
  while (bio) {
    X509Ptr x(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!x) break;
    out.push_back(std::move(x));
  }
  ERR_clear_error();
  if (out.empty()) return Error(ErrorCode::kInvalidArgument, "the PEM text holds no valid CERTIFICATE block");
  return out;
}

Result<std::string> CertificateSpki(X509* cert) {
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(X509_get0_pubkey(cert), &der);
  if (len <= 0) return OpenSslError(ErrorCode::kInvalidArgument, "the certificate's public key cannot be read");
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

std::vector<std::string> CertificateUris(X509* cert) {
  std::vector<std::string> uris;
  NamesPtr names(static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  for (int i = 0; names && i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
    if (name->type != GEN_URI) continue;
    const ASN1_IA5STRING* uri = name->d.uniformResourceIdentifier;
    uris.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                      static_cast<size_t>(ASN1_STRING_length(uri)));
  }
  ERR_clear_error();
  return uris;
}

bool HasCertificatePolicy(X509* cert, const char* oid) {
  PoliciesPtr policies(
      static_cast<CERTIFICATEPOLICIES*>(X509_get_ext_d2i(cert, NID_certificate_policies, nullptr, nullptr)));
  Asn1ObjectPtr wanted(OBJ_txt2obj(oid, 1));
  bool found = false;
  for (int i = 0; policies && wanted && i < sk_POLICYINFO_num(policies.get()); ++i) {
    if (OBJ_cmp(sk_POLICYINFO_value(policies.get(), i)->policyid, wanted.get()) == 0) found = true;
  }
  ERR_clear_error();
  return found;
}

Status VerifySignedBy(const std::string& cert_der, const std::string& issuer_der) {
  auto cert = LoadCertificate(cert_der);
  if (!cert.ok()) return std::move(cert).error().Context("the certificate");
  auto issuer = LoadCertificate(issuer_der);
  if (!issuer.ok()) return std::move(issuer).error().Context("the issuer certificate");
  EVP_PKEY* issuer_key = X509_get0_pubkey(issuer->get());
  if (issuer_key == nullptr) {
    return OpenSslError(ErrorCode::kInvalidArgument, "the issuer certificate's public key cannot be read");
  }
  if (X509_verify(cert->get(), issuer_key) != 1) {
    ERR_clear_error();
    return Error(ErrorCode::kInvalidArgument,
                 "the certificate's signature does not verify with the issuer certificate's key");
  }
  return OkStatus();
}

Status VerifyChain(X509* cert, const std::vector<X509*>& intermediates, const std::vector<X509*>& anchors,
                   std::time_t at) {
  if (anchors.empty()) return Error(ErrorCode::kFailedPrecondition, "no trusted CA certificate is configured");
  StorePtr store(X509_STORE_new());
  StoreCtxPtr ctx(X509_STORE_CTX_new());
  OsslPtr<STACK_OF(X509), FreeX509Stack> untrusted(sk_X509_new_null());
  if (!store || !ctx || !untrusted) return OpenSslError(ErrorCode::kInternal, "allocating a certificate store");
  for (X509* a : anchors) X509_STORE_add_cert(store.get(), a);
  for (X509* i : intermediates) sk_X509_push(untrusted.get(), i);
  if (X509_STORE_CTX_init(ctx.get(), store.get(), cert, untrusted.get()) != 1) {
    return OpenSslError(ErrorCode::kInternal, "setting up a chain check");
  }
  X509_STORE_CTX_set_time(ctx.get(), 0, at);
  if (X509_verify_cert(ctx.get()) != 1) {
    const int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return Error(ErrorCode::kFailedPrecondition,
                 std::string("the certificate does not chain to a trusted CA: ") + X509_verify_cert_error_string(err));
  }
  return OkStatus();
}

Result<CertifyEvidence> DecodeCertifyEvidence(std::string_view der) {
  const auto* begin = reinterpret_cast<const unsigned char*>(der.data());
  const auto* p = begin;
  SequencePtr fields(d2i_ASN1_SEQUENCE_ANY(nullptr, &p, static_cast<long>(der.size())));
  ERR_clear_error();
  if (!fields) return Error(ErrorCode::kInvalidArgument, "certify evidence: not a DER SEQUENCE (truncated or malformed)");
  const auto consumed = static_cast<size_t>(p - begin);
  if (consumed != der.size()) {
    return Error(ErrorCode::kInvalidArgument,
                 "certify evidence: " + std::to_string(der.size() - consumed) + " trailing bytes after the SEQUENCE");
  }
  // Strict DER: the canonical encoding of what was read must be the input itself.
  unsigned char* canonical = nullptr;
  const int len = i2d_ASN1_SEQUENCE_ANY(fields.get(), &canonical);
  const bool same = len > 0 && static_cast<size_t>(len) == der.size() && std::memcmp(canonical, der.data(), der.size()) == 0;
  OPENSSL_free(canonical);
  if (!same) return Error(ErrorCode::kInvalidArgument, "certify evidence: not canonical DER");
  const int n = sk_ASN1_TYPE_num(fields.get());
  if (n < 5) {
    return Error(ErrorCode::kInvalidArgument, "certify evidence: truncated (" + std::to_string(n) + " of 5 fields)");
  }
  if (n > 5) return Error(ErrorCode::kInvalidArgument, "certify evidence: unexpected fields after the last field");
  const ASN1_TYPE* version = sk_ASN1_TYPE_value(fields.get(), 0);
  if (version->type != V_ASN1_INTEGER) {
    return Error(ErrorCode::kInvalidArgument, "certify evidence: the version is not an INTEGER");
  }
  const long v = ASN1_INTEGER_get(version->value.integer);
  if (v != kEvidenceVersion) {
    return Error(ErrorCode::kInvalidArgument,
                 "certify evidence: unsupported version " + std::to_string(v) + " (this vtm reads 1)");
  }
  CertifyEvidence e;
  struct Field {
    std::string* out;
    const char* name;
  };
  const Field kFields[] = {{&e.key_tpm2b_public, "certify evidence keyPublic"},
                           {&e.attest, "certify evidence attest"},
                           {&e.signature, "certify evidence signature"},
                           {&e.ak_tpm2b_public, "certify evidence akPublic"}};
  for (int i = 0; i < 4; ++i) {
    const ASN1_TYPE* t = sk_ASN1_TYPE_value(fields.get(), i + 1);
    if (t->type != V_ASN1_OCTET_STRING) {
      return Error(ErrorCode::kInvalidArgument, std::string(kFields[i].name) + " is not an OCTET STRING");
    }
    const ASN1_OCTET_STRING* s = t->value.octet_string;
    if (ASN1_STRING_length(s) == 0) return Error(ErrorCode::kInvalidArgument, std::string(kFields[i].name) + " is empty");
    kFields[i].out->assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                           static_cast<size_t>(ASN1_STRING_length(s)));
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

Result<CertifiedKey> VerifyCertifiedKey(const CertifyEvidence& evidence) {
  VTM_ASSIGN_OR_RETURN(ParsedEvidence p, ParseEvidence(evidence));

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

  auto name = TpmNameOfPublic(evidence.key_tpm2b_public);
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
  return CertifiedKey{p.key.publicArea, p.attest};
}

Status VerifyCertifyEvidence(const std::string& cert_der_or_pem, const CertifyEvidence& evidence) {
  auto cert = LoadCertificate(cert_der_or_pem);
  if (!cert.ok()) return std::move(cert).error().Context("the certificate");
  VTM_ASSIGN_OR_RETURN(CertifiedKey certified, VerifyCertifiedKey(evidence));
  auto spki = SpkiFromTpmt(certified.key);
  if (!spki.ok()) return std::move(spki).error().Context("evidence: the certified key");
  VTM_ASSIGN_OR_RETURN(PkeyPtr key, KeyFromSpki(*spki, "evidence: the certified key"));
  EVP_PKEY* cert_key = X509_get0_pubkey(cert->get());
  if (cert_key == nullptr || EVP_PKEY_eq(cert_key, key.get()) != 1) {
    ERR_clear_error();
    return Error(ErrorCode::kInvalidArgument,
                 "evidence: the certified TPM key is not the certificate's public key (evidence "
                 "for another certificate)");
  }
  return OkStatus();
}

}  // namespace vtm::attest
