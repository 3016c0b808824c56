// Certificate, CSR and CRL issuance with signatures from a Signer (the CA key may be inside the
// host TPM), and parsing of certificates. OpenSSL builds each to-be-signed structure; this file
// signs its DER with the Signer and assembles the final SEQUENCE itself (SignWithSigner).
#include "vtm/x509.h"

#include <openssl/asn1.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>
#include <ctime>
#include <mutex>

#include "der.h"
#include "internal.h"
#include "openssl_util.h"

namespace vtm::ca {
namespace {

// TCG OIDs (TCG EK Credential Profile for TPM Family 2.0).
constexpr char kTcgAtTpmManufacturer[] = "2.23.133.2.1";
constexpr char kTcgAtTpmModel[] = "2.23.133.2.2";
constexpr char kTcgAtTpmVersion[] = "2.23.133.2.3";
constexpr char kTcgAtTpmSpecification[] = "2.23.133.2.16";
constexpr char kTcgKpEkCertificate[] = "2.23.133.8.1";
constexpr char kTcgKpAikCertificate[] = "2.23.133.8.3";  // TCG: the key is an attestation key
constexpr char kServerAuth[] = "1.3.6.1.5.5.7.3.1";
constexpr char kClientAuth[] = "1.3.6.1.5.5.7.3.2";
constexpr char kAnyPolicy[] = "2.5.29.32.0";
constexpr char kSubjectDirectoryAttributes[] = "2.5.29.9";

// AlgorithmIdentifier { ecdsa-with-SHA256 } with absent parameters (RFC 5758 3.2); the same
// bytes OpenSSL puts in the to-be-signed part when signing with a P-256 key and SHA-256.
constexpr char kEcdsaWithSha256[] = "\x30\x0a\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02";

using BasicConstraintsPtr = OsslPtr<BASIC_CONSTRAINTS, BASIC_CONSTRAINTS_free>;
using AuthorityKeyIdPtr = OsslPtr<AUTHORITY_KEYID, AUTHORITY_KEYID_free>;
using BitStringPtr = OsslPtr<ASN1_BIT_STRING, ASN1_BIT_STRING_free>;
using GeneralNamePtr = OsslPtr<GENERAL_NAME, GENERAL_NAME_free>;
using X509RevokedPtr = OsslPtr<X509_REVOKED, X509_REVOKED_free>;
void FreeEku(EXTENDED_KEY_USAGE* eku) { sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free); }
using EkuPtr = OsslPtr<EXTENDED_KEY_USAGE, FreeEku>;
void FreeExtensions(STACK_OF(X509_EXTENSION) * exts) { sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free); }
using ExtensionStackPtr = OsslPtr<STACK_OF(X509_EXTENSION), FreeExtensions>;

// ---- Signing with a Signer ------------------------------------------------------------------

// OpenSSL only fills in a structure's signature AlgorithmIdentifiers when it signs it itself,
// so each object is first signed with this throwaway key; that signature is discarded.
EVP_PKEY* PlaceholderKey() {
  static EvpPkeyPtr* key = new EvpPkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  return key->get();
}

// What SignWithSigner needs to know about each signed structure.
template <typename T>
struct SignedObject;
template <>
struct SignedObject<X509> {
  static constexpr const char* kName = "certificate";
  static int PlaceholderSign(X509* x, EVP_PKEY* k) { return X509_sign(x, k, EVP_sha256()); }
  static int TbsDer(X509* x, unsigned char** out) { return i2d_re_X509_tbs(x, out); }
  static X509* Parse(const unsigned char** p, long n) { return d2i_X509(nullptr, p, n); }
  static int Verify(X509* x, EVP_PKEY* k) { return X509_verify(x, k); }
  static void Free(X509* x) { X509_free(x); }
};
template <>
struct SignedObject<X509_REQ> {
  static constexpr const char* kName = "certificate signing request";
  static int PlaceholderSign(X509_REQ* x, EVP_PKEY* k) { return X509_REQ_sign(x, k, EVP_sha256()); }
  static int TbsDer(X509_REQ* x, unsigned char** out) { return i2d_re_X509_REQ_tbs(x, out); }
  static X509_REQ* Parse(const unsigned char** p, long n) { return d2i_X509_REQ(nullptr, p, n); }
  static int Verify(X509_REQ* x, EVP_PKEY* k) { return X509_REQ_verify(x, k); }
  static void Free(X509_REQ* x) { X509_REQ_free(x); }
};
template <>
struct SignedObject<X509_CRL> {
  static constexpr const char* kName = "CRL";
  static int PlaceholderSign(X509_CRL* x, EVP_PKEY* k) { return X509_CRL_sign(x, k, EVP_sha256()); }
  static int TbsDer(X509_CRL* x, unsigned char** out) { return i2d_re_X509_CRL_tbs(x, out); }
  static X509_CRL* Parse(const unsigned char** p, long n) { return d2i_X509_CRL(nullptr, p, n); }
  static int Verify(X509_CRL* x, EVP_PKEY* k) { return X509_CRL_verify(x, k); }
  static void Free(X509_CRL* x) { X509_CRL_free(x); }
};

