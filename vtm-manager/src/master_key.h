// The manager's master key: 32 random bytes sealed by the host TPM under a PCR policy,
// unsealed once when vtmd starts. Per-VM keys are wrapped by it in software (AES-256-GCM),
// so starting a VM costs no host-TPM operation.
//
// Wrapped key format (stored in the registry): "VTMK" | version(1)=1 | nonce(12) |
// ciphertext | tag(16). The AAD binds a wrapped key to its VM and purpose, so a blob moved
// to another VM's row or purpose fails to unwrap.
#pragma once

#include <string>

#include "vtm/error.h"
#include "vtm/host_tpm.h"
#include "vtm/secret.h"

namespace vtm {

class MasterKey {
 public:
  // First start: creates a key, seals it to the current values of `pcrs` and writes the sealed
  // object to sealed_path (atomically). Later starts: unseals it; kPolicyMismatch names the
  // PCRs that changed. If `pcrs` differs from the selection the key was sealed to, the key is
  // unsealed under the old policy (proving the host is still in the sealed state) and re-sealed
  // to the new selection.
  static Result<MasterKey> LoadOrCreate(HostTpm& tpm, const std::string& sealed_path, const PcrSelection& pcrs);
  // For tests and tools: a master key from given bytes.
  static MasterKey FromBytes(SecretBytes key) { return MasterKey(std::move(key)); }

  Result<std::string> Wrap(const SecretBytes& key, const std::string& aad) const;
  Result<SecretBytes> Unwrap(const std::string& wrapped, const std::string& aad) const;

  MasterKey(MasterKey&&) = default;
  MasterKey& operator=(MasterKey&&) = default;

 private:
  explicit MasterKey(SecretBytes key) : key_(std::move(key)) {}
  SecretBytes key_;
};

// The AAD for one of a VM's keys, e.g. WrapLabel(uuid, "state-key").
std::string WrapLabel(const std::string& vm_uuid, const std::string& purpose);

}  // namespace vtm
