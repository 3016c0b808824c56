// The certify-evidence extension of the host CA certificate: a TPM2_Certify of the CA key by
// the host AK, carried as DER (EncodeCertifyEvidence/DecodeCertifyEvidence) and verified with
// tss2-mu (unmarshalling) and OpenSSL (hashes, signatures). All of it parses outside data.
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <tss2/tss2_mu.h>

#include <cstdio>
#include <cstring>

#include "der.h"
#include "internal.h"
#include "openssl_util.h"
#include "vtm/x509.h"

namespace vtm::ca {

// 2.25.<UUID 79cd8300-21de-42a6-9d17-30cc9146d5ba as an integer>: generated once for vtm
// (ITU-T X.667), so no registration is needed. Never change it: verifiers look for it.
const char* const kCertifyEvidenceOid = "2.25.161903665352114240259760733551990330810";

namespace {

constexpr uint64_t kEvidenceVersion = 1;

using ParamBldPtr = OsslPtr<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>;
using ParamPtr = OsslPtr<OSSL_PARAM, OSSL_PARAM_free>;

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

// Unmarshals one TPM structure that must fill `bytes` exactly.
template <typename T, TSS2_RC (*Unmarshal)(const uint8_t*, size_t, size_t*, T*)>
Status UnmarshalExactly(const std::string& bytes, T* out, const char* what) {
  size_t offset = 0;
  const TSS2_RC rc = Unmarshal(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), &offset, out);
  if (rc != TSS2_RC_SUCCESS) {
    return Error(ErrorCode::kInvalidArgument, std::string(what) + " does not unmarshal (TSS2 rc " + Hex(rc) + ")");
  }
  if (offset != bytes.size()) {
    return Error(ErrorCode::kInvalidArgument,
                 std::string(what) + " has " + std::to_string(bytes.size() - offset) + " trailing bytes");
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

const EVP_MD* DigestOf(TPMI_ALG_HASH alg) {
  switch (alg) {
    case TPM2_ALG_SHA1:
      return EVP_sha1();
    case TPM2_ALG_SHA256:
      return EVP_sha256();
    case TPM2_ALG_SHA384:
      return EVP_sha384();
    case TPM2_ALG_SHA512:
      return EVP_sha512();
    default:
      return nullptr;
  }
}

Result<std::string> Digest(TPMI_ALG_HASH alg, const std::string& data, const char* what) {
  const EVP_MD* md = DigestOf(alg);
  if (md == nullptr)
    return Error(ErrorCode::kInvalidArgument, std::string(what) + ": unsupported hash algorithm " + Hex(alg));
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), out, &len, md, nullptr) != 1)
    return OpenSslError(ErrorCode::kInternal, what);
  return std::string(reinterpret_cast<char*>(out), len);
}

Result<EvpPkeyPtr> FromParams(const char* type, OSSL_PARAM_BLD* bld, const char* what) {
  ParamPtr params(OSSL_PARAM_BLD_to_param(bld));
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* raw = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
    return OpenSslError(ErrorCode::kInvalidArgument, std::string(what) + " is not a valid public key");
  }
  EvpPkeyPtr key(raw);
  // fromdata does not check that an EC point is on the curve; an off-curve point must not be
  // used for verification.
  EvpPkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
  if (!check || EVP_PKEY_public_check(check.get()) != 1) {
    return OpenSslError(ErrorCode::kInvalidArgument, std::string(what) + " is not a valid public key");
  }
  return key;
}

// TPMT_PUBLIC (RSA or ECC) as an OpenSSL public key.
Result<EvpPkeyPtr> PublicKeyOf(const TPMT_PUBLIC& pub, const char* what) {
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld) return OpenSslError(ErrorCode::kInternal, "allocating key parameters");
  if (pub.type == TPM2_ALG_ECC) {
    const char* group = nullptr;
    size_t size = 0;
    switch (pub.parameters.eccDetail.curveID) {
      case TPM2_ECC_NIST_P256:
        group = "P-256";
        size = 32;
        break;
      case TPM2_ECC_NIST_P384:
        group = "P-384";
        size = 48;
        break;
      case TPM2_ECC_NIST_P521:
        group = "P-521";
        size = 66;
        break;
      default:
        return Error(ErrorCode::kInvalidArgument,
                     std::string(what) + ": unsupported ECC curve " + Hex(pub.parameters.eccDetail.curveID));
    }
    const TPM2B_ECC_PARAMETER& x = pub.unique.ecc.x;
    const TPM2B_ECC_PARAMETER& y = pub.unique.ecc.y;
    if (x.size > size || y.size > size)
      return Error(ErrorCode::kInvalidArgument, std::string(what) + ": ECC point larger than its curve");
    // Uncompressed SEC1 point; TPMs may drop leading zero bytes of a coordinate, so pad.
    std::string point(1 + 2 * size, '\0');
    point[0] = 0x04;
    std::memcpy(point.data() + 1 + (size - x.size), x.buffer, x.size);
    std::memcpy(point.data() + 1 + size + (size - y.size), y.buffer, y.size);
    if (OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) != 1 ||
        OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()) != 1) {
      return OpenSslError(ErrorCode::kInternal, "building an ECC key");
    }
    return FromParams("EC", bld.get(), what);
  }
  if (pub.type == TPM2_ALG_RSA) {
    const TPM2B_PUBLIC_KEY_RSA& n = pub.unique.rsa;
    if (n.size == 0) return Error(ErrorCode::kInvalidArgument, std::string(what) + ": empty RSA modulus");
    // exponent 0 means the TPM default, 2^16 + 1.
    const uint32_t exponent = pub.parameters.rsaDetail.exponent == 0 ? 65537 : pub.parameters.rsaDetail.exponent;
    BnPtr bn_n(BN_bin2bn(n.buffer, n.size, nullptr));
    BnPtr bn_e(BN_new());
    if (!bn_n || !bn_e || BN_set_word(bn_e.get(), exponent) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()) != 1) {
      return OpenSslError(ErrorCode::kInternal, "building an RSA key");
    }
    return FromParams("RSA", bld.get(), what);
  }
  return Error(ErrorCode::kInvalidArgument,
               std::string(what) + ": unsupported key type " + Hex(pub.type) + " (expected RSA or ECC)");
}