// Signs obj's to-be-signed DER with the Signer and returns the final DER
//   SEQUENCE { tbs, AlgorithmIdentifier ecdsa-with-SHA256, BIT STRING signature },
// which is the shape of Certificate, CertificationRequest and CertificateList alike. The result
// is parsed back and its signature verified with the Signer's public key before it is returned,
// so a Signer that signs with another key (or returns a malformed signature) is caught here.
template <typename T>
Result<std::string> SignWithSigner(Signer& signer, T* obj) {
  using Ops = SignedObject<T>;
  EVP_PKEY* placeholder = PlaceholderKey();
  if (placeholder == nullptr || Ops::PlaceholderSign(obj, placeholder) <= 0) {
    return OpenSslError(ErrorCode::kInternal, std::string("preparing the ") + Ops::kName + " for signing");
  }
  unsigned char* buf = nullptr;
  const int len = Ops::TbsDer(obj, &buf);
  if (len <= 0) return OpenSslError(ErrorCode::kInternal, std::string("encoding the ") + Ops::kName);
  const std::string tbs(reinterpret_cast<char*>(buf), static_cast<size_t>(len));
  OPENSSL_free(buf);

  auto signature = signer.SignDigest(Sha256(tbs));
  if (!signature.ok()) return std::move(signature).error().Context(std::string("signing the ") + Ops::kName);
  const std::string bit_string = std::string(1, '\0') + *signature;  // no unused bits
  const std::string der = der::Tlv(der::kSequence, tbs + std::string(kEcdsaWithSha256, sizeof kEcdsaWithSha256 - 1) +
                                                       der::Tlv(der::kBitString, bit_string));

  VTM_ASSIGN_OR_RETURN(EvpPkeyPtr ca_public, PublicKeyFromSpki(signer.PublicKeySpki(), "the CA key's public key"));
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  OsslPtr<T, Ops::Free> parsed(Ops::Parse(&p, static_cast<long>(der.size())));
  if (!parsed || p != reinterpret_cast<const unsigned char*>(der.data()) + der.size()) {
    return OpenSslError(ErrorCode::kInternal, std::string("the signed ") + Ops::kName +
                                                  " does not parse (is the CA key's signature a DER ECDSA-Sig-Value?)");
  }
  if (Ops::Verify(parsed.get(), ca_public.get()) != 1) {
    return OpenSslError(ErrorCode::kInternal, std::string("the CA key's signature on the ") + Ops::kName +
                                                  " does not verify with its public key (is it a P-256 key signing "
                                                  "the given SHA-256 digest?)");
  }
  return der;
}

// ---- Field helpers ---------------------------------------------------------------------------

Status CheckUtf8Text(const std::string& value, const char* what) {
  if (value.empty() || value.size() > 256) {
    return Error(ErrorCode::kInvalidArgument, std::string(what) + " must be 1-256 bytes");
  }
  ASN1_STRING* checked = nullptr;
  if (ASN1_mbstring_copy(&checked, reinterpret_cast<const unsigned char*>(value.data()), static_cast<int>(value.size()),
                         MBSTRING_UTF8, B_ASN1_UTF8STRING) < 0) {
    ERR_clear_error();
    return Error(ErrorCode::kInvalidArgument, std::string(what) + " is not valid UTF-8");
  }
  ASN1_STRING_free(checked);
  return OkStatus();
}

Status CheckVmUuid(const std::string& uuid) {
  bool ok = uuid.size() == 36;
  for (size_t i = 0; ok && i < uuid.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    ok = dash ? uuid[i] == '-' : std::isxdigit(static_cast<unsigned char>(uuid[i])) != 0;
  }
  if (!ok)
    return Error(ErrorCode::kInvalidArgument,
                 "VM UUID '" + uuid + "' is not of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx");
  return OkStatus();
}

Status CheckServiceName(const std::string& name) {
  // The manager's rule for names; every such character is also unreserved in a URI.
  bool ok = !name.empty() && name.size() <= 64 && name[0] != '-';
  for (char c : name) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-');
  if (!ok) {
    return Error(ErrorCode::kInvalidArgument,
                 "service name '" + name + "' must be 1-64 letters, digits, '.', '_' or '-' and not start with '-'");
  }
  return OkStatus();
}

Result<Asn1TimePtr> TimeOf(std::time_t t) {
  Asn1TimePtr out(ASN1_TIME_set(nullptr, t));  // UTCTime before 2050, GeneralizedTime after (RFC 5280)
  if (!out) return OpenSslError(ErrorCode::kInvalidArgument, "time " + std::to_string(t) + " cannot be encoded");
  return out;
}

Status SetValidity(X509* x, const Validity& v) {
  if (v.not_after != 0 && v.not_after <= v.not_before) {
    return Error(ErrorCode::kInvalidArgument, "validity: not_after must be later than not_before");
  }
  VTM_ASSIGN_OR_RETURN(Asn1TimePtr not_before, TimeOf(v.not_before));
  Asn1TimePtr not_after;
  if (v.not_after == 0) {
    not_after.reset(ASN1_TIME_new());
    if (!not_after || ASN1_GENERALIZEDTIME_set_string(not_after.get(), "99991231235959Z") != 1) {
      return OpenSslError(ErrorCode::kInternal, "encoding the no-expiry date");
    }
  } else {
    VTM_ASSIGN_OR_RETURN(not_after, TimeOf(v.not_after));
  }
  if (X509_set1_notBefore(x, not_before.get()) != 1 || X509_set1_notAfter(x, not_after.get()) != 1) {
    return OpenSslError(ErrorCode::kInternal, "setting the validity");
  }
  return OkStatus();
}

Result<Asn1IntegerPtr> SerialOf(uint64_t serial) {
  // RFC 5280 4.1.2.2: serial numbers are positive.
  if (serial == 0) return Error(ErrorCode::kInvalidArgument, "certificate serial must be positive, not 0");
  Asn1IntegerPtr out(ASN1_INTEGER_new());
  if (!out || ASN1_INTEGER_set_uint64(out.get(), serial) != 1)
    return OpenSslError(ErrorCode::kInternal, "encoding a serial");
  return out;
}

// RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING's value.
Result<std::string> KeyIdentifier(X509_PUBKEY* pub) {
  const unsigned char* key_bits = nullptr;
  int key_len = 0;
  if (X509_PUBKEY_get0_param(nullptr, &key_bits, &key_len, nullptr, pub) != 1) {
    return OpenSslError(ErrorCode::kInternal, "reading a public key's bits");
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  if (EVP_Digest(key_bits, static_cast<size_t>(key_len), md, &md_len, EVP_sha1(), nullptr) != 1) {
    return OpenSslError(ErrorCode::kInternal, "hashing a public key");
  }
  return std::string(reinterpret_cast<char*>(md), md_len);
}

Result<std::string> KeyIdentifierOfSpki(const std::string& spki_der) {
  const auto* p = reinterpret_cast<const unsigned char*>(spki_der.data());
  OsslPtr<X509_PUBKEY, X509_PUBKEY_free> pub(d2i_X509_PUBKEY(nullptr, &p, static_cast<long>(spki_der.size())));
  if (!pub) return OpenSslError(ErrorCode::kInvalidArgument, "public key is not a DER SubjectPublicKeyInfo");
  return KeyIdentifier(pub.get());
}

// Key identifier to name in authorityKeyIdentifier: the issuer's own SKI when it has one (a
// fleet CA may use another method than ours), else computed from its key.
Result<std::string> AuthorityKeyIdOf(X509* issuer) {
  if (const ASN1_OCTET_STRING* ski = X509_get0_subject_key_id(issuer)) {
    return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(ski)),
                       static_cast<size_t>(ASN1_STRING_length(ski)));
  }
  return KeyIdentifier(X509_get_X509_PUBKEY(issuer));
}

// ---- Extensions ------------------------------------------------------------------------------

using Extensions = std::vector<X509ExtPtr>;

Status AddTyped(Extensions& exts, int nid, bool critical, void* value) {
  X509ExtPtr ext(X509V3_EXT_i2d(nid, critical ? 1 : 0, value));
  if (!ext) return OpenSslError(ErrorCode::kInternal, std::string("encoding extension ") + OBJ_nid2sn(nid));
  exts.push_back(std::move(ext));
  return OkStatus();
}

Status AddRaw(Extensions& exts, const char* oid, bool critical, const std::string& value_der) {
  Asn1ObjectPtr obj(OBJ_txt2obj(oid, 1));
  Asn1OctetPtr octets(ASN1_OCTET_STRING_new());
  if (!obj || !octets ||
      ASN1_OCTET_STRING_set(octets.get(), reinterpret_cast<const unsigned char*>(value_der.data()),
                            static_cast<int>(value_der.size())) != 1) {
    return OpenSslError(ErrorCode::kInternal, std::string("encoding extension ") + oid);
  }
  X509ExtPtr ext(X509_EXTENSION_create_by_OBJ(nullptr, obj.get(), critical ? 1 : 0, octets.get()));
  if (!ext) return OpenSslError(ErrorCode::kInternal, std::string("encoding extension ") + oid);
  exts.push_back(std::move(ext));
  return OkStatus();
}

Status AddBasicConstraints(Extensions& exts, bool ca) {
  BasicConstraintsPtr bc(BASIC_CONSTRAINTS_new());
  if (!bc) return OpenSslError(ErrorCode::kInternal, "allocating basicConstraints");
  bc->ca = ca ? 0xff : 0;
  if (ca) {
    // pathLenConstraint 0: the host CA issues end-entity certificates only.
    bc->pathlen = ASN1_INTEGER_new();
    if (bc->pathlen == nullptr || ASN1_INTEGER_set(bc->pathlen, 0) != 1)
      return OpenSslError(ErrorCode::kInternal, "pathlen");
  }
  return AddTyped(exts, NID_basic_constraints, true, bc.get());
}

// Bit numbers from RFC 5280 4.2.1.3.
enum KeyUsageBit { kDigitalSignature = 0, kKeyEncipherment = 2, kKeyAgreement = 4, kKeyCertSign = 5, kCrlSign = 6 };

Status AddKeyUsage(Extensions& exts, std::initializer_list<KeyUsageBit> bits) {
  BitStringPtr usage(ASN1_BIT_STRING_new());
  if (!usage) return OpenSslError(ErrorCode::kInternal, "allocating keyUsage");
  for (KeyUsageBit bit : bits) {
    if (ASN1_BIT_STRING_set_bit(usage.get(), bit, 1) != 1) return OpenSslError(ErrorCode::kInternal, "keyUsage");
  }
  return AddTyped(exts, NID_key_usage, true, usage.get());
}

Status AddExtendedKeyUsage(Extensions& exts, std::initializer_list<const char*> oids) {
  EkuPtr eku(sk_ASN1_OBJECT_new_null());
  if (!eku) return OpenSslError(ErrorCode::kInternal, "allocating extendedKeyUsage");
  for (const char* oid : oids) {
    ASN1_OBJECT* obj = OBJ_txt2obj(oid, 0);
    if (obj == nullptr || sk_ASN1_OBJECT_push(eku.get(), obj) <= 0) {
      ASN1_OBJECT_free(obj);
      return OpenSslError(ErrorCode::kInternal, std::string("extendedKeyUsage ") + oid);
    }
  }
  return AddTyped(exts, NID_ext_key_usage, false, eku.get());
}

