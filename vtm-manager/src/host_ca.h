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
// Key rotation (docs/architecture.md, "Host CA key rotation"): BeginRotation makes a pending
// key beside the current one (ca-key-next*, same residency). A certificate for it (self-signed
// at once, or the fleet CA's through InstallCertificate) is written as ca-next.pem
// [+ ca-next-chain.pem]: from then on the rotation goes forward. The switch copies the old CA
// (certificate, chain, key) into retired/<its serial>/, then puts the new chain, certificate
// and key in place; every step can be repeated, and LoadOrCreate finishes a switch a crash
// interrupted. The old key then signs its final CRL (WriteFinalCrl, retired/<serial>/crl.pem)
// and is destroyed; the CA certificate and the final CRL stay for relying parties.
//
// Thread safety: all methods may be called from any thread; TPM signatures go through the
// HostTpmExecutor.
#pragma once

#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

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
  TpmAttestation ca_key_quote() const;

  // The validity of a certificate issued at `now`: from a minute before (clock skew) to
  // lifetimes.vtpm_days ahead, or no expiry, but never beyond the CA certificate's notAfter;
  // kFailedPrecondition once the CA certificate has expired.
  Result<ca::Validity> NewCertificateValidity(std::time_t now) const;
  // The host CA certificate's notAfter (seconds since the epoch; 0 if it does not expire).
  std::time_t ca_not_after() const;

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

  // A CRL (DER) of the given revoked certificates, signed by the CA key now in use.
  Result<std::string> CreateCrl(const std::vector<ca::RevokedCert>& revoked, uint64_t crl_number, std::time_t now);

  // A PKCS#10 request for the CA key, for an operator's fleet CA (same subject and evidence).
  // pending: for the pending key of a rotation (kFailedPrecondition if there is none).
  Result<std::string> CreateCsr(bool pending = false);
  // Installs a fleet-CA-issued certificate for the CA key (and its chain). Refused unless the
  // certificate is for this CA key or the pending one, is a CA certificate and chain_pem (if
  // given) signs it. For the pending key it switches the host CA to that key (*rotated = true):
  // what remains of the rotation is CompleteCaRotation's (ca_rotation.h).
  Status InstallCertificate(const std::string& cert_pem, const std::string& chain_pem, bool* rotated = nullptr);

  // Rotation of the CA key. Creates the pending key (same residency as the current one).
  // self_signed: also its self-signed certificate, and switches to it at once (returns "");
  // otherwise returns the pending key's CSR (DER) for the fleet CA, and InstallCertificate of
  // its certificate switches. kFailedPrecondition while a rotation is pending or incomplete.
  Result<std::string> BeginRotation(bool self_signed);
  // Discards the pending key of a rotation that has no certificate yet.
  Status CancelRotation();
  // Whether a pending key waits for its certificate.
  bool rotation_pending() const;
  // Whether the current CA certificate is self-signed (not issued by a fleet CA).
  bool self_signed() const;
  // The retired CAs (by the hex serial of their certificate) whose final CRL is not written yet.
  std::vector<std::string> RetiredAwaitingFinalCrl() const;
  // DER of a retired CA's certificate.
  Result<std::string> RetiredCertificate(const std::string& id) const;
  // Signs the final CRL of retired CA `id` with its key (revoked: every certificate it issued),
  // keeps it as retired/<id>/crl.pem and destroys the retired key. Done already: OK.
  Status WriteFinalCrl(const std::string& id, const std::vector<ca::RevokedCert>& revoked, uint64_t crl_number,
                       std::time_t now);
  // The certificate (DER) and final CRL (PEM) of every retired CA whose final CRL is written.
  struct RetiredCa {
    std::string id;
    std::string certificate;
    std::string crl;
  };
  Result<std::vector<RetiredCa>> RetiredCas() const;

 private:
  // One CA key, loaded for signing.
  struct LoadedKey {
    std::unique_ptr<TpmKey> tpm_key;  // `tpm` residency; flushed through the executor (Unload)
    TpmKeyPublic pub;
    TpmAttestation quote;  // `sealed` residency
    std::unique_ptr<ca::Signer> signer;
  };
  HostCa(HostAttestationKey& ak) : ak_(ak) {}
  // The key `name` in key_dir (ca-key, ca-key-next), created there first if create and absent;
  // kNotFound if absent and not create.
  Result<LoadedKey> LoadKey(const std::string& key_dir, const std::string& name, bool create);
  void Unload(LoadedKey& key);
  // Runs work (which loads another CA key) with the key in use flushed from the TPM and loaded
  // again after it: a TPM may have only three object slots (the AK, the CA key, one more).
  Status WithActiveKeyUnloaded(const std::function<Status()>& work);
  bool KeyExists(const std::string& key_dir, const std::string& name) const;
  Result<ca::CertifyEvidence> CertifyKey(const LoadedKey& key);
  Result<std::string> SelfSignedCertificate(LoadedKey& key);
  // The certificate at cert_path (and its chain at chain_path, if it issued it), checked to be
  // for spki and, if it carries TPM2_Certify evidence, by this host's AK.
  Status LoadCertificate(const std::string& cert_path, const std::string& chain_path, const std::string& spki,
                         std::string* cert_der, std::string* chain_der) const;
  // The file steps of a switch to the key of ca-next.pem (see the top of this file); each can
  // be repeated. Then (reload) the new key and certificate replace the ones in use.
  Status SwitchFiles();
  Status SwitchToNext();
  Status WritePendingCertificate(const std::string& cert_der, const std::string& chain_der);

  HostAttestationKey& ak_;
  const MasterKey* master_key_ = nullptr;
  PcrSelection quote_pcrs_;
  std::string dir_;
  std::string host_name_;
  CaResidency residency_ = CaResidency::kTpm;
  CertificateLifetimes lifetimes_;
  std::mutex rotation_mu_;  // one rotation step at a time (begin, install, switch, final CRL)
  // Held shared by every signature of the CA key in use, exclusively while a switch replaces it,
  // so nothing is signed by a key the switch retired after it retired it.
  mutable std::shared_mutex key_mu_;
  LoadedKey active_;
  mutable std::mutex mu_;  // guards the fields below, which InstallCertificate and a switch replace
  std::string ca_cert_der_;
  std::string chain_der_;
  std::string pending_spki_;  // the pending key's, while one waits for its certificate
};

}  // namespace vtm
