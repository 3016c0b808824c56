// The manager's master key: 32 random bytes sealed by the host TPM under a PCR policy,
// unsealed once when vtmd starts. Per-VM keys are wrapped by it in software (AES-256-GCM),
// so starting a VM costs no host-TPM operation.
//
// Wrapped key format (stored in the registry): "VTMK" | version(1)=1 | nonce(12) |
// ciphertext | tag(16). The AAD binds a wrapped key to its VM and purpose, so a blob moved
// to another VM's row or purpose fails to unwrap.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "vtm/error.h"
#include "vtm/host_tpm.h"
#include "vtm/secret.h"

namespace vtm {

// What MasterKey::PrepareReseal sealed the second copy to.
struct PreparedReseal {
  PcrValues expected;        // every PCR of the selection: the new values given, the others as now
  std::vector<int> changed;  // the PCRs whose given value differs from their value now
  std::string path;          // where the prepared copy was written
  std::string current_path;  // the copy in use, which stays
};

class MasterKey {
 public:
  // First start: creates a key, seals it to the current values of `pcrs` and writes the sealed
  // object to sealed_path (atomically). Later starts: unseals it; kPolicyMismatch names the
  // PCRs that changed. If `pcrs` differs from the selection the key was sealed to, the key is
  // unsealed under the old policy (proving the host is still in the sealed state) and re-sealed
  // to the new selection.
  // Re-seal (a planned firmware update): if sealed_path fails on the PCR policy and a copy
  // prepared by PrepareReseal exists (PreparedPath(sealed_path)), that copy is tried; if it
  // unseals, it is renamed over sealed_path (atomically) and used. If neither unseals, the
  // error names both. The key never exists in clear outside the TPM and this process.
  static Result<MasterKey> LoadOrCreate(HostTpm& tpm, const std::string& sealed_path, const PcrSelection& pcrs);
  // Where PrepareReseal writes, next to sealed_path.
  static std::string PreparedPath(const std::string& sealed_path) { return sealed_path + ".prepared"; }

  // Before a planned change of host PCRs (a firmware update): seals a second copy of this key
  // under the same storage key, to the PCRs of `pcrs` holding the values in `expected`
  // (PCR index -> digest) and, for the PCRs `expected` does not name, their current values.
  // Writes it atomically to PreparedPath(sealed_path), replacing an earlier prepared copy; the
  // copy in sealed_path stays as it is. kInvalidArgument for no value, a PCR outside `pcrs` or
  // a value not of the bank's digest size.
  Result<PreparedReseal> PrepareReseal(HostTpm& tpm, const std::string& sealed_path, const PcrSelection& pcrs,
                                       const std::map<int, std::string>& expected) const;
  // For tests and tools: a master key from given bytes.
  static MasterKey FromBytes(SecretBytes key) { return MasterKey(std::move(key)); }

  // 32 bytes derived from the master key for `label` (HKDF-SHA256): the auth value of the
  // host keys vtmd keeps in the host TPM (host AK, CA key), so they sign only for a process that
  // unsealed the master key, i.e. on this host in its sealed PCR state.
  Result<SecretBytes> DeriveAuth(const std::string& label) const;
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