// True if sig is a valid signature by key over data; false for a wrong signature; an Error
// for a signature we cannot check at all.
Result<bool> VerifyTpmSignature(EVP_PKEY* key, const TPMT_SIGNATURE& sig, const std::string& data) {
  TPMI_ALG_HASH hash_alg = 0;
  std::string sig_der;
  int padding = 0;
  switch (sig.sigAlg) {
    case TPM2_ALG_ECDSA: {
      const TPMS_SIGNATURE_ECC& ecc = sig.signature.ecdsa;
      hash_alg = ecc.hash;
      EcdsaSigPtr ecdsa(ECDSA_SIG_new());
      BIGNUM* r = BN_bin2bn(ecc.signatureR.buffer, ecc.signatureR.size, nullptr);
      BIGNUM* s = BN_bin2bn(ecc.signatureS.buffer, ecc.signatureS.size, nullptr);
      if (!ecdsa || r == nullptr || s == nullptr || ECDSA_SIG_set0(ecdsa.get(), r, s) != 1) {
        BN_free(r);
        BN_free(s);
        return OpenSslError(ErrorCode::kInternal, "converting an ECDSA signature");
      }
      VTM_ASSIGN_OR_RETURN(sig_der, (ToDer<ECDSA_SIG, i2d_ECDSA_SIG>(ecdsa.get(), "an ECDSA signature")));
      if (!EVP_PKEY_is_a(key, "EC")) return false;
      break;
    }
    case TPM2_ALG_RSASSA:
    case TPM2_ALG_RSAPSS: {
      const TPMS_SIGNATURE_RSA& rsa = sig.sigAlg == TPM2_ALG_RSASSA ? sig.signature.rsassa : sig.signature.rsapss;
      hash_alg = rsa.hash;
      sig_der.assign(reinterpret_cast<const char*>(rsa.sig.buffer), rsa.sig.size);
      padding = sig.sigAlg == TPM2_ALG_RSASSA ? RSA_PKCS1_PADDING : RSA_PKCS1_PSS_PADDING;
      if (!EVP_PKEY_is_a(key, "RSA")) return false;
      break;
    }
    default:
      return Error(ErrorCode::kInvalidArgument,
                   "evidence: unsupported signature scheme " + Hex(sig.sigAlg) + " (expected ECDSA, RSASSA or RSAPSS)");
  }
  VTM_ASSIGN_OR_RETURN(std::string digest, Digest(hash_alg, data, "evidence: the signature"));
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr));
  if (!ctx || EVP_PKEY_verify_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_signature_md(ctx.get(), DigestOf(hash_alg)) != 1) {
    return OpenSslError(ErrorCode::kInternal, "preparing a signature check");
  }
  if (padding != 0) {
    if (EVP_PKEY_CTX_set_rsa_padding(ctx.get(), padding) != 1) return OpenSslError(ErrorCode::kInternal, "RSA padding");
    // TPMs differ in the PSS salt length they use (digest size or maximum): accept either.
    if (padding == RSA_PKCS1_PSS_PADDING && EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx.get(), RSA_PSS_SALTLEN_AUTO) != 1) {
      return OpenSslError(ErrorCode::kInternal, "RSA-PSS salt length");
    }
  }
  const int rc = EVP_PKEY_verify(ctx.get(), reinterpret_cast<const unsigned char*>(sig_der.data()), sig_der.size(),
                                 reinterpret_cast<const unsigned char*>(digest.data()), digest.size());
  ERR_clear_error();
  return rc == 1;
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
  VTM_ASSIGN_OR_RETURN(EvpPkeyPtr ak, PublicKeyOf(p.ak.publicArea, "evidence: the AK public key"));
  VTM_ASSIGN_OR_RETURN(bool signed_by_ak, VerifyTpmSignature(ak.get(), p.signature, evidence.attest));
  if (!signed_by_ak) {
    return Error(ErrorCode::kDataLoss,
                 "evidence: the AK's signature over attest does not verify (attest was altered, or "
                 "another AK signed it)");
  }

  // TPM name = nameAlg (big-endian) || H_nameAlg(marshalled TPMT_PUBLIC).
  const TPMI_ALG_HASH name_alg = p.key.publicArea.nameAlg;
  VTM_ASSIGN_OR_RETURN(std::string public_hash,
                       Digest(name_alg, evidence.key_tpm2b_public.substr(2), "evidence: the key's nameAlg"));
  std::string name;
  name += static_cast<char>(name_alg >> 8);
  name += static_cast<char>(name_alg & 0xff);
  name += public_hash;
  const TPM2B_NAME& certified = p.attest.attested.certify.name;
  if (name.size() != certified.size || std::memcmp(name.data(), certified.name, name.size()) != 0) {
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
  VTM_ASSIGN_OR_RETURN(EvpPkeyPtr key, PublicKeyOf(p.key.publicArea, "evidence: the certified key"));
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
