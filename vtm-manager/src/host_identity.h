// The host's identity in its TPM (ISO/IEC 27071 6.3, B.3.2.3): the host EK and its
// manufacturer certificate (read from the TCG NV indices), a host AK bound to that EK by
// credential activation, and the host CA key that signs every vTPM certificate. In the default
// `tpm` residency the CA key is an ECC P-256 signing key created inside the host TPM that never
// leaves it; its certificate carries a TPM2_Certify of the key by the host AK, so a verifier
// can check that the key lives in that TPM.
//
// In the `sealed` residency (for hosts whose TPM is too slow to sign every certificate) the CA
// key is a software P-256 key wrapped by the master key (so it exists in clear only in vtmd's
// memory, and only on this host in its sealed PCR state); its public key is bound into one host
// quote by the AK (qualifying data = SHA-256 of the CA key's SubjectPublicKeyInfo), which any
// verifier checks with tpm2_checkquote.
//
// Files in <state>/host-identity/ (0700): ak.blob, ca-key.blob (TPM-encrypted key blobs, only
// this TPM can load them) or ca-key.sealed + ca-key.quote (sealed residency), ca.pem (the CA
// certificate: self-signed, or the fleet CA's), ca-chain.pem (the fleet CA chain, if installed).
//
// Thread safety: all methods may be called from any thread; TPM access is serialized inside.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "master_key.h"
#include "vtm/error.h"
#include "vtm/tpm.h"
#include "vtm/x509.h"

namespace vtm {

// The format of ak.blob / ca-key.blob: u32 length + TPM2B_PUBLIC, u32 length + TPM2B_PRIVATE.
Result<TpmKeyBlob> BlobFromString(const std::string& bytes, const std::string& path_for_errors);
Result<TpmKeyBlob> ReadKeyBlob(const std::string& path);

// A ca::Signer over a signing key inside a TPM. mu, if given, serializes access to a TPM that
// others use too. tpm and key must outlive the signer.
class TpmSigner : public ca::Signer {
 public:
  TpmSigner(Tpm& tpm, const TpmKey& key, std::string spki, std::mutex* mu = nullptr)
      : tpm_(tpm), key_(key), spki_(std::move(spki)), mu_(mu) {}
  Result<std::string> SignDigest(const std::string& digest) override;
  const std::string& PublicKeySpki() const override { return spki_; }

 private:
  Tpm& tpm_;
  const TpmKey& key_;
  std::string spki_;
  std::mutex* mu_;
};

enum class CaResidency { kTpm, kSealed };
Result<CaResidency> ParseCaResidency(const std::string& text);

class HostIdentity {
 public:
  // Loads the host identity from dir, creating what is missing (AK, CA key, self-signed CA
  // certificate). tpm and master_key must outlive the HostIdentity. quote_pcrs: the host PCRs
  // the sealed-residency quote covers. A residency other than the one the CA key was created
  // with is refused (the CA key cannot move between residencies).
  static Result<std::unique_ptr<HostIdentity>> LoadOrCreate(Tpm& tpm, const std::string& dir,
                                                           const std::string& host_name, CaResidency residency,
                                                           const MasterKey& master_key,
                                                           const PcrSelection& quote_pcrs);

  CaResidency residency() const { return residency_; }
  // Sealed residency: the host AK's quote binding the CA public key (empty in `tpm`).
  const TpmAttestation& ca_key_quote() const { return ca_quote_; }

  // The CA key as a Signer (signs inside the host TPM).
  ca::Signer& ca_signer() { return *signer_; }
  // DER of the CA certificate that issues vTPM certificates.
  std::string ca_certificate() const;
  // The CA chain a vTPM stores at NV 0x01C00100: the CA certificate, then any fleet chain (DER, concatenated).
  std::string ca_chain_der() const;
  const TpmKeyPublic& ek_public() const { return ek_public_; }
  const std::string& ek_certificate() const { return ek_cert_der_; }  // empty if the TPM has none
  const TpmKeyPublic& ak_public() const { return ak_public_; }

  // A PKCS#10 request for the CA key, for an operator's fleet CA (same subject and evidence).
  Result<std::string> CreateCsr();
  // Installs a fleet-CA-issued certificate for the CA key (and its chain). Refused unless the
  // certificate is for this CA key, is a CA certificate and chain_pem (if given) signs it.
  Status InstallCertificate(const std::string& cert_pem, const std::string& chain_pem);

  // Activates, in the host TPM, a credential made for the host AK with the host EK's public
  // key, and returns its secret: how an outside verifier checks that the AK and the EK share
  // this TPM. Fails for a credential made for any other name.
  Result<SecretBytes> ActivateCredential(const TpmCredential& credential);

  // Makes the vTPM-side credential-activation challenge: MakeCredential on the host TPM with
  // another TPM's EK public, for the object named object_name.
  Result<TpmCredential> MakeCredential(const std::string& ek_tpm2b_public, const std::string& secret,
                                       const std::string& object_name);

 private:
  HostIdentity() = default;
  Result<ca::CertifyEvidence> CertifyCaKey();
  Status LoadOrCreateSealedCaKey(const MasterKey& master_key, const PcrSelection& quote_pcrs);

  Tpm* tpm_ = nullptr;
  std::string dir_;
  std::string host_name_;
  mutable std::mutex mu_;
  TpmKey ak_, ca_key_;  // the only objects kept loaded in the host TPM (ca_key_: `tpm` residency)
  CaResidency residency_ = CaResidency::kTpm;
  TpmAttestation ca_quote_;
  TpmKeyPublic ek_public_, ak_public_, ca_public_;
  std::string ek_cert_der_;
  std::string ca_cert_der_;
  std::string chain_der_;
  std::unique_ptr<ca::Signer> signer_;
};

}  // namespace vtm