Status AddKeyId(Extensions& exts, int nid, const std::string& key_id) {
  Asn1OctetPtr id(ASN1_OCTET_STRING_new());
  if (!id || ASN1_OCTET_STRING_set(id.get(), reinterpret_cast<const unsigned char*>(key_id.data()),
                                   static_cast<int>(key_id.size())) != 1) {
    return OpenSslError(ErrorCode::kInternal, "encoding a key identifier");
  }
  if (nid == NID_subject_key_identifier) return AddTyped(exts, nid, false, id.get());
  AuthorityKeyIdPtr akid(AUTHORITY_KEYID_new());
  if (!akid) return OpenSslError(ErrorCode::kInternal, "allocating authorityKeyIdentifier");
  akid->keyid = id.release();
  return AddTyped(exts, NID_authority_key_identifier, false, akid.get());
}

}  // namespace

std::string EncodeCertifyEvidence(const CertifyEvidence& e) {
  constexpr uint64_t kEvidenceVersion = 1;
  return der::Tlv(der::kSequence, der::Integer(kEvidenceVersion) + der::Tlv(der::kOctetString, e.key_tpm2b_public) +
                                      der::Tlv(der::kOctetString, e.attest) + der::Tlv(der::kOctetString, e.signature) +
                                      der::Tlv(der::kOctetString, e.ak_tpm2b_public));
}

namespace {

Status AddCertifyEvidence(Extensions& exts, const CertifyEvidence& evidence) {
  const bool any = !evidence.key_tpm2b_public.empty() || !evidence.attest.empty() || !evidence.signature.empty() ||
                   !evidence.ak_tpm2b_public.empty();
  // No evidence at all means a CA key without a TPM2_Certify (the `sealed` residency mode binds
  // its key through a host quote instead): the extension is left out.
  if (!any) return OkStatus();
  // Refuse what ExtractCertifyEvidence would refuse, so we never issue an unreadable extension.
  VTM_RETURN_IF_ERROR(CheckEvidenceStructure(evidence));
  const std::string value = EncodeCertifyEvidence(evidence);
  VTM_RETURN_IF_ERROR(DecodeCertifyEvidence(value));
  return AddRaw(exts, kCertifyEvidenceOid, false, value);
}

Status AddToCertificate(X509* x, const Extensions& exts) {
  for (const auto& ext : exts) {
    if (X509_add_ext(x, ext.get(), -1) != 1) return OpenSslError(ErrorCode::kInternal, "adding an extension");
  }
  return OkStatus();
}

// ---- Names -----------------------------------------------------------------------------------

Status AddUtf8Entry(X509_NAME* name, const char* oid, const std::string& value, const char* what) {
  VTM_RETURN_IF_ERROR(CheckUtf8Text(value, what));
  Asn1ObjectPtr obj(OBJ_txt2obj(oid, 0));
  // set = -1: one attribute per RDN, as TCG's examples and swtpm_cert encode them.
  if (!obj || X509_NAME_add_entry_by_OBJ(name, obj.get(), V_ASN1_UTF8STRING,
                                         reinterpret_cast<const unsigned char*>(value.data()),
                                         static_cast<int>(value.size()), -1, 0) != 1) {
    return OpenSslError(ErrorCode::kInternal, std::string("encoding ") + what);
  }
  return OkStatus();
}

Result<X509NamePtr> SubjectName(const std::string& common_name, const std::string& organization) {
  X509NamePtr name(X509_NAME_new());
  if (!name) return OpenSslError(ErrorCode::kInternal, "allocating a name");
  if (!organization.empty()) VTM_RETURN_IF_ERROR(AddUtf8Entry(name.get(), "2.5.4.10", organization, "organization"));
  VTM_RETURN_IF_ERROR(AddUtf8Entry(name.get(), "2.5.4.3", common_name, "common name"));
  return name;
}

Status AddSubjectAltNames(Extensions& exts, std::vector<GeneralNamePtr> names, bool critical) {
  GeneralNamesPtr gens(sk_GENERAL_NAME_new_null());
  if (!gens) return OpenSslError(ErrorCode::kInternal, "allocating subjectAltName");
  for (auto& n : names) {
    if (sk_GENERAL_NAME_push(gens.get(), n.get()) <= 0) return OpenSslError(ErrorCode::kInternal, "subjectAltName");
    (void)n.release();  // now owned by the stack
  }
  return AddTyped(exts, NID_subject_alt_name, critical, gens.get());
}

Result<GeneralNamePtr> UriName(const std::string& uri) {
  GeneralNamePtr gen(GENERAL_NAME_new());
  ASN1_IA5STRING* ia5 = ASN1_IA5STRING_new();
  if (!gen || ia5 == nullptr || ASN1_STRING_set(ia5, uri.data(), static_cast<int>(uri.size())) != 1) {
    ASN1_IA5STRING_free(ia5);
    return OpenSslError(ErrorCode::kInternal, "encoding URI " + uri);
  }
  GENERAL_NAME_set0_value(gen.get(), GEN_URI, ia5);
  return gen;
}

// ---- Common certificate skeleton ---------------------------------------------------------------

struct Issuer {
  X509Ptr cert;
  std::string key_id;
};

// The issuer certificate, checked to carry the CA key's public key: a certificate signed by
// one key but naming an issuer with another would never verify.
Result<Issuer> LoadIssuer(Signer& ca_key, const std::string& issuer_cert) {
  auto cert = LoadCertificate(issuer_cert);
  if (!cert.ok()) return std::move(cert).error().Context("the CA certificate");
  VTM_ASSIGN_OR_RETURN(EvpPkeyPtr ca_public, PublicKeyFromSpki(ca_key.PublicKeySpki(), "the CA key's public key"));
  EVP_PKEY* cert_key = X509_get0_pubkey(cert->get());
  if (cert_key == nullptr || EVP_PKEY_eq(cert_key, ca_public.get()) != 1) {
    ERR_clear_error();
    return Error(
        ErrorCode::kInvalidArgument,
        "the CA certificate is for another key than the CA key (was a certificate installed for a different CSR?)");
  }
  Issuer out;
  VTM_ASSIGN_OR_RETURN(out.key_id, AuthorityKeyIdOf(cert->get()));
  out.cert = std::move(cert).value();
  return out;
}

Result<X509Ptr> NewCertificate(uint64_t serial, const Validity& validity, const X509_NAME* issuer,
                               const X509_NAME* subject, EVP_PKEY* subject_key) {
  X509Ptr x(X509_new());
  if (!x) return OpenSslError(ErrorCode::kInternal, "allocating a certificate");
  VTM_ASSIGN_OR_RETURN(Asn1IntegerPtr sn, SerialOf(serial));
  if (X509_set_version(x.get(), X509_VERSION_3) != 1 || X509_set_serialNumber(x.get(), sn.get()) != 1 ||
      X509_set_issuer_name(x.get(), issuer) != 1 || X509_set_subject_name(x.get(), subject) != 1 ||
      X509_set_pubkey(x.get(), subject_key) != 1) {
    return OpenSslError(ErrorCode::kInternal, "filling in a certificate");
  }
  VTM_RETURN_IF_ERROR(SetValidity(x.get(), validity));
  return x;
}

// The extensions of the CA certificate and of its CSR.
Result<Extensions> CaExtensions(Signer& ca_key, const CaCertRequest& req, bool self_signed) {
  Extensions exts;
  VTM_RETURN_IF_ERROR(AddBasicConstraints(exts, true));
  VTM_RETURN_IF_ERROR(AddKeyUsage(exts, {kKeyCertSign, kCrlSign}));
  VTM_ASSIGN_OR_RETURN(std::string key_id, KeyIdentifierOfSpki(ca_key.PublicKeySpki()));
  VTM_RETURN_IF_ERROR(AddKeyId(exts, NID_subject_key_identifier, key_id));
  if (self_signed) VTM_RETURN_IF_ERROR(AddKeyId(exts, NID_authority_key_identifier, key_id));
  auto evidence = AddCertifyEvidence(exts, req.evidence);
  if (!evidence.ok()) return std::move(evidence).error().Context("the CA key's certify evidence");
  return exts;
}

// subjectDirectoryAttributes { tcg-at-tpmSpecification: TPMSpecification { family, level, revision } }
Result<std::string> TpmSpecificationAttributes(const EkCertRequest& req) {
  VTM_RETURN_IF_ERROR(CheckUtf8Text(req.tpm_spec_family, "TPM specification family"));
  VTM_ASSIGN_OR_RETURN(std::string oid, der::Oid(kTcgAtTpmSpecification));
  const std::string spec =
      der::Tlv(der::kSequence, der::Tlv(der::kUtf8String, req.tpm_spec_family) + der::Integer(req.tpm_spec_level) +
                                   der::Integer(req.tpm_spec_revision));
  const std::string attribute = der::Tlv(der::kSequence, oid + der::Tlv(der::kSet, spec));
  return der::Tlv(der::kSequence, attribute);
}

}  // namespace

