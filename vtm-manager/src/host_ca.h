// The host CA that signs every vTPM certificate (ISO/IEC 27071 B.3.2.3). In the default `tpm`
// residency the CA key is an ECC P-256 signing key created inside the host TPM that never
// leaves it; its certificate carries a TPM2_Certify of the key by the host AK, so a verifier
// can check that the key lives in that TPM.
//
// In the `sealed` residency (for hosts whose TPM is too slow to sign every certificate) the CA
// key is a software P-256 key wrapped by the master key (so it exists in clear only in vtmd's
// memory, and only on this host in its sealed PCR state); its public key is bound into one host
// quote by the AK (qualifying data = SHA-256 of the CA key's SubjectPublicKeyInfo), which any
// verifier checks with tpm2_checkquote.
//
// Files in <state>/host-identity/ (0700): ca-key-bound.blob (TPM-encrypted key blob; its auth
// value derives from the master key) or ca-key.sealed
// + ca-key.quote (sealed residency), ca.pem (the CA certificate: self-signed, or the fleet
// CA's), ca-chain.pem (the fleet CA chain, if installed).
//
// Thread safety: all methods may be called from any thread; TPM signatures go through the
// HostTpmExecutor.
#pragma once

#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "host_attestation_key.h"
#include "master_key.h"
#include "registry.h"
#include "vtm/error.h"
#include "vtm/host_tpm_executor.h"
#include "vtm/x509.h"

namespace vtm {

// A ca::Signer over a signing key inside the host TPM, signing through the executor. tpm and
// key must outlive the signer.
class TpmSigner : public ca::Signer {
 public:
  TpmSigner(HostTpmExecutor& tpm, const TpmKey& key, std::string spki)
      : tpm_(tpm), key_(key), spki_(std::move(spki)) {}
  Result<std::string> SignDigest(const std::string& digest) override;
  const std::string& PublicKeySpki() const override { return spki_; }

 private:
  HostTpmExecutor& tpm_;
  const TpmKey& key_;
  std::string spki_;
};

enum class CaResidency { kTpm, kSealed };
Result<CaResidency> ParseCaResidency(const std::string& text);

// How long what the host CA signs is valid, in days from issuance; 0: no expiry
// (notAfter 99991231235959Z, RFC 5280 4.1.2.5, the TCG EK profile's usual choice).
struct CertificateLifetimes {
  uint32_t ca_days = 0;    // the host CA's self-signed certificate (set when it is created)
  uint32_t vtpm_days = 0;  // every vTPM EK/AK/IK certificate (and swtpm_setup's EK certificates)
};

class HostCa {
 public:
  // Loads the host CA from dir, creating what is missing (CA key, self-signed CA certificate).
  // ak and master_key must outlive the HostCa. quote_pcrs: the host PCRs the sealed-residency
  // quote covers. A residency other than the one the CA key was created with is refused (the
  // CA key cannot move between residencies).
  static Result<std::unique_ptr<HostCa>> LoadOrCreate(HostAttestationKey& ak, const std::string& dir,
                                                      const std::string& host_name, CaResidency residency,
                                                      const MasterKey& master_key, const PcrSelection& quote_pcrs,
                                                      const CertificateLifetimes& lifetimes = {});
  ~HostCa();
  HostCa(const HostCa&) = delete;
  HostCa& operator=(const HostCa&) = delete;

  CaResidency residency() const { return residency_; }
  // Sealed residency: the host AK's quote binding the CA public key (empty in `tpm`).
  const TpmAttestation& ca_key_quote() const { return ca_quote_; }

  // The validity of a certificate issued at `now`: from a minute before (clock skew) to
  // lifetimes.vtpm_days ahead, or no expiry, but never beyond the CA certificate's notAfter;
  // kFailedPrecondition once the CA certificate has expired.
  Result<ca::Validity> NewCertificateValidity(std::time_t now) const;
  // The host CA certificate's notAfter (seconds since the epoch; 0 if it does not expire).
  std::time_t ca_not_after() const;

  // The CA key as a Signer.
  ca::Signer& ca_signer() { return *signer_; }
  // DER of the CA certificate that issues vTPM certificates.
  std::string ca_certificate() const;
  // The CA chain a vTPM stores at NV 0x01C00100: the CA certificate, then any fleet chain (DER, concatenated).
  std::string ca_chain_der() const;

  // What the CA signs for one certificate, given its issuer (the CA certificate) and serial.
  using CertificateMaker =
      std::function<Result<std::string>(ca::Signer& ca_key, const std::string& issuer_der, uint64_t serial)>;
  // The one path every certificate of this CA takes: the next serial from the registry, the
  // signature, and the registry record (so a certificate that exists is always known, and is
  // revoked with its VM). owner: the VM UUID or another label (e.g. "swtpm_setup:<id>").
  Result<CertRecord> Issue(Registry& registry, const std::string& owner, const std::string& kind,
                           const CertificateMaker& make);

  // A PKCS#10 request for the CA key, for an operator's fleet CA (same subject and evidence).
  Result<std::string> CreateCsr();
  // Installs a fleet-CA-issued certificate for the CA key (and its chain). Refused unless the
  // certificate is for this CA key, is a CA certificate and chain_pem (if given) signs it.
  Status InstallCertificate(const std::string& cert_pem, const std::string& chain_pem);

 private:
  HostCa(HostAttestationKey& ak) : ak_(ak) {}
  Result<ca::CertifyEvidence> CertifyCaKey();
  Status LoadOrCreateSealedCaKey(const MasterKey& master_key, const PcrSelection& quote_pcrs);
  Status LoadCertificate(const std::string& cert_path);

  HostAttestationKey& ak_;
  std::string dir_;
  std::string host_name_;
  CaResidency residency_ = CaResidency::kTpm;
  CertificateLifetimes lifetimes_;
  TpmKey ca_key_;  // `tpm` residency: kept loaded; flushed through the executor on destruction
  TpmAttestation ca_quote_;
  TpmKeyPublic ca_public_;
  std::unique_ptr<ca::Signer> signer_;
  mutable std::mutex mu_;  // guards the certificate fields, which InstallCertificate replaces
  std::string ca_cert_der_;
  std::string chain_der_;
};

}  // namespace vtm
