// The host's attestation identity in its TPM (ISO/IEC 27071 6.3): the host EK and its
// manufacturer certificate (read from the TCG NV indices), and a host AK bound to that EK by
// credential activation when it is created. The AK quotes host PCRs (RA client, sealed CA
// residency) and certifies the host CA key; an outside verifier proves AK and EK share this
// TPM with ActivateCredential.
//
// Files in <state>/host-identity/ (0700): ak-bound.blob (TPM-encrypted key blob, only this TPM
// can load it, and only a holder of its auth value can use it; format: see EncodeTwoParts).
//
// Thread safety: all methods may be called from any thread; every TPM command goes through the
// HostTpmExecutor.
#pragma once

#include <memory>
#include <string>

#include "vtm/error.h"
#include "vtm/host_tpm_executor.h"
#include "vtm/secret.h"
#include "vtm/tpm.h"

namespace vtm {

// The file format of ak.blob / ca-key.blob (and ca-key.quote): two parts, each preceded by its
// length as a u32 big-endian (TPM2B_PUBLIC then TPM2B_PRIVATE; TPMS_ATTEST then TPMT_SIGNATURE).
std::string EncodeTwoParts(const std::string& first, const std::string& second);
Result<std::pair<std::string, std::string>> DecodeTwoParts(const std::string& bytes, const std::string& path_for_errors);
Result<TpmKeyBlob> BlobFromString(const std::string& bytes, const std::string& path_for_errors);
Result<TpmKeyBlob> ReadKeyBlob(const std::string& path);

// A host key vtmd keeps in the host TPM (name "ak" or "ca-key"): its blob, whose auth value
// derives from the master key (MasterKey::DeriveAuth), and the blob an earlier vtm wrote with
// no auth value.
std::string BoundKeyPath(const std::string& dir, const std::string& name);
// The labels vtmd derives the host keys' auth values under.
inline constexpr char kHostAkAuthLabel[] = "host AK";
inline constexpr char kCaKeyAuthLabel[] = "host CA key";
std::string LegacyKeyPath(const std::string& dir, const std::string& name);
// Loads BoundKeyPath(dir, name) under srk with `auth` set for its use, or creates a key of
// `role` with that auth value there first (*created then). A LegacyKeyPath blob without a
// bound one is bound first (TPM2_ObjectChangeAuth; same public key), then removed. Runs inside
// an executor job (it takes the Tpm the job was given).
Result<TpmKey> LoadOrCreateKeyFile(Tpm& tpm, const TpmKey& srk, KeyRole role, const std::string& dir,
                                   const std::string& name, const SecretBytes& auth, bool* created);

class HostAttestationKey {
 public:
  // Reads the host EK (and its certificate), loads the AK from dir/ak-bound.blob or creates it and
  // proves it co-resident with the EK. tpm must outlive the HostAttestationKey.
  // key_auth: the AK's auth value (vtmd: the master key's DeriveAuth("host AK")).
  static Result<std::unique_ptr<HostAttestationKey>> LoadOrCreate(HostTpmExecutor& tpm, const std::string& dir,
                                                                  const SecretBytes& key_auth);
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