// ---- Public API --------------------------------------------------------------------------------

Result<std::string> CreateSelfSignedCaCertificate(Signer& ca_key, const CaCertRequest& req) {
  VTM_ASSIGN_OR_RETURN(EvpPkeyPtr ca_public, PublicKeyFromSpki(ca_key.PublicKeySpki(), "the CA key's public key"));
  VTM_ASSIGN_OR_RETURN(X509NamePtr subject, SubjectName(req.common_name, req.organization));
  VTM_ASSIGN_OR_RETURN(X509Ptr x,
                       NewCertificate(req.serial, req.validity, subject.get(), subject.get(), ca_public.get()));
  VTM_ASSIGN_OR_RETURN(Extensions exts, CaExtensions(ca_key, req, /*self_signed=*/true));
  VTM_RETURN_IF_ERROR(AddToCertificate(x.get(), exts));
  return SignWithSigner(ca_key, x.get());
}

Result<std::string> CreateCaCsr(Signer& ca_key, const CaCertRequest& req) {
  VTM_ASSIGN_OR_RETURN(EvpPkeyPtr ca_public, PublicKeyFromSpki(ca_key.PublicKeySpki(), "the CA key's public key"));
  VTM_ASSIGN_OR_RETURN(X509NamePtr subject, SubjectName(req.common_name, req.organization));
  X509ReqPtr csr(X509_REQ_new());
  if (!csr || X509_REQ_set_version(csr.get(), X509_REQ_VERSION_1) != 1 ||
      X509_REQ_set_subject_name(csr.get(), subject.get()) != 1 ||
      X509_REQ_set_pubkey(csr.get(), ca_public.get()) != 1) {
    return OpenSslError(ErrorCode::kInternal, "filling in the CSR");
  }
  VTM_ASSIGN_OR_RETURN(Extensions exts, CaExtensions(ca_key, req, /*self_signed=*/false));
  ExtensionStackPtr stack(sk_X509_EXTENSION_new_null());
  if (!stack) return OpenSslError(ErrorCode::kInternal, "allocating the CSR's extensions");
  for (auto& ext : exts) {
    if (sk_X509_EXTENSION_push(stack.get(), ext.get()) <= 0)
      return OpenSslError(ErrorCode::kInternal, "CSR extensions");
    (void)ext.release();  // now owned by the stack
  }
  if (X509_REQ_add_extensions(csr.get(), stack.get()) != 1)
    return OpenSslError(ErrorCode::kInternal, "adding the CSR's extensions");
  return SignWithSigner(ca_key, csr.get());
}

