// The ESAPI implementation of vtm::Tpm (and so of HostTpm), split over host_tpm.cc (opening,
// PCRs, random, seal/unseal) and tpm.cc (keys, attestation, credentials, NV). The TCTI may be
// tpm2-tss's loader (a TCTI string) or our stream TCTI (a connected socket).
#pragma once

#include <tss2/tss2_esys.h>

#include <memory>
#include <string>
#include <vector>

#include "internal/esys_handles.h"
#include "internal/pcr_bank.h"
#include "vtm/tpm.h"

namespace vtm::internal {

// A TCTI context with the function that finalizes and frees it (they differ by origin).
using TctiPtr = std::unique_ptr<TSS2_TCTI_CONTEXT, void (*)(TSS2_TCTI_CONTEXT*)>;

// The ECC P-256 storage primary (SRK) template; shared by Seal and CreateSrk.
TPM2B_PUBLIC StoragePrimaryTemplate();
// AES-128-CFB, the symmetric key of every storage parent here: the SRK and both TCG EK templates.
TPMT_SYM_DEF_OBJECT Aes128CfbObject();
// A validated copy of selection in canonical form.
Result<PcrSelection> Canonical(const PcrSelection& selection);
TPML_PCR_SELECTION ToTpml(const PcrBank& bank, const std::vector<int>& pcrs);

class EsysTpm final : public Tpm {
 public:
  // `where` names the TPM in Describe() and errors (the TCTI string or the stream's label).
  static Result<std::unique_ptr<Tpm>> Open(TctiPtr tcti, const std::string& where);
  ~EsysTpm() override = default;

  // HostTpm (host_tpm.cc)
  std::string Describe() override { return description_; }
  Result<PcrValues> ReadPcrs(const PcrSelection& selection) override;
  Status ExtendPcr(const std::string& bank, int pcr, const std::string& digest) override;
  Result<SecretBytes> GetRandom(size_t n) override;
  Result<SealedObject> Seal(const SecretBytes& secret, const PcrSelection& selection) override;
  Result<SealedObject> SealToPcrValues(const SecretBytes& secret, const PcrValues& values) override;
  Result<SecretBytes> Unseal(const SealedObject& sealed) override;
  void SetOwnerAuth(const SecretBytes& auth) override;

  // Tpm (tpm.cc)
  Result<TpmKey> CreateEk(KeyAlg alg) override;
  Result<TpmKey> CreateSrk() override;
  Result<TpmKeyBlob> CreateKey(const TpmKey& parent, KeyRole role, const SecretBytes& auth) override;
  Result<TpmKey> LoadKey(const TpmKey& parent, const TpmKeyBlob& blob) override;
  Status SetKeyAuth(const TpmKey& key, const SecretBytes& auth) override;
  Result<std::string> ChangeKeyAuth(const TpmKey& key, const TpmKey& parent, const SecretBytes& new_auth) override;
  Result<TpmKey> LoadExternalPublic(const std::string& tpm2b_public) override;
  Result<TpmKey> CreateImportPrimary(const std::string& unique) override;
  Result<TpmKeyPublic> ReadPublic(const TpmKey& key) override;
  Result<std::string> SignDigest(const TpmKey& key, const std::string& sha256_digest) override;
  Result<TpmAttestation> Certify(const TpmKey& object, const TpmKey& signer, const std::string& qualifying) override;
  Result<TpmAttestation> Quote(const TpmKey& ak, const PcrSelection& selection, const std::string& nonce) override;
  Result<TpmCredential> MakeCredential(const TpmKey& ek_public, const std::string& secret,
                                       const std::string& object_name) override;
  Result<SecretBytes> ActivateCredential(const TpmKey& activated, const TpmKey& ek,
                                         const TpmCredential& credential) override;
  Result<SecretBytes> ActivateCredentialWithKey(const TpmKey& activated, const TpmKey& key,
                                                const TpmCredential& credential) override;
  Status MakePersistent(const TpmKey& key, uint32_t persistent_handle) override;
  Result<TpmKey> LoadPersistent(uint32_t persistent_handle) override;
  Status WriteNvCertificate(uint32_t nv_index, const std::string& data) override;
  Result<std::string> ReadNv(uint32_t nv_index) override;
  Status DefineNvCounter(uint32_t nv_index, const SecretBytes& auth) override;
  Status IncrementNvCounter(uint32_t nv_index, const SecretBytes& auth) override;
  Result<std::optional<uint64_t>> ReadNvCounter(uint32_t nv_index, const SecretBytes& auth) override;
  Result<int> FlushLeftovers() override;
  void Flush(uint32_t esys_handle) override;
  void Forget(uint32_t esys_handle) override;

 private:
  EsysTpm(TctiPtr tcti, std::string where) : where_(std::move(where)), tcti_ctx_(std::move(tcti)) {}

  ESYS_CONTEXT* esys() { return esys_.get(); }
  Result<std::string> DescribeTpm();
  Result<ScopedTr> CreateStoragePrimary();
  Result<ScopedTr> CreatePrimary(ESYS_TR hierarchy, const TPM2B_PUBLIC& in_public, const std::string& what);
  // An unbound session salted with the storage primary's key: its session key is derived from
  // a secret only that TPM can decrypt, so parameter encryption protects secrets on the TCTI
  // (bus, socket) against a passive observer.
  Result<ScopedTr> StartSaltedSession(ESYS_TR storage_primary, TPM2_SE type, TPMA_SESSION attributes);
  Error DiagnosePolicyFailure(const SealedObject& sealed, const Error& tpm_error);
  Result<uint32_t> GetTpmProperty(TPM2_PT property);
  Result<bool> HandleExists(uint32_t tpm_handle);
  // The most bytes one TPM2_NV_Read/Write moves (TPM2_PT_NV_BUFFER_MAX, else 1024).
  Result<uint32_t> NvChunkSize();
  // An ESAPI reference to the defined counter nv_index with auth set; kNotFound if undefined.
  Status OpenNvCounter(uint32_t nv_index, const SecretBytes& auth, ScopedTrRef* nv, const std::string& what);
  // Checks that key belongs to this TPM and is loaded; what names the argument in errors.
  Status CheckKey(const TpmKey& key, const char* what) const;
  TpmKey Adopt(ScopedTr& object) { return TpmKey(this, object.release(), /*transient=*/true); }

  struct EsysDeleter {
    void operator()(ESYS_CONTEXT* esys) const { Esys_Finalize(&esys); }
  };

  std::string where_;
  std::string description_;
  // Declared in this order so the ESYS context is finalized before the TCTI it uses.
  TctiPtr tcti_ctx_;
  std::unique_ptr<ESYS_CONTEXT, EsysDeleter> esys_;
};

}  // namespace vtm::internal
