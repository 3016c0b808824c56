// The host's attestation identity in its TPM (ISO/IEC 27071 6.3): the host EK and its
// manufacturer certificate (read from the TCG NV indices), and a host AK bound to that EK by
// credential activation when it is created. The AK quotes host PCRs (RA client, sealed CA
// residency) and certifies the host CA key; an outside verifier proves AK and EK share this
// TPM with ActivateCredential.
//
// Files in <state>/host-identity/ (0700): ak.blob (TPM-encrypted key blob, only this TPM can
// load it; format: see EncodeKeyBlob).
//
// Thread safety: all methods may be called from any thread; every TPM command goes through the
// HostTpmExecutor.
#pragma once

#include <memory>
#include <string>

#include "vtm/error.h"
#include "vtm/host_tpm_executor.h"
#include "vtm/tpm.h"

namespace vtm {

// The file format of ak.blob / ca-key.blob (and ca-key.quote): two parts, each preceded by its
// length as a u32 big-endian (TPM2B_PUBLIC then TPM2B_PRIVATE; TPMS_ATTEST then TPMT_SIGNATURE).
std::string EncodeTwoParts(const std::string& first, const std::string& second);
Result<std::pair<std::string, std::string>> DecodeTwoParts(const std::string& bytes, const std::string& path_for_errors);
Result<TpmKeyBlob> BlobFromString(const std::string& bytes, const std::string& path_for_errors);
Result<TpmKeyBlob> ReadKeyBlob(const std::string& path);

// Loads the key blob at path under srk, or creates a key of `role` there first (*created then).
// Runs inside an executor job (it takes the Tpm the job was given).
Result<TpmKey> LoadOrCreateKeyFile(Tpm& tpm, const TpmKey& srk, KeyRole role, const std::string& path, bool* created);

class HostAttestationKey {
 public:
  // Reads the host EK (and its certificate), loads the AK from dir/ak.blob or creates it and
  // proves it co-resident with the EK. tpm must outlive the HostAttestationKey.
  static Result<std::unique_ptr<HostAttestationKey>> LoadOrCreate(HostTpmExecutor& tpm, const std::string& dir);
  ~HostAttestationKey();
  HostAttestationKey(const HostAttestationKey&) = delete;
  HostAttestationKey& operator=(const HostAttestationKey&) = delete;

  const TpmKeyPublic& ek_public() const { return ek_public_; }
  const std::string& ek_certificate() const { return ek_cert_der_; }  // DER; empty if the TPM has none
  const TpmKeyPublic& ak_public() const { return ak_public_; }
  HostTpmExecutor& executor() const { return tpm_; }

  // TPM2_Quote by the AK over selection with qualifying data, and the PCR values it covers,
  // read in the same executor job (nothing of vtmd's can extend in between).
  Result<std::pair<TpmAttestation, PcrValues>> Quote(const PcrSelection& selection, const std::string& qualifying);
  // TPM2_Certify of object (loaded in this executor's TPM) by the AK. Runs inside an executor
  // job: pass the Tpm the job was given.
  Result<TpmAttestation> CertifyInJob(Tpm& tpm, const TpmKey& object, const std::string& qualifying) const;

  // Activates, in the host TPM, a credential made for the host AK with the host EK's public
  // key, and returns its secret: how an outside verifier checks that the AK and the EK share
  // this TPM. Fails for a credential made for any other name.
  Result<SecretBytes> ActivateCredential(const TpmCredential& credential);

 private:
  explicit HostAttestationKey(HostTpmExecutor& tpm) : tpm_(tpm) {}
  HostTpmExecutor& tpm_;
  TpmKey ak_;  // kept loaded; flushed through the executor on destruction
  TpmKeyPublic ek_public_, ak_public_;
  std::string ek_cert_der_;
};

// The vTPM-side credential-activation challenge: TPM2_MakeCredential on the host TPM with
// another TPM's EK public, for the object named object_name.
Result<TpmCredential> MakeCredentialOnHostTpm(HostTpmExecutor& tpm, const std::string& ek_tpm2b_public,
                                              const std::string& secret, const std::string& object_name);

}  // namespace vtm