Result<std::string> IssueEkCertificate(Signer& ca_key, const std::string& issuer_cert_der, const EkCertRequest& req) {
  VTM_ASSIGN_OR_RETURN(Issuer issuer, LoadIssuer(ca_key, issuer_cert_der));
  VTM_ASSIGN_OR_RETURN(EvpPkeyPtr ek, PublicKeyFromSpki(req.ek_spki_der, "the EK public key"));
  const bool is_rsa = EVP_PKEY_is_a(ek.get(), "RSA");
  if (!is_rsa && !EVP_PKEY_is_a(ek.get(), "EC"))
    return Error(ErrorCode::kInvalidArgument, "the EK is neither an RSA nor an ECC key");
  if (is_rsa != req.rsa) {
    return Error(ErrorCode::kInvalidArgument, std::string("the EK public key is ") + (is_rsa ? "RSA" : "ECC") +
                                                  " but the request says " + (req.rsa ? "RSA" : "ECC"));
  }
  // TCG EK Credential Profile: the subject is empty and the TPM is named by a critical
  // subjectAltName directoryName instead.
  X509NamePtr empty_subject(X509_NAME_new());
  if (!empty_subject) return OpenSslError(ErrorCode::kInternal, "allocating a name");
  VTM_ASSIGN_OR_RETURN(X509Ptr x, NewCertificate(req.serial, req.validity, X509_get_subject_name(issuer.cert.get()),
                                                 empty_subject.get(), ek.get()));

  X509NamePtr tpm_name(X509_NAME_new());
  if (!tpm_name) return OpenSslError(ErrorCode::kInternal, "allocating a name");
  VTM_RETURN_IF_ERROR(AddUtf8Entry(tpm_name.get(), kTcgAtTpmManufacturer, req.tpm_manufacturer, "TPM manufacturer"));
  VTM_RETURN_IF_ERROR(AddUtf8Entry(tpm_name.get(), kTcgAtTpmModel, req.tpm_model, "TPM model"));
  VTM_RETURN_IF_ERROR(AddUtf8Entry(tpm_name.get(), kTcgAtTpmVersion, req.tpm_version, "TPM version"));
  GeneralNamePtr dir_name(GENERAL_NAME_new());
  if (!dir_name) return OpenSslError(ErrorCode::kInternal, "allocating subjectAltName");
  GENERAL_NAME_set0_value(dir_name.get(), GEN_DIRNAME, tpm_name.release());
  std::vector<GeneralNamePtr> names;
  names.push_back(std::move(dir_name));

  Extensions exts;
  VTM_RETURN_IF_ERROR(AddSubjectAltNames(exts, std::move(names), /*critical=*/true));
  VTM_RETURN_IF_ERROR(AddBasicConstraints(exts, false));
  VTM_RETURN_IF_ERROR(AddKeyUsage(exts, {req.rsa ? kKeyEncipherment : kKeyAgreement}));
  VTM_RETURN_IF_ERROR(AddExtendedKeyUsage(exts, {kTcgKpEkCertificate}));
  // anyPolicy: TCG's own policy OIDs state verification practices this CA does not claim. A key
  // vtm did not create gets the one policy that says so (and no anyPolicy that could mask it).
  VTM_ASSIGN_OR_RETURN(std::string policy, der::Oid(req.unprovisioned_key ? kUnprovisionedKeyPolicyOid : kAnyPolicy));
  VTM_RETURN_IF_ERROR(AddRaw(exts, "2.5.29.32", false, der::Tlv(der::kSequence, der::Tlv(der::kSequence, policy))));
  VTM_ASSIGN_OR_RETURN(std::string spec_attributes, TpmSpecificationAttributes(req));
  VTM_RETURN_IF_ERROR(AddRaw(exts, kSubjectDirectoryAttributes, false, spec_attributes));
  VTM_ASSIGN_OR_RETURN(std::string key_id, KeyIdentifierOfSpki(req.ek_spki_der));
  VTM_RETURN_IF_ERROR(AddKeyId(exts, NID_subject_key_identifier, key_id));
  VTM_RETURN_IF_ERROR(AddKeyId(exts, NID_authority_key_identifier, issuer.key_id));
  VTM_RETURN_IF_ERROR(AddToCertificate(x.get(), exts));
  return SignWithSigner(ca_key, x.get());
}

namespace {
// What every end-entity identity certificate (AK, IK, a host endpoint) carries, then the
// signature: not a CA, digitalSignature, the EKU (TLS server+client, or the TCG AK purpose), the
// SANs, subject and authority key identifiers.
Result<std::string> FinishEndEntity(Signer& ca_key, const Issuer& issuer, X509* x, const std::string& spki_der,
                                    std::vector<GeneralNamePtr> names, bool tls) {
  Extensions exts;
  VTM_RETURN_IF_ERROR(AddBasicConstraints(exts, false));
  VTM_RETURN_IF_ERROR(AddKeyUsage(exts, {kDigitalSignature}));
  if (tls) {
    VTM_RETURN_IF_ERROR(AddExtendedKeyUsage(exts, {kServerAuth, kClientAuth}));
  } else {
    VTM_RETURN_IF_ERROR(AddExtendedKeyUsage(exts, {kTcgKpAikCertificate}));
  }
  VTM_RETURN_IF_ERROR(AddSubjectAltNames(exts, std::move(names), /*critical=*/false));
  VTM_ASSIGN_OR_RETURN(std::string key_id, KeyIdentifierOfSpki(spki_der));
  VTM_RETURN_IF_ERROR(AddKeyId(exts, NID_subject_key_identifier, key_id));
  VTM_RETURN_IF_ERROR(AddKeyId(exts, NID_authority_key_identifier, issuer.key_id));
  VTM_RETURN_IF_ERROR(AddToCertificate(x, exts));
  return SignWithSigner(ca_key, x);
}
}  // namespace

