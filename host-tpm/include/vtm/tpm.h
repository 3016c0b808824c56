// A TPM 2.0 reached through tpm2-tss ESAPI: the host's TPM (a TCTI string) or a vTPM that vtmd
// provisions before any VM attaches (swtpm's data channel, a connected socket). One class
// serves both, because creating an EK, an AK, certifying a key or writing an NV certificate is
// the same TPM work whichever TPM does it. TSS2 return codes become vtm::Error here and
// nowhere else (see internal/tpm_error.h).
//
// Thread safety: a Tpm is not thread-safe; callers serialize access.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "vtm/error.h"
#include "vtm/host_tpm.h"
#include "vtm/secret.h"
#include "vtm/unique_fd.h"

namespace vtm {

enum class KeyAlg { kEccP256, kRsa2048 };

// What a key is for; each role has one fixed template (documented in docs/architecture.md).
enum class KeyRole {
  kAttestation,  // AK: restricted signing, ECDSA-SHA256 (ECC P-256), fixedTPM|fixedParent
  kSigning,      // IK / CA key: unrestricted signing, ECDSA-SHA256 (ECC P-256), fixedTPM|fixedParent
  // Migration import key: ECC P-256 restricted decryption key, the SRK's shape (AES-128-CFB,
  // SHA-256 name, fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|noDA, no
  // adminWithPolicy). A source wraps a transport key to it with MakeCredential; only this TPM
  // can activate it (ActivateCredentialWithKey).
  kImport,
};

// Public parts of a TPM key, in the forms verifiers and X.509 need.
struct TpmKeyPublic {
  std::string tpm2b_public;  // marshalled TPM2B_PUBLIC
  std::string name;          // TPM name: nameAlg (2 bytes) || digest of TPMT_PUBLIC
  std::string spki_der;      // DER SubjectPublicKeyInfo of the same key
};

// A key created under a parent: reloadable with Tpm::LoadKey. The private part is encrypted
// by the parent (only this TPM can load it), so the blob may be stored as a file.
struct TpmKeyBlob {
  std::string tpm2b_public;
  std::string tpm2b_private;
};

// A signed TPM attestation (TPM2_Certify, TPM2_Quote).
struct TpmAttestation {
  std::string attest;     // marshalled TPMS_ATTEST (the bytes the signature covers)
  std::string signature;  // marshalled TPMT_SIGNATURE
};

// TPM2_MakeCredential output, for TPM2_ActivateCredential.
struct TpmCredential {
  std::string id_object;         // marshalled TPM2B_ID_OBJECT
  std::string encrypted_secret;  // marshalled TPM2B_ENCRYPTED_SECRET
};

class Tpm;

// A loaded object (transient: flushed on destruction; persistent: left in place, only the
// TSS's reference to it is released). Must not outlive the Tpm that made it.
class TpmKey {
 public:
  TpmKey() = default;
  TpmKey(Tpm* tpm, uint32_t esys_handle, bool transient) : tpm_(tpm), handle_(esys_handle), transient_(transient) {}
  ~TpmKey();
  TpmKey(TpmKey&& o) noexcept;
  TpmKey& operator=(TpmKey&& o) noexcept;
  TpmKey(const TpmKey&) = delete;
  TpmKey& operator=(const TpmKey&) = delete;
  uint32_t esys_handle() const { return handle_; }
  bool valid() const { return tpm_ != nullptr; }
  const Tpm* owner() const { return tpm_; }  // lets a Tpm refuse another TPM's key

 private:
  Tpm* tpm_ = nullptr;
  uint32_t handle_ = 0;
  bool transient_ = false;
};

class Tpm : public HostTpm {
 public:
  // From a TCTI string ("device:/dev/tpmrm0", "swtpm:host=127.0.0.1,port=N"); sends
  // TPM2_Startup(CLEAR) if needed.
  static Result<std::unique_ptr<Tpm>> OpenTcti(const std::string& tcti);
  // Over a connected stream socket that carries raw TPM commands and responses (swtpm's data
  // channel, handed over with CMD_SET_DATAFD). `label` names the TPM in errors and Describe().
  static Result<std::unique_ptr<Tpm>> OpenStream(UniqueFd fd, const std::string& label);

  // Primaries, re-derived from their templates on each call.
  // EK per the TCG EK Credential Profile 2.x default templates: RSA 2048 (template L-1, cert
  // index 0x01C00002) or ECC NIST P-256 (template L-2, index 0x01C0000A). The same key that
  // `tpm2_createek -G rsa|ecc` recreates.
  virtual Result<TpmKey> CreateEk(KeyAlg alg) = 0;
  // The storage root key, owner hierarchy, ECC P-256 (the TCG SRK template; same as Seal uses).
  virtual Result<TpmKey> CreateSrk() = 0;
  // A KeyRole::kImport key as a primary of the owner hierarchy, made distinct by `unique` (the
  // template's unique.ecc.x, 32 bytes): the same unique re-derives the same key in this TPM
  // (until TPM2_Clear), so nothing secret is stored for it and no parent key occupies one of
  // the few transient slots of a TPM without a resource manager (vtmd keeps its AK and CA key
  // loaded).
  virtual Result<TpmKey> CreateImportPrimary(const std::string& unique) = 0;

