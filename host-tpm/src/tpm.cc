// The ESAPI Tpm, part 2: the identity work vtmd does on the host TPM and on each new vTPM
// (EKs from the TCG templates, SRK, AK/IK, signing, TPM2_Certify/Quote, credential activation,
// persistent objects, NV certificates), plus TpmKey. Public areas and signatures in OpenSSL
// form are in tpm_structures.cc.
#include "vtm/tpm.h"

#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <utility>

#include "internal/esys_handles.h"
#include "internal/esys_tpm.h"
#include "internal/pcr_bank.h"
#include "internal/tpm_error.h"
#include "internal/tpm_marshal.h"
#include "vtm/log.h"
#include "vtm/tpm_structures.h"

namespace vtm {
namespace {

using internal::Aes128CfbObject;
using internal::EsysOut;
using internal::ScopedTr;
using internal::WipeOnExit;

void ReleaseKey(Tpm* tpm, uint32_t handle, bool transient) {
  if (tpm == nullptr) return;
  if (transient) {
    tpm->Flush(handle);
  } else {
    tpm->Forget(handle);
  }
}

std::string Hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

template <typename T>
std::string Bytes(const T& tpm2b_buffer, size_t size) {
  return std::string(reinterpret_cast<const char*>(tpm2b_buffer), size);
}

// Copies bytes into a TPM2B of fixed capacity, refusing what does not fit.
template <typename T>
Status Fill(T& tpm2b, const std::string& bytes, const char* what) {
  if (bytes.size() > sizeof(tpm2b.buffer)) {
    return Error(ErrorCode::kInvalidArgument, std::string(what) + " holds at most " +
                                                  std::to_string(sizeof(tpm2b.buffer)) + " bytes, not " +
                                                  std::to_string(bytes.size()));
  }
  tpm2b.size = static_cast<UINT16>(bytes.size());
  std::memcpy(tpm2b.buffer, bytes.data(), bytes.size());
  return OkStatus();
}

// ---- Templates --------------------------------------------------------------------------

// TCG EK Credential Profile 2.x, policy A: TPM2_PolicySecret(TPM_RH_ENDORSEMENT) with SHA-256.
// The EK's private key is usable only with the endorsement hierarchy's authorization.
constexpr uint8_t kEkPolicyA[32] = {0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc,
                                    0x8d, 0x46, 0xa5, 0xd7, 0x24, 0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52,
                                    0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa};

// The profile's default low-range templates L-1 (RSA 2048) and L-2 (ECC NIST P-256). The unique
// field is zero-filled to the key size, so every party that follows the profile (tpm2_createek,
// guest tools, verifiers) re-derives the very same key from the endorsement seed.
TPM2B_PUBLIC EkTemplate(KeyAlg alg) {
  TPM2B_PUBLIC t{};
  TPMT_PUBLIC& area = t.publicArea;
  area.nameAlg = TPM2_ALG_SHA256;
  area.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                          TPMA_OBJECT_ADMINWITHPOLICY | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
  area.authPolicy.size = sizeof kEkPolicyA;
  std::memcpy(area.authPolicy.buffer, kEkPolicyA, sizeof kEkPolicyA);
  if (alg == KeyAlg::kRsa2048) {
    area.type = TPM2_ALG_RSA;
    TPMS_RSA_PARMS& rsa = area.parameters.rsaDetail;
    rsa.symmetric = Aes128CfbObject();
    rsa.scheme.scheme = TPM2_ALG_NULL;
    rsa.keyBits = 2048;
    rsa.exponent = 0;  // the default, 65537
    area.unique.rsa.size = 256;
  } else {
    area.type = TPM2_ALG_ECC;
    TPMS_ECC_PARMS& ecc = area.parameters.eccDetail;
    ecc.symmetric = Aes128CfbObject();
    ecc.scheme.scheme = TPM2_ALG_NULL;
    ecc.curveID = TPM2_ECC_NIST_P256;
    ecc.kdf.scheme = TPM2_ALG_NULL;
    area.unique.ecc.x.size = 32;
    area.unique.ecc.y.size = 32;
  }
  return t;
}

// ECC P-256 signing keys with a fixed ECDSA-SHA256 scheme, so a key can never be used with
// another scheme. Both are fixedTPM: they never leave the TPM that created them.
TPM2B_PUBLIC SigningKeyTemplate(KeyRole role) {
  TPM2B_PUBLIC t{};
  TPMT_PUBLIC& area = t.publicArea;
  area.type = TPM2_ALG_ECC;
  area.nameAlg = TPM2_ALG_SHA256;
  area.objectAttributes = TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                          TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH;
  // Restricted: the AK signs only TPM-generated structures (quotes, certifications), never a
  // digest that could pass for one.
  if (role == KeyRole::kAttestation) area.objectAttributes |= TPMA_OBJECT_RESTRICTED;
  TPMS_ECC_PARMS& ecc = area.parameters.eccDetail;
  ecc.symmetric.algorithm = TPM2_ALG_NULL;
  ecc.scheme.scheme = TPM2_ALG_ECDSA;
  ecc.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
  ecc.curveID = TPM2_ECC_NIST_P256;
  ecc.kdf.scheme = TPM2_ALG_NULL;
  return t;
}

// The import key is a storage key in shape (what TPM2_ActivateCredential needs of its keyHandle:
// an asymmetric restricted decryption key, whose symmetric definition protects the credential),
// but a child of the SRK, so it is new for every migration and can be thrown away.
TPM2B_PUBLIC KeyTemplate(KeyRole role) {
  return role == KeyRole::kImport ? internal::StoragePrimaryTemplate() : SigningKeyTemplate(role);
}

const char* RoleName(KeyRole role) {
  switch (role) {
    case KeyRole::kAttestation:
      return "attestation key";
    case KeyRole::kSigning:
      return "signing key";
    case KeyRole::kImport:
      return "migration import key";
  }
  return "key";
}

// The certificate indices: written by the platform (vtmd, before any VM runs), readable by the
// owner and with the index's empty auth (what tpm2_nvread and guest tools use), and
// write-locked until undefined, which needs platform authorization the guest lacks once its
// firmware has disabled the platform hierarchy.
constexpr TPMA_NV kNvCertificateAttributes = TPMA_NV_PLATFORMCREATE | TPMA_NV_PPWRITE | TPMA_NV_WRITEDEFINE |
                                             TPMA_NV_PPREAD | TPMA_NV_OWNERREAD | TPMA_NV_AUTHREAD | TPMA_NV_NO_DA |
                                             (TPM2_NT_ORDINARY << TPMA_NV_TPM2_NT_SHIFT);

constexpr uint32_t kDefaultNvChunk = 1024;

}  // namespace

// ---- TpmKey -----------------------------------------------------------------------------

TpmKey::~TpmKey() { ReleaseKey(tpm_, handle_, transient_); }

TpmKey::TpmKey(TpmKey&& o) noexcept
    : tpm_(std::exchange(o.tpm_, nullptr)), handle_(std::exchange(o.handle_, 0)), transient_(o.transient_) {}

TpmKey& TpmKey::operator=(TpmKey&& o) noexcept {
  if (this != &o) {
    ReleaseKey(tpm_, handle_, transient_);
    tpm_ = std::exchange(o.tpm_, nullptr);
    handle_ = std::exchange(o.handle_, 0);
    transient_ = o.transient_;
  }
  return *this;
}

// ---- EsysTpm ----------------------------------------------------------------------------

namespace internal {

Status EsysTpm::CheckKey(const TpmKey& key, const char* what) const {
  if (!key.valid()) return Error(ErrorCode::kInvalidArgument, std::string(what) + " is not a loaded key");
  if (key.owner() != this) {
    return Error(ErrorCode::kInvalidArgument, std::string(what) + " was loaded into another TPM than " + where_);
  }
  return OkStatus();
}

void EsysTpm::Flush(uint32_t esys_handle) {
  ESYS_TR tr = esys_handle;
  TSS2_RC rc = Esys_FlushContext(esys(), tr);
  if (rc != TSS2_RC_SUCCESS) {
    LOG_WARNING << TpmError("TPM2_FlushContext", rc).message() << " (a TPM object slot of " << where_
                << " may stay in use)";
    Esys_TR_Close(esys(), &tr);
  }
}

Result<int> EsysTpm::FlushLeftovers() {
  int flushed = 0;
  for (TPM2_HANDLE first : {TPM2_TRANSIENT_FIRST, TPM2_LOADED_SESSION_FIRST}) {
    TPMI_YES_NO more = TPM2_NO;
    EsysOut<TPMS_CAPABILITY_DATA> caps;
    TSS2_RC rc = Esys_GetCapability(esys(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES, first,
                                    TPM2_MAX_CAP_HANDLES, &more, caps.out());
    if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_GetCapability(HANDLES " + Hex32(first) + ")", rc);
    const TPML_HANDLE& handles = caps->data.handles;
    for (uint32_t i = 0; i < handles.count; ++i) {
      if ((handles.handle[i] & 0xFF000000) != (first & 0xFF000000)) continue;
      ESYS_TR tr = ESYS_TR_NONE;
      if (Esys_TR_FromTPMPublic(esys(), handles.handle[i], ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &tr) !=
          TSS2_RC_SUCCESS) {
        continue;
      }
      if (Esys_FlushContext(esys(), tr) == TSS2_RC_SUCCESS) {
        ++flushed;
      } else {
        Esys_TR_Close(esys(), &tr);
      }
    }
  }
  return flushed;
}

void EsysTpm::Forget(uint32_t esys_handle) {
  ESYS_TR tr = esys_handle;
  Esys_TR_Close(esys(), &tr);
}

Result<uint32_t> EsysTpm::GetTpmProperty(TPM2_PT property) {
  TPMI_YES_NO more = TPM2_NO;
  EsysOut<TPMS_CAPABILITY_DATA> caps;
  TSS2_RC rc = Esys_GetCapability(esys(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_TPM_PROPERTIES, property,
                                  1, &more, caps.out());
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_GetCapability(TPM_PROPERTIES " + Hex32(property) + ")", rc);
  const TPML_TAGGED_TPM_PROPERTY& props = caps->data.tpmProperties;
  if (props.count >= 1 && props.tpmProperty[0].property == property) return props.tpmProperty[0].value;
  return Error(ErrorCode::kNotFound, "the TPM does not report property " + Hex32(property));
}

// Asks the TPM's handle list rather than reading the entity: a read of a missing handle is an
// error that the TSS would log as one, and absence is a normal answer here.
Result<bool> EsysTpm::HandleExists(uint32_t tpm_handle) {
  TPMI_YES_NO more = TPM2_NO;
  EsysOut<TPMS_CAPABILITY_DATA> caps;
  TSS2_RC rc = Esys_GetCapability(esys(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES, tpm_handle, 1,
                                  &more, caps.out());
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_GetCapability(HANDLES " + Hex32(tpm_handle) + ")", rc);
  const TPML_HANDLE& handles = caps->data.handles;
  return handles.count >= 1 && handles.handle[0] == tpm_handle;
}

Result<ScopedTr> EsysTpm::CreatePrimary(ESYS_TR hierarchy, const TPM2B_PUBLIC& in_public, const std::string& what) {
  TPM2B_SENSITIVE_CREATE sensitive{};  // empty auth, no data: the TPM derives the key
  TPM2B_DATA outside_info{};
  TPML_PCR_SELECTION creation_pcrs{};
  ScopedTr primary(esys());
  TSS2_RC rc =
      Esys_CreatePrimary(esys(), hierarchy, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive, &in_public,
                         &outside_info, &creation_pcrs, primary.out(), nullptr, nullptr, nullptr, nullptr);
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_CreatePrimary(" + what + ")", rc);
  return primary;
}

Result<TpmKey> EsysTpm::CreateEk(KeyAlg alg) {
  const char* what = alg == KeyAlg::kRsa2048 ? "endorsement hierarchy, EK template L-1 (RSA 2048)"
                                             : "endorsement hierarchy, EK template L-2 (ECC NIST P-256)";
  VTM_ASSIGN_OR_RETURN(ScopedTr ek, CreatePrimary(ESYS_TR_RH_ENDORSEMENT, EkTemplate(alg), what));
  return Adopt(ek);
}

Result<TpmKey> EsysTpm::CreateSrk() {
  VTM_ASSIGN_OR_RETURN(ScopedTr srk, CreateStoragePrimary());
  return Adopt(srk);
}

Result<TpmKey> EsysTpm::CreateImportPrimary(const std::string& unique) {
  TPM2B_PUBLIC in_public = KeyTemplate(KeyRole::kImport);
  TPMS_ECC_POINT& point = in_public.publicArea.unique.ecc;
  if (unique.size() != 32) {
    return Error(ErrorCode::kInvalidArgument,
                 "an import key's unique value is 32 bytes, not " + std::to_string(unique.size()));
  }
  point.x.size = 32;
  std::memcpy(point.x.buffer, unique.data(), 32);
  point.y.size = 0;
  VTM_ASSIGN_OR_RETURN(ScopedTr key,
                       CreatePrimary(ESYS_TR_RH_OWNER, in_public, "owner hierarchy, migration import key"));
  return Adopt(key);
}

namespace {
// Copies auth into *out, which the caller wipes.
Status ToAuth(const SecretBytes& auth, TPM2B_AUTH* out) {
  if (auth.size() > 32) {
    return Error(ErrorCode::kInvalidArgument,
                 "a key's auth value is at most 32 bytes, not " + std::to_string(auth.size()));
  }
  out->size = static_cast<uint16_t>(auth.size());
  if (!auth.empty()) std::memcpy(out->buffer, auth.data(), auth.size());
  return OkStatus();
}
}  // namespace

Result<TpmKeyBlob> EsysTpm::CreateKey(const TpmKey& parent, KeyRole role, const SecretBytes& auth) {
  VTM_RETURN_IF_ERROR(CheckKey(parent, "the parent key"));
  TPM2B_PUBLIC in_public = KeyTemplate(role);
  // A random 32-byte auth value needs no dictionary-attack protection, and wrong guesses must
  // not lock the host out of its own keys (lockout would stop vtmd).
  if (!auth.empty()) in_public.publicArea.objectAttributes |= TPMA_OBJECT_NODA;
  TPM2B_SENSITIVE_CREATE sensitive{};
  WipeOnExit wipe_sensitive(&sensitive);
  VTM_RETURN_IF_ERROR(ToAuth(auth, &sensitive.sensitive.userAuth));
  TPM2B_DATA outside_info{};
  TPML_PCR_SELECTION creation_pcrs{};
  EsysOut<TPM2B_PRIVATE> out_private;
  EsysOut<TPM2B_PUBLIC> out_public;
  TSS2_RC rc =
      Esys_Create(esys(), parent.esys_handle(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive, &in_public,
                  &outside_info, &creation_pcrs, out_private.out(), out_public.out(), nullptr, nullptr, nullptr);
  if (rc != TSS2_RC_SUCCESS) return TpmError(std::string("TPM2_Create(ECC P-256 ") + RoleName(role) + ")", rc);
  TpmKeyBlob blob;
  VTM_ASSIGN_OR_RETURN(blob.tpm2b_public,
                       (MarshalToString<TPM2B_PUBLIC, Tss2_MU_TPM2B_PUBLIC_Marshal>(*out_public, "TPM2B_PUBLIC")));
  VTM_ASSIGN_OR_RETURN(blob.tpm2b_private,
                       (MarshalToString<TPM2B_PRIVATE, Tss2_MU_TPM2B_PRIVATE_Marshal>(*out_private, "TPM2B_PRIVATE")));
  return blob;
}

Result<TpmKey> EsysTpm::LoadKey(const TpmKey& parent, const TpmKeyBlob& blob) {
  VTM_RETURN_IF_ERROR(CheckKey(parent, "the parent key"));
  VTM_ASSIGN_OR_RETURN(TPM2B_PUBLIC in_public, (UnmarshalExactly<TPM2B_PUBLIC, Tss2_MU_TPM2B_PUBLIC_Unmarshal>(
                                                   blob.tpm2b_public, "TPM2B_PUBLIC")));
  VTM_ASSIGN_OR_RETURN(TPM2B_PRIVATE in_private, (UnmarshalExactly<TPM2B_PRIVATE, Tss2_MU_TPM2B_PRIVATE_Unmarshal>(
                                                     blob.tpm2b_private, "TPM2B_PRIVATE")));
  ScopedTr key(esys());
  TSS2_RC rc = Esys_Load(esys(), parent.esys_handle(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &in_private,
                         &in_public, key.out());
  if (rc != TSS2_RC_SUCCESS) {
    Error error = TpmError("TPM2_Load", rc);
    return Error(error.code(), error.message() +
                                   "; the key blob is corrupt or was created under another parent "
                                   "or TPM (" +
                                   where_ + ")");
  }
  return Adopt(key);
}

Status EsysTpm::SetKeyAuth(const TpmKey& key, const SecretBytes& auth) {
  VTM_RETURN_IF_ERROR(CheckKey(key, "the key"));
  TPM2B_AUTH value{};
  WipeOnExit wipe(&value);
  VTM_RETURN_IF_ERROR(ToAuth(auth, &value));
  TSS2_RC rc = Esys_TR_SetAuth(esys(), key.esys_handle(), &value);
  if (rc != TSS2_RC_SUCCESS) return TpmError("setting a key's auth value", rc);
  return OkStatus();
}

Result<std::string> EsysTpm::ChangeKeyAuth(const TpmKey& key, const TpmKey& parent, const SecretBytes& new_auth) {
  VTM_RETURN_IF_ERROR(CheckKey(key, "the key"));
  VTM_RETURN_IF_ERROR(CheckKey(parent, "the parent key"));
  TPM2B_AUTH value{};
  WipeOnExit wipe(&value);
  VTM_RETURN_IF_ERROR(ToAuth(new_auth, &value));
  EsysOut<TPM2B_PRIVATE> out_private;
  TSS2_RC rc = Esys_ObjectChangeAuth(esys(), key.esys_handle(), parent.esys_handle(), ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                     ESYS_TR_NONE, &value, out_private.out());
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_ObjectChangeAuth", rc);
  return MarshalToString<TPM2B_PRIVATE, Tss2_MU_TPM2B_PRIVATE_Marshal>(*out_private, "TPM2B_PRIVATE");
}

Result<TpmKey> EsysTpm::LoadExternalPublic(const std::string& tpm2b_public) {
  VTM_ASSIGN_OR_RETURN(TPM2B_PUBLIC in_public,
                       (UnmarshalExactly<TPM2B_PUBLIC, Tss2_MU_TPM2B_PUBLIC_Unmarshal>(tpm2b_public, "TPM2B_PUBLIC")));
  ScopedTr key(esys());
  // The NULL hierarchy: a public key only, trusted for nothing but the computation asked of it.
  TSS2_RC rc = Esys_LoadExternal(esys(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, nullptr, &in_public, ESYS_TR_RH_NULL,
                                 key.out());
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_LoadExternal(public key, NULL hierarchy)", rc);
  return Adopt(key);
}

Result<TpmKeyPublic> EsysTpm::ReadPublic(const TpmKey& key) {
  VTM_RETURN_IF_ERROR(CheckKey(key, "the key"));
  EsysOut<TPM2B_PUBLIC> out_public;
  EsysOut<TPM2B_NAME> name;
  TSS2_RC rc = Esys_ReadPublic(esys(), key.esys_handle(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, out_public.out(),
                               name.out(), nullptr);
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_ReadPublic", rc);
  TpmKeyPublic pub;
  VTM_ASSIGN_OR_RETURN(pub.tpm2b_public,
                       (MarshalToString<TPM2B_PUBLIC, Tss2_MU_TPM2B_PUBLIC_Marshal>(*out_public, "TPM2B_PUBLIC")));
  pub.name = Bytes(name->name, name->size);
  VTM_ASSIGN_OR_RETURN(pub.spki_der, SpkiFromTpmt(out_public->publicArea));
  return pub;
}

Result<std::string> EsysTpm::SignDigest(const TpmKey& key, const std::string& sha256_digest) {
  VTM_RETURN_IF_ERROR(CheckKey(key, "the signing key"));
  if (sha256_digest.size() != 32) {
    return Error(ErrorCode::kInvalidArgument,
                 "a SHA-256 digest has 32 bytes, not " + std::to_string(sha256_digest.size()));
  }
  TPM2B_DIGEST digest{};
  VTM_RETURN_IF_ERROR(Fill(digest, sha256_digest, "the digest"));
  TPMT_SIG_SCHEME scheme{};
  scheme.scheme = TPM2_ALG_ECDSA;
  scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
  // A NULL ticket: the TPM did not hash the data itself, which it accepts for unrestricted
  // keys only; a restricted key (an AK) refuses, so it cannot be made to sign a forged quote.
  TPMT_TK_HASHCHECK validation{};
  validation.tag = TPM2_ST_HASHCHECK;
  validation.hierarchy = TPM2_RH_NULL;
  EsysOut<TPMT_SIGNATURE> signature;
  TSS2_RC rc = Esys_Sign(esys(), key.esys_handle(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &digest, &scheme,
                         &validation, signature.out());
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_Sign(ECDSA-SHA256)", rc);
  if (signature->sigAlg != TPM2_ALG_ECDSA) {
    return Error(ErrorCode::kTpm, "TPM2_Sign returned a signature of algorithm " + std::to_string(signature->sigAlg) +
                                      " instead of ECDSA");
  }
  return EcdsaSignatureDer(signature->signature.ecdsa);
}

Result<TpmAttestation> EsysTpm::Certify(const TpmKey& object, const TpmKey& signer, const std::string& qualifying) {
  VTM_RETURN_IF_ERROR(CheckKey(object, "the certified object"));
  VTM_RETURN_IF_ERROR(CheckKey(signer, "the certifying key"));
  TPM2B_DATA qualifying_data{};
  VTM_RETURN_IF_ERROR(Fill(qualifying_data, qualifying, "the qualifying data"));
  TPMT_SIG_SCHEME scheme{};
  scheme.scheme = TPM2_ALG_NULL;  // the signer's own scheme
  EsysOut<TPM2B_ATTEST> attest;
  EsysOut<TPMT_SIGNATURE> signature;
  TSS2_RC rc = Esys_Certify(esys(), object.esys_handle(), signer.esys_handle(), ESYS_TR_PASSWORD, ESYS_TR_PASSWORD,
                            ESYS_TR_NONE, &qualifying_data, &scheme, attest.out(), signature.out());
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_Certify", rc);
  TpmAttestation out;
  out.attest = Bytes(attest->attestationData, attest->size);
  VTM_ASSIGN_OR_RETURN(out.signature,
                       (MarshalToString<TPMT_SIGNATURE, Tss2_MU_TPMT_SIGNATURE_Marshal>(*signature, "TPMT_SIGNATURE")));
  return out;
}

Result<TpmAttestation> EsysTpm::Quote(const TpmKey& ak, const PcrSelection& selection, const std::string& nonce) {
  VTM_RETURN_IF_ERROR(CheckKey(ak, "the attestation key"));
  VTM_ASSIGN_OR_RETURN(PcrSelection canonical, Canonical(selection));
  const TPML_PCR_SELECTION pcrs = ToTpml(*FindPcrBank(canonical.bank), canonical.pcrs);
  TPM2B_DATA qualifying_data{};
  VTM_RETURN_IF_ERROR(Fill(qualifying_data, nonce, "the quote nonce"));
  TPMT_SIG_SCHEME scheme{};
  scheme.scheme = TPM2_ALG_NULL;
  EsysOut<TPM2B_ATTEST> quoted;
  EsysOut<TPMT_SIGNATURE> signature;
  TSS2_RC rc = Esys_Quote(esys(), ak.esys_handle(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &qualifying_data,
                          &scheme, &pcrs, quoted.out(), signature.out());
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_Quote(" + canonical.ToString() + ")", rc);
  TpmAttestation out;
  out.attest = Bytes(quoted->attestationData, quoted->size);
  VTM_ASSIGN_OR_RETURN(out.signature,
                       (MarshalToString<TPMT_SIGNATURE, Tss2_MU_TPMT_SIGNATURE_Marshal>(*signature, "TPMT_SIGNATURE")));
  return out;
}

Result<TpmCredential> EsysTpm::MakeCredential(const TpmKey& ek_public, const std::string& secret,
                                              const std::string& object_name) {
  VTM_RETURN_IF_ERROR(CheckKey(ek_public, "the EK"));
  if (secret.empty()) return Error(ErrorCode::kInvalidArgument, "a credential needs a non-empty secret");
  TPM2B_DIGEST credential{};
  WipeOnExit wipe(&credential);
  VTM_RETURN_IF_ERROR(Fill(credential, secret, "the credential secret"));
  TPM2B_NAME name{};
  if (object_name.size() < 2 || object_name.size() > sizeof(name.name)) {
    return Error(ErrorCode::kInvalidArgument, "a TPM object name has 2 to " + std::to_string(sizeof(name.name)) +
                                                  " bytes, not " + std::to_string(object_name.size()));
  }
  name.size = static_cast<UINT16>(object_name.size());
  std::memcpy(name.name, object_name.data(), object_name.size());
  EsysOut<TPM2B_ID_OBJECT> id_object;
  EsysOut<TPM2B_ENCRYPTED_SECRET> encrypted_secret;
  TSS2_RC rc = Esys_MakeCredential(esys(), ek_public.esys_handle(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                   &credential, &name, id_object.out(), encrypted_secret.out());
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_MakeCredential", rc);
  TpmCredential out;
  VTM_ASSIGN_OR_RETURN(out.id_object, (MarshalToString<TPM2B_ID_OBJECT, Tss2_MU_TPM2B_ID_OBJECT_Marshal>(
                                          *id_object, "TPM2B_ID_OBJECT")));
  VTM_ASSIGN_OR_RETURN(out.encrypted_secret,
                       (MarshalToString<TPM2B_ENCRYPTED_SECRET, Tss2_MU_TPM2B_ENCRYPTED_SECRET_Marshal>(
                           *encrypted_secret, "TPM2B_ENCRYPTED_SECRET")));
  return out;
}

namespace {

// The credential's two parts as the TPM takes them.
struct CredentialParts {
  TPM2B_ID_OBJECT id_object{};
  TPM2B_ENCRYPTED_SECRET encrypted_secret{};
};
Result<CredentialParts> UnmarshalCredential(const TpmCredential& credential) {
  CredentialParts parts;
  VTM_ASSIGN_OR_RETURN(parts.id_object, (UnmarshalExactly<TPM2B_ID_OBJECT, Tss2_MU_TPM2B_ID_OBJECT_Unmarshal>(
                                            credential.id_object, "TPM2B_ID_OBJECT")));
  VTM_ASSIGN_OR_RETURN(parts.encrypted_secret,
                       (UnmarshalExactly<TPM2B_ENCRYPTED_SECRET, Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal>(
                           credential.encrypted_secret, "TPM2B_ENCRYPTED_SECRET")));
  return parts;
}

// TPM2_ActivateCredential with the sessions the caller chose for each handle.
Result<SecretBytes> RunActivateCredential(ESYS_CONTEXT* esys, ESYS_TR activated, ESYS_TR key, ESYS_TR key_session,
                                          const CredentialParts& parts, const char* key_kind) {
  EsysOut<TPM2B_DIGEST, /*kWipe=*/true> secret;
  TSS2_RC rc = Esys_ActivateCredential(esys, activated, key, ESYS_TR_PASSWORD, key_session, ESYS_TR_NONE,
                                       &parts.id_object, &parts.encrypted_secret, secret.out());
  if (rc != TSS2_RC_SUCCESS) {
    Error error = TpmError("TPM2_ActivateCredential", rc);
    return Error(error.code(), error.message() + "; the credential was not made for this key's name and this TPM's " +
                                   key_kind + ", or it was altered on the way");
  }
  return SecretBytes(secret->buffer, secret->size);
}

}  // namespace

Result<SecretBytes> EsysTpm::ActivateCredential(const TpmKey& activated, const TpmKey& ek,
                                                const TpmCredential& credential) {
  VTM_RETURN_IF_ERROR(CheckKey(activated, "the key to activate"));
  VTM_RETURN_IF_ERROR(CheckKey(ek, "the EK"));
  VTM_ASSIGN_OR_RETURN(CredentialParts parts, UnmarshalCredential(credential));

  // The EK's policy A: PolicySecret(TPM_RH_ENDORSEMENT) in a policy session.
  TPMT_SYM_DEF no_cipher{};
  no_cipher.algorithm = TPM2_ALG_NULL;
  ScopedTr session(esys());
  TSS2_RC rc = Esys_StartAuthSession(esys(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                     nullptr, TPM2_SE_POLICY, &no_cipher, TPM2_ALG_SHA256, session.out());
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_StartAuthSession(policy)", rc);
  // CONTINUESESSION keeps the session alive after use so that ScopedTr's flush is always valid.
  rc = Esys_TRSess_SetAttributes(esys(), session.get(), TPMA_SESSION_CONTINUESESSION, 0xff);
  if (rc != TSS2_RC_SUCCESS) return TpmError("Esys_TRSess_SetAttributes", rc);
  rc = Esys_PolicySecret(esys(), ESYS_TR_RH_ENDORSEMENT, session.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                         nullptr, nullptr, nullptr, 0, nullptr, nullptr);
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_PolicySecret(TPM_RH_ENDORSEMENT)", rc);
  return RunActivateCredential(esys(), activated.esys_handle(), ek.esys_handle(), session.get(), parts, "EK");
}

Result<SecretBytes> EsysTpm::ActivateCredentialWithKey(const TpmKey& activated, const TpmKey& key,
                                                       const TpmCredential& credential) {
  VTM_RETURN_IF_ERROR(CheckKey(activated, "the key to activate"));
  VTM_RETURN_IF_ERROR(CheckKey(key, "the decryption key"));
  VTM_ASSIGN_OR_RETURN(CredentialParts parts, UnmarshalCredential(credential));
  // keyHandle needs the USER role: its (empty) authValue in an HMAC session salted with the
  // key itself, ENCRYPT so the recovered secret (certInfo, the first response parameter)
  // crosses the TCTI encrypted. activateHandle needs the ADMIN role, which a key without
  // adminWithPolicy grants to its authValue: a password session.
  VTM_ASSIGN_OR_RETURN(ScopedTr session, StartSaltedSession(key.esys_handle(), TPM2_SE_HMAC, TPMA_SESSION_ENCRYPT));
  return RunActivateCredential(esys(), activated.esys_handle(), key.esys_handle(), session.get(), parts,
                               "decryption key");
}

Status EsysTpm::MakePersistent(const TpmKey& key, uint32_t persistent_handle) {
  VTM_RETURN_IF_ERROR(CheckKey(key, "the key"));
  if (persistent_handle < TPM2_PERSISTENT_FIRST || persistent_handle > TPM2_PERSISTENT_LAST) {
    return Error(ErrorCode::kInvalidArgument,
                 Hex32(persistent_handle) + " is not a persistent handle (0x81000000 to 0x81ffffff)");
  }
  VTM_ASSIGN_OR_RETURN(bool occupied, HandleExists(persistent_handle));
  if (occupied) {
    ScopedTrRef old(esys());
    TSS2_RC rc = Esys_TR_FromTPMPublic(esys(), persistent_handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, old.out());
    if (rc != TSS2_RC_SUCCESS) return TpmError("reading the object at " + Hex32(persistent_handle), rc);
    ESYS_TR none = ESYS_TR_NONE;
    rc = Esys_EvictControl(esys(), ESYS_TR_RH_OWNER, old.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                           persistent_handle, &none);
    if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_EvictControl(evict " + Hex32(persistent_handle) + ")", rc);
  }
  ScopedTrRef persistent(esys());
  TSS2_RC rc = Esys_EvictControl(esys(), ESYS_TR_RH_OWNER, key.esys_handle(), ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                 ESYS_TR_NONE, persistent_handle, persistent.out());
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_EvictControl(persist at " + Hex32(persistent_handle) + ")", rc);
  return OkStatus();
}

Result<TpmKey> EsysTpm::LoadPersistent(uint32_t persistent_handle) {
  if (persistent_handle < TPM2_PERSISTENT_FIRST || persistent_handle > TPM2_PERSISTENT_LAST) {
    return Error(ErrorCode::kInvalidArgument,
                 Hex32(persistent_handle) + " is not a persistent handle (0x81000000 to 0x81ffffff)");
  }
  VTM_ASSIGN_OR_RETURN(bool exists, HandleExists(persistent_handle));
  if (!exists) {
    return Error(ErrorCode::kNotFound, "no persistent object at " + Hex32(persistent_handle) + " in " + where_);
  }
  ScopedTrRef object(esys());
  TSS2_RC rc = Esys_TR_FromTPMPublic(esys(), persistent_handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, object.out());
  if (rc != TSS2_RC_SUCCESS) return TpmError("reading the object at " + Hex32(persistent_handle), rc);
  return TpmKey(this, object.release(), /*transient=*/false);
}

Result<uint32_t> EsysTpm::NvChunkSize() {
  auto max = GetTpmProperty(TPM2_PT_NV_BUFFER_MAX);
  uint32_t chunk = max.ok() && *max > 0 ? *max : kDefaultNvChunk;
  return std::min<uint32_t>(chunk, sizeof(TPM2B_MAX_NV_BUFFER::buffer));
}

Status EsysTpm::WriteNvCertificate(uint32_t nv_index, const std::string& data) {
  if (nv_index < TPM2_NV_INDEX_FIRST || nv_index > TPM2_NV_INDEX_LAST) {
    return Error(ErrorCode::kInvalidArgument, Hex32(nv_index) + " is not an NV index (0x01000000 to 0x01ffffff)");
  }
  const std::string what = "NV index " + Hex32(nv_index);
  if (data.empty()) return Error(ErrorCode::kInvalidArgument, "nothing to write to " + what);
  auto max_size = GetTpmProperty(TPM2_PT_NV_INDEX_MAX);
  if (max_size.ok() && data.size() > *max_size) {
    return Error(ErrorCode::kInvalidArgument, what + ": " + std::to_string(data.size()) + " bytes exceed the " +
                                                  std::to_string(*max_size) + "-byte NV index limit of " + where_);
  }

  VTM_ASSIGN_OR_RETURN(bool exists, HandleExists(nv_index));
  if (exists) {
    ScopedTrRef old(esys());
    TSS2_RC rc = Esys_TR_FromTPMPublic(esys(), nv_index, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, old.out());
    if (rc != TSS2_RC_SUCCESS) return TpmError("reading " + what, rc);
    EsysOut<TPM2B_NV_PUBLIC> old_public;
    rc = Esys_NV_ReadPublic(esys(), old.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, old_public.out(), nullptr);
    if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_NV_ReadPublic(" + what + ")", rc);
    // An index the owner defined is undefined with owner authorization.
    ESYS_TR auth = (old_public->nvPublic.attributes & TPMA_NV_PLATFORMCREATE) ? ESYS_TR_RH_PLATFORM : ESYS_TR_RH_OWNER;
    rc = Esys_NV_UndefineSpace(esys(), auth, old.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE);
    if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_NV_UndefineSpace(" + what + ")", rc);
    old.release();  // ESAPI drops its reference to an undefined index itself
  }

  TPM2B_AUTH no_auth{};
  TPM2B_NV_PUBLIC nv_public{};
  nv_public.nvPublic.nvIndex = nv_index;
  nv_public.nvPublic.nameAlg = TPM2_ALG_SHA256;
  nv_public.nvPublic.attributes = kNvCertificateAttributes;
  nv_public.nvPublic.dataSize = static_cast<UINT16>(data.size());
  ScopedTrRef nv(esys());
  TSS2_RC rc = Esys_NV_DefineSpace(esys(), ESYS_TR_RH_PLATFORM, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &no_auth,
                                   &nv_public, nv.out());
  if (rc != TSS2_RC_SUCCESS) {
    Error error = TpmError("TPM2_NV_DefineSpace(" + what + ", platform hierarchy)", rc);
    return Error(error.code(), error.message() +
                                   "; certificate indices need the platform hierarchy, which a "
                                   "TPM whose firmware has run (e.g. a host TPM) no longer offers");
  }

  auto written = [&]() -> Status {
    VTM_ASSIGN_OR_RETURN(uint32_t chunk, NvChunkSize());
    for (size_t offset = 0; offset < data.size(); offset += chunk) {
      TPM2B_MAX_NV_BUFFER buffer{};
      buffer.size = static_cast<UINT16>(std::min<size_t>(chunk, data.size() - offset));
      std::memcpy(buffer.buffer, data.data() + offset, buffer.size);
      TSS2_RC write_rc = Esys_NV_Write(esys(), ESYS_TR_RH_PLATFORM, nv.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                       ESYS_TR_NONE, &buffer, static_cast<UINT16>(offset));
      if (write_rc != TSS2_RC_SUCCESS) {
        return TpmError("TPM2_NV_Write(" + what + ", offset " + std::to_string(offset) + ")", write_rc);
      }
    }
    TSS2_RC lock_rc =
        Esys_NV_WriteLock(esys(), ESYS_TR_RH_PLATFORM, nv.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE);
    if (lock_rc != TSS2_RC_SUCCESS) return TpmError("TPM2_NV_WriteLock(" + what + ")", lock_rc);
    return OkStatus();
  }();
  if (!written.ok()) {
    // No half-written certificate stays behind for a guest to trip over.
    if (Esys_NV_UndefineSpace(esys(), ESYS_TR_RH_PLATFORM, nv.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE) ==
        TSS2_RC_SUCCESS) {
      nv.release();
    }
    return written;
  }
  return OkStatus();
}

Result<std::string> EsysTpm::ReadNv(uint32_t nv_index) {
  if (nv_index < TPM2_NV_INDEX_FIRST || nv_index > TPM2_NV_INDEX_LAST) {
    return Error(ErrorCode::kInvalidArgument, Hex32(nv_index) + " is not an NV index (0x01000000 to 0x01ffffff)");
  }
  const std::string what = "NV index " + Hex32(nv_index);
  VTM_ASSIGN_OR_RETURN(bool exists, HandleExists(nv_index));
  if (!exists) return Error(ErrorCode::kNotFound, what + " is not defined in " + where_);
  ScopedTrRef nv(esys());
  TSS2_RC rc = Esys_TR_FromTPMPublic(esys(), nv_index, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, nv.out());
  if (rc != TSS2_RC_SUCCESS) return TpmError("reading " + what, rc);
  EsysOut<TPM2B_NV_PUBLIC> nv_public;
  rc = Esys_NV_ReadPublic(esys(), nv.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, nv_public.out(), nullptr);
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_NV_ReadPublic(" + what + ")", rc);
  const size_t size = nv_public->nvPublic.dataSize;
  VTM_ASSIGN_OR_RETURN(uint32_t chunk, NvChunkSize());
  std::string out;
  out.reserve(size);
  while (out.size() < size) {
    UINT16 n = static_cast<UINT16>(std::min<size_t>(chunk, size - out.size()));
    EsysOut<TPM2B_MAX_NV_BUFFER> piece;
    rc = Esys_NV_Read(esys(), ESYS_TR_RH_OWNER, nv.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, n,
                      static_cast<UINT16>(out.size()), piece.out());
    if (rc != TSS2_RC_SUCCESS) {
      return TpmError("TPM2_NV_Read(" + what + ", offset " + std::to_string(out.size()) + ", owner auth)", rc);
    }
    if (piece->size != n) {
      return Error(ErrorCode::kTpm, "TPM2_NV_Read(" + what + ") returned " + std::to_string(piece->size) +
                                        " bytes for " + std::to_string(n) + " requested");
    }
    out.append(reinterpret_cast<const char*>(piece->buffer), piece->size);
  }
  return out;
}

namespace {
constexpr TPMA_NV kNvCounterAttributes = TPMA_NV_AUTHWRITE | TPMA_NV_AUTHREAD | TPMA_NV_OWNERREAD | TPMA_NV_NO_DA |
                                         (TPM2_NT_COUNTER << TPMA_NV_TPM2_NT_SHIFT);
}  // namespace

Status EsysTpm::OpenNvCounter(uint32_t nv_index, const SecretBytes& auth, ScopedTrRef* nv, const std::string& what) {
  if (nv_index < TPM2_NV_INDEX_FIRST || nv_index > TPM2_NV_INDEX_LAST) {
    return Error(ErrorCode::kInvalidArgument, Hex32(nv_index) + " is not an NV index (0x01000000 to 0x01ffffff)");
  }
  VTM_ASSIGN_OR_RETURN(bool exists, HandleExists(nv_index));
  if (!exists) return Error(ErrorCode::kNotFound, what + " is not defined in " + where_);
  TSS2_RC rc = Esys_TR_FromTPMPublic(esys(), nv_index, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, nv->out());
  if (rc != TSS2_RC_SUCCESS) return TpmError("reading " + what, rc);
  EsysOut<TPM2B_NV_PUBLIC> nv_public;
  rc = Esys_NV_ReadPublic(esys(), nv->get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, nv_public.out(), nullptr);
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_NV_ReadPublic(" + what + ")", rc);
  const TPMA_NV attributes = nv_public->nvPublic.attributes;
  if (((attributes & TPMA_NV_TPM2_NT_MASK) >> TPMA_NV_TPM2_NT_SHIFT) != TPM2_NT_COUNTER ||
      !(attributes & TPMA_NV_AUTHWRITE) || !(attributes & TPMA_NV_AUTHREAD)) {
    return Error(ErrorCode::kFailedPrecondition, what + " in " + where_ +
                                                     " is defined, but not as a counter written and read with its "
                                                     "auth value; another program uses this index");
  }
  TPM2B_AUTH value{};
  WipeOnExit wipe(&value);
  VTM_RETURN_IF_ERROR(ToAuth(auth, &value));
  rc = Esys_TR_SetAuth(esys(), nv->get(), &value);
  if (rc != TSS2_RC_SUCCESS) return TpmError("setting the auth value of " + what, rc);
  return OkStatus();
}

Status EsysTpm::DefineNvCounter(uint32_t nv_index, const SecretBytes& auth) {
  const std::string what = "NV counter " + Hex32(nv_index);
  if (nv_index < 0x01800000 || nv_index > 0x01bfffff) {
    return Error(
        ErrorCode::kInvalidArgument,
        Hex32(nv_index) + " is not in the owner's NV range of the TCG handle registry (0x01800000 to 0x01bfffff)");
  }
  VTM_ASSIGN_OR_RETURN(bool exists, HandleExists(nv_index));
  if (exists) return Error(ErrorCode::kAlreadyExists, what + " is defined already in " + where_);
  TPM2B_AUTH value{};
  WipeOnExit wipe(&value);
  VTM_RETURN_IF_ERROR(ToAuth(auth, &value));
  TPM2B_NV_PUBLIC nv_public{};
  nv_public.nvPublic.nvIndex = nv_index;
  nv_public.nvPublic.nameAlg = TPM2_ALG_SHA256;
  nv_public.nvPublic.attributes = kNvCounterAttributes;
  nv_public.nvPublic.dataSize = sizeof(uint64_t);
  ScopedTrRef nv(esys());
  TSS2_RC rc = Esys_NV_DefineSpace(esys(), ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &value,
                                   &nv_public, nv.out());
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_NV_DefineSpace(" + what + ", owner hierarchy)", rc);
  return OkStatus();
}

Status EsysTpm::IncrementNvCounter(uint32_t nv_index, const SecretBytes& auth) {
  const std::string what = "NV counter " + Hex32(nv_index);
  ScopedTrRef nv(esys());
  VTM_RETURN_IF_ERROR(OpenNvCounter(nv_index, auth, &nv, what));
  TSS2_RC rc = Esys_NV_Increment(esys(), nv.get(), nv.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE);
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_NV_Increment(" + what + ")", rc);
  return OkStatus();
}

Result<std::optional<uint64_t>> EsysTpm::ReadNvCounter(uint32_t nv_index, const SecretBytes& auth) {
  const std::string what = "NV counter " + Hex32(nv_index);
  ScopedTrRef nv(esys());
  VTM_RETURN_IF_ERROR(OpenNvCounter(nv_index, auth, &nv, what));
  EsysOut<TPM2B_MAX_NV_BUFFER> data;
  TSS2_RC rc = Esys_NV_Read(esys(), nv.get(), nv.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, sizeof(uint64_t),
                            0, data.out());
  if (internal::TpmResponseCode(rc) == TPM2_RC_NV_UNINITIALIZED) return std::optional<uint64_t>();
  if (rc != TSS2_RC_SUCCESS) return TpmError("TPM2_NV_Read(" + what + ")", rc);
  if (data->size != sizeof(uint64_t)) {
    return Error(ErrorCode::kTpm,
                 "TPM2_NV_Read(" + what + ") returned " + std::to_string(data->size) + " bytes, not 8");
  }
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(uint64_t); ++i) v = (v << 8) | data->buffer[i];  // big-endian
  return std::optional<uint64_t>(v);
}

}  // namespace internal
}  // namespace vtm