Result<std::string> IssueIdentityCertificate(Signer& ca_key, const std::string& issuer_cert_der,
                                             const IdentityCertRequest& req) {
  VTM_RETURN_IF_ERROR(CheckVmUuid(req.vm_uuid));
  if (!req.service.empty()) VTM_RETURN_IF_ERROR(CheckServiceName(req.service));
  VTM_ASSIGN_OR_RETURN(Issuer issuer, LoadIssuer(ca_key, issuer_cert_der));
  const char* role = req.attestation_key ? "AK" : "IK";
  VTM_ASSIGN_OR_RETURN(
      EvpPkeyPtr key, PublicKeyFromSpki(req.spki_der, req.attestation_key ? "the AK public key" : "the IK public key"));
  std::string uuid = req.vm_uuid;
  std::transform(uuid.begin(), uuid.end(), uuid.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  VTM_ASSIGN_OR_RETURN(X509NamePtr subject, SubjectName(uuid + " " + role, "vtm"));
  VTM_ASSIGN_OR_RETURN(X509Ptr x, NewCertificate(req.serial, req.validity, X509_get_subject_name(issuer.cert.get()),
                                                 subject.get(), key.get()));

  std::vector<GeneralNamePtr> names;
  VTM_ASSIGN_OR_RETURN(GeneralNamePtr vm_uri, UriName("urn:uuid:" + uuid));
  names.push_back(std::move(vm_uri));
  if (!req.service.empty()) {
    VTM_ASSIGN_OR_RETURN(GeneralNamePtr service_uri, UriName("vtm:service:" + req.service));
    names.push_back(std::move(service_uri));
  }
  // The IK is the VM's TLS identity; the AK signs only TPM-generated structures (TCG AK purpose).
  return FinishEndEntity(ca_key, issuer, x.get(), req.spki_der, std::move(names), /*tls=*/!req.attestation_key);
}

Result<std::string> IssueHostTlsCertificate(Signer& ca_key, const std::string& issuer_cert_der,
                                            const HostTlsCertRequest& req) {
  const bool name_ok = !req.host_name.empty() && req.host_name.size() <= 64 &&
                       std::all_of(req.host_name.begin(), req.host_name.end(), [](unsigned char c) {
                         return std::isalnum(c) || c == '.' || c == '-';
                       });
  if (!name_ok) return Error(ErrorCode::kInvalidArgument, "host name '" + req.host_name + "' is not 1..64 of [A-Za-z0-9.-]");
  if (req.purpose != "attestation" && req.purpose != "migration") {
    return Error(ErrorCode::kInvalidArgument, "unknown host TLS certificate purpose '" + req.purpose + "'");
  }
  VTM_ASSIGN_OR_RETURN(Issuer issuer, LoadIssuer(ca_key, issuer_cert_der));
  VTM_ASSIGN_OR_RETURN(EvpPkeyPtr key, PublicKeyFromSpki(req.spki_der, "the endpoint's public key"));
  VTM_ASSIGN_OR_RETURN(X509NamePtr subject, SubjectName(req.host_name + " vtmd " + req.purpose, "vtm"));
  VTM_ASSIGN_OR_RETURN(X509Ptr x, NewCertificate(req.serial, req.validity, X509_get_subject_name(issuer.cert.get()),
                                                 subject.get(), key.get()));
  std::vector<GeneralNamePtr> names;
  VTM_ASSIGN_OR_RETURN(GeneralNamePtr host_uri, UriName("vtm:host:" + req.host_name));
  names.push_back(std::move(host_uri));
  return FinishEndEntity(ca_key, issuer, x.get(), req.spki_der, std::move(names), /*tls=*/true);
}

Result<std::string> CreateCrl(Signer& ca_key, const std::string& issuer_cert_der,
                              const std::vector<RevokedCert>& revoked, uint64_t crl_number, std::time_t this_update,
                              std::time_t next_update) {
  if (next_update <= this_update)
    return Error(ErrorCode::kInvalidArgument, "CRL: next_update must be later than this_update");
  VTM_ASSIGN_OR_RETURN(Issuer issuer, LoadIssuer(ca_key, issuer_cert_der));
  X509CrlPtr crl(X509_CRL_new());
  VTM_ASSIGN_OR_RETURN(Asn1TimePtr last, TimeOf(this_update));
  VTM_ASSIGN_OR_RETURN(Asn1TimePtr next, TimeOf(next_update));
  if (!crl || X509_CRL_set_version(crl.get(), X509_CRL_VERSION_2) != 1 ||
      X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(issuer.cert.get())) != 1 ||
      X509_CRL_set1_lastUpdate(crl.get(), last.get()) != 1 || X509_CRL_set1_nextUpdate(crl.get(), next.get()) != 1) {
    return OpenSslError(ErrorCode::kInternal, "filling in the CRL");
  }
  for (const RevokedCert& r : revoked) {
    VTM_ASSIGN_OR_RETURN(Asn1IntegerPtr sn, SerialOf(r.serial));
    VTM_ASSIGN_OR_RETURN(Asn1TimePtr when, TimeOf(r.revoked_at));
    X509RevokedPtr entry(X509_REVOKED_new());
    if (!entry || X509_REVOKED_set_serialNumber(entry.get(), sn.get()) != 1 ||
        X509_REVOKED_set_revocationDate(entry.get(), when.get()) != 1 ||
        X509_CRL_add0_revoked(crl.get(), entry.get()) != 1) {
      return OpenSslError(ErrorCode::kInternal, "adding a revoked serial to the CRL");
    }
    (void)entry.release();  // now owned by the CRL
  }
  if (X509_CRL_sort(crl.get()) != 1) return OpenSslError(ErrorCode::kInternal, "sorting the CRL");
  // crlNumber: RFC 5280 5.2.3 requires it to be non-negative and to increase; 0 is allowed.
  Asn1IntegerPtr number(ASN1_INTEGER_new());
  if (!number || ASN1_INTEGER_set_uint64(number.get(), crl_number) != 1 ||
      X509_CRL_add1_ext_i2d(crl.get(), NID_crl_number, number.get(), 0, X509V3_ADD_DEFAULT) != 1) {
    return OpenSslError(ErrorCode::kInternal, "adding the CRL number");
  }
  Extensions exts;
  VTM_RETURN_IF_ERROR(AddKeyId(exts, NID_authority_key_identifier, issuer.key_id));
  for (const auto& ext : exts) {
    if (X509_CRL_add_ext(crl.get(), ext.get(), -1) != 1)
      return OpenSslError(ErrorCode::kInternal, "adding a CRL extension");
  }
  return SignWithSigner(ca_key, crl.get());
}