  // A key under parent with authValue `auth` (empty: none; at most 32 bytes).
  virtual Result<TpmKeyBlob> CreateKey(const TpmKey& parent, KeyRole role, const SecretBytes& auth) = 0;
  virtual Result<TpmKey> LoadKey(const TpmKey& parent, const TpmKeyBlob& blob) = 0;
  // The authValue this process presents when it uses key (TPM2_Load does not check it; the
  // first use does). Kept in tpm2-tss's handle object, not in TpmKey.
  virtual Status SetKeyAuth(const TpmKey& key, const SecretBytes& auth) = 0;
  // TPM2_ObjectChangeAuth: a new TPM2B_PRIVATE of key (whose current auth is set) with
  // authValue new_auth; the public area, and so the key's name, stay the same. The loaded key
  // keeps its old auth until reloaded from the new blob.
  virtual Result<std::string> ChangeKeyAuth(const TpmKey& key, const TpmKey& parent, const SecretBytes& new_auth) = 0;
  // A public key only (TPM2_LoadExternal, NULL hierarchy), e.g. another TPM's EK.
  virtual Result<TpmKey> LoadExternalPublic(const std::string& tpm2b_public) = 0;
  virtual Result<TpmKeyPublic> ReadPublic(const TpmKey& key) = 0;

  // ECDSA over a SHA-256 digest with an unrestricted signing key; returns the DER
  // ECDSA-Sig-Value that X.509 and OpenSSL expect.
  virtual Result<std::string> SignDigest(const TpmKey& key, const std::string& sha256_digest) = 0;
  // TPM2_Certify of object by signer (an AK), with qualifying data.
  virtual Result<TpmAttestation> Certify(const TpmKey& object, const TpmKey& signer, const std::string& qualifying) = 0;
  // TPM2_Quote over selection by ak, nonce as qualifying data.
  virtual Result<TpmAttestation> Quote(const TpmKey& ak, const PcrSelection& selection, const std::string& nonce) = 0;

  // TPM2_MakeCredential with a loaded (public) EK: wraps secret so that only the TPM holding
  // that EK can recover it, and only for the object named object_name.
  virtual Result<TpmCredential> MakeCredential(const TpmKey& ek_public, const std::string& secret,
                                               const std::string& object_name) = 0;
  // TPM2_ActivateCredential: activated (e.g. an AK) with the EK (policy session with
  // PolicySecret(TPM_RH_ENDORSEMENT)). Returns the secret.
  virtual Result<SecretBytes> ActivateCredential(const TpmKey& activated, const TpmKey& ek,
                                                 const TpmCredential& credential) = 0;
  // TPM2_ActivateCredential with an ordinary password-authorized restricted decryption key as
  // keyHandle (e.g. a KeyRole::kImport key) instead of the EK; activated may be that same key,
  // so a credential made to the key's public area for its own name opens only in this TPM.
  // The secret comes back encrypted on the TCTI (a session salted with key).
  virtual Result<SecretBytes> ActivateCredentialWithKey(const TpmKey& activated, const TpmKey& key,
                                                        const TpmCredential& credential) = 0;

  // TPM2_EvictControl (owner auth) of key to persistent_handle (0x81xxxxxx); replaces any
  // object already there.
  virtual Status MakePersistent(const TpmKey& key, uint32_t persistent_handle) = 0;
  virtual Result<TpmKey> LoadPersistent(uint32_t persistent_handle) = 0;

  // Defines nv_index (platform hierarchy, TPMA_NV_PLATFORMCREATE | PPWRITE | WRITEDEFINE |
  // PPREAD | OWNERREAD | AUTHREAD | NO_DA), writes data in chunks and write-locks it, so that
  // neither the owner nor a guest can rewrite or undefine it once the platform hierarchy is
  // disabled by firmware. An existing index is undefined first (platform auth).
  virtual Status WriteNvCertificate(uint32_t nv_index, const std::string& data) = 0;
  // Reads a whole NV index (owner auth, in chunks). kNotFound if it is not defined.
  virtual Result<std::string> ReadNv(uint32_t nv_index) = 0;

  // Monotonic counters (rollback protection). DefineNvCounter defines nv_index in the owner
  // range of the TCG handle registry (0x01800000-0x01bfffff; owner auth) as TPM_NT_COUNTER
  // with TPMA_NV_AUTHWRITE | AUTHREAD | OWNERREAD | NO_DA and authValue `auth` (at most 32
  // bytes), not orderly (every increment reaches NV). kAlreadyExists if the index is defined.
  // A new counter has no value until its first increment; the TPM then starts it above the
  // value of every counter undefined before, so undefining and redefining one never moves it
  // back.
  virtual Status DefineNvCounter(uint32_t nv_index, const SecretBytes& auth) = 0;
  // TPM2_NV_Increment with the index's authValue. kNotFound if not defined.
  virtual Status IncrementNvCounter(uint32_t nv_index, const SecretBytes& auth) = 0;
  // The counter's value (TPM2_NV_Read, authValue); nullopt before its first increment.
  // kNotFound if not defined, kFailedPrecondition if the index is not a counter.
  virtual Result<std::optional<uint64_t>> ReadNvCounter(uint32_t nv_index, const SecretBytes& auth) = 0;

  // Flushes transient objects and sessions an earlier user left loaded (a process killed
  // before it could flush them: without a resource manager, as with a simulated host TPM or
  // /dev/tpm0, they would hold the TPM's few object slots). Returns how many were flushed.
  // Only for a TPM this process is the sole user of.
  virtual Result<int> FlushLeftovers() = 0;

  // Flushes a transient object (used by TpmKey's destructor).
  virtual void Flush(uint32_t esys_handle) = 0;
  // Releases the TSS's reference to a persistent object, which stays in the TPM (used by
  // TpmKey's destructor).
  virtual void Forget(uint32_t esys_handle) = 0;
};

// SpkiFromTpmPublic and TpmNameOfPublic, for verifiers without a TPM: vtm/tpm_structures.h.

}  // namespace vtm