namespace {

Result<std::string> NameToString(const X509_NAME* name) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253) < 0)
    return OpenSslError(ErrorCode::kInternal, "printing a name");
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

}  // namespace

Status VerifyIssuedBy(const std::string& cert_der_or_pem, const std::string& issuer_der_or_pem, const std::string& what) {
  VTM_ASSIGN_OR_RETURN(X509Ptr cert, LoadCertificate(cert_der_or_pem));
  VTM_ASSIGN_OR_RETURN(X509Ptr issuer, LoadCertificate(issuer_der_or_pem));
  EvpPkeyPtr key(X509_get_pubkey(issuer.get()));
  if (!key || X509_check_issued(issuer.get(), cert.get()) != X509_V_OK || X509_verify(cert.get(), key.get()) != 1) {
    ERR_clear_error();
    return Error(ErrorCode::kPermissionDenied, what + " was not issued by " +
                                                   ParseCertificate(issuer_der_or_pem).value().subject);
  }
  return OkStatus();
}

Result<CertificateInfo> ParseCertificate(const std::string& der_or_pem) {
  VTM_ASSIGN_OR_RETURN(X509Ptr x, LoadCertificate(der_or_pem));
  // Computing the extension cache also validates the extensions we read below.
  const uint32_t flags = X509_get_extension_flags(x.get());
  if (flags & EXFLAG_INVALID) {
    return OpenSslError(ErrorCode::kInvalidArgument, "the certificate has malformed or duplicate extensions");
  }
  CertificateInfo info;
  VTM_ASSIGN_OR_RETURN(info.subject, NameToString(X509_get_subject_name(x.get())));
  VTM_ASSIGN_OR_RETURN(info.issuer, NameToString(X509_get_issuer_name(x.get())));
  BnPtr serial(ASN1_INTEGER_to_BN(X509_get0_serialNumber(x.get()), nullptr));
  char* hex = serial ? BN_bn2hex(serial.get()) : nullptr;
  if (hex == nullptr)
    return OpenSslError(ErrorCode::kInvalidArgument, "the certificate's serial number cannot be read");
  info.serial_hex = hex;
  OPENSSL_free(hex);
  if (ASN1_INTEGER_get_uint64(&info.serial, X509_get0_serialNumber(x.get())) != 1) info.serial = 0;
  VTM_ASSIGN_OR_RETURN(info.spki_der,
                       (ToDer<X509_PUBKEY, i2d_X509_PUBKEY>(X509_get_X509_PUBKEY(x.get()), "the public key")));
  info.is_ca = (flags & EXFLAG_CA) != 0;
  std::tm not_after{};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(x.get()), &not_after) != 1) {
    return OpenSslError(ErrorCode::kInvalidArgument, "the certificate's notAfter cannot be read");
  }
  info.not_after = not_after.tm_year + 1900 == 9999 ? 0 : timegm(&not_after);
  int crit = 0;
  GeneralNamesPtr sans(static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(x.get(), NID_subject_alt_name, &crit, nullptr)));
  if (!sans && crit != -1)
    return OpenSslError(ErrorCode::kInvalidArgument, "the certificate's subjectAltName is malformed");
  for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans.get()); ++i) {
    const GENERAL_NAME* gen = sk_GENERAL_NAME_value(sans.get(), i);
    if (gen->type != GEN_URI) continue;
    const ASN1_IA5STRING* uri = gen->d.uniformResourceIdentifier;
    info.uris.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                           static_cast<size_t>(ASN1_STRING_length(uri)));
  }
  ERR_clear_error();
  return info;
}

Result<std::string> CertificateToDer(const std::string& der_or_pem) {
  VTM_ASSIGN_OR_RETURN(X509Ptr x, LoadCertificate(der_or_pem));
  return ToDer<X509, i2d_X509>(x.get(), "the certificate");
}

std::string DerToPem(const std::string& der, const char* label) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio(bio.get(), label, "", reinterpret_cast<const unsigned char*>(der.data()),
                            static_cast<long>(der.size())) <= 0) {
    ERR_clear_error();
    return {};
  }
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

std::vector<std::string> SplitDerCertificates(const std::string& concatenated) {
  std::vector<std::string> out;
  const auto* p = reinterpret_cast<const unsigned char*>(concatenated.data());
  const auto* end = p + concatenated.size();
  while (p < end) {
    const unsigned char* start = p;
    X509Ptr cert(d2i_X509(nullptr, &p, end - p));
    if (!cert) break;
    out.emplace_back(reinterpret_cast<const char*>(start), static_cast<size_t>(p - start));
  }
  ERR_clear_error();
  return out;
}

}  // namespace vtm::ca
