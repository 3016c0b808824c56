// The host's TPM, reached through tpm2-tss ESAPI from a TCTI string: "device:/dev/tpmrm0"
// on a real host, "swtpm:host=127.0.0.1,port=N" for a simulated one. This is the only
// place where TSS2 return codes exist; they leave it as vtm::Error (kTpm / kPolicyMismatch)
// with the decoded text (Tss2_RC_Decode) and the TPM command that produced them.
//
// Thread safety: a HostTpm is not thread-safe; the daemon serializes access to it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "vtm/error.h"
#include "vtm/secret.h"

namespace vtm {

// Which PCRs of which bank a policy covers, e.g. "sha256:0,1,2,3,4,5,6,7".
struct PcrSelection {
  std::string bank = "sha256";  // sha1, sha256, sha384 or sha512
  std::vector<int> pcrs;        // sorted, unique, each 0..23

  static Result<PcrSelection> Parse(const std::string& text);
  std::string ToString() const;
};

// PCR index -> digest bytes, as read from one bank.
struct PcrValues {
  PcrSelection selection;
  std::map<int, std::string> digests;
};

// A secret sealed under the host TPM's storage key with a PolicyPCR. Holds only
// TPM-encrypted material and public metadata, so it may be stored as a plain file.
struct SealedObject {
  std::string tpm2b_public;   // marshalled TPM2B_PUBLIC of the sealed data object
  std::string tpm2b_private;  // marshalled TPM2B_PRIVATE (encrypted by the storage key)
  PcrValues pcrs_at_seal;     // the PCR values the policy was computed from

  // A versioned, length-checked byte format ("VTMSEAL1" ...); Parse rejects anything malformed
  // with kDataLoss and never reads out of bounds.
  std::string Serialize() const;
  static Result<SealedObject> Parse(const std::string& bytes);
};

class HostTpm {
 public:
  virtual ~HostTpm() = default;

  // Opens the TPM behind the TCTI and sends TPM2_Startup(CLEAR) if the TPM needs it.
  static Result<std::unique_ptr<HostTpm>> Open(const std::string& tcti);

  // What this TPM is: TCTI, manufacturer, firmware version (for logs and `vtmctl host`).
  virtual std::string Describe() = 0;

  virtual Result<PcrValues> ReadPcrs(const PcrSelection& selection) = 0;
  // Extends digest (of the bank's size) into pcr of selection's bank.
  virtual Status ExtendPcr(const std::string& bank, int pcr, const std::string& digest) = 0;
  virtual Result<SecretBytes> GetRandom(size_t n) = 0;

  // Seals secret (at most 128 bytes) under the storage primary key (owner hierarchy, ECC P-256,
  // re-created from its template on each call) so that it unseals only while the PCRs in
  // selection hold their current values.
  virtual Result<SealedObject> Seal(const SecretBytes& secret, const PcrSelection& selection) = 0;
  // Seals secret like Seal, but to the given PCR values instead of the current ones (e.g. the
  // values expected after a planned firmware update): values.selection names the PCRs and
  // values.digests holds exactly one digest of the bank's size for each. It unseals only
  // while the PCRs hold exactly these values. kInvalidArgument for a value of the wrong size,
  // a missing or extra PCR.
  virtual Result<SealedObject> SealToPcrValues(const SecretBytes& secret, const PcrValues& values) = 0;
  // Unseals. If the PCRs changed, fails with kPolicyMismatch and a message naming every PCR
  // whose value differs from pcrs_at_seal, e.g. "host PCR sha256:7 changed since the master key
  // was sealed".
  virtual Result<SecretBytes> Unseal(const SealedObject& sealed) = 0;

  // The owner hierarchy's authorization value, for every command authorized by TPM_RH_OWNER
  // (the storage primary, persistent objects, NV reads). Hosts often set one
  // (tpm2_changeauth -c owner); without it such commands fail with TPM_RC_BAD_AUTH.
  virtual void SetOwnerAuth(const SecretBytes& auth) = 0;
};

// An swtpm process playing the host TPM, for development, demos and tests. Its state lives in
// state_dir, so its seeds (and so everything sealed under it) persist across restarts, while
// PCRs reset on every start as they do on a reboot. NOT a hardware root of trust: every Start()
// logs a loud warning saying so.
class SimulatedHostTpm {
 public:
  static Result<std::unique_ptr<SimulatedHostTpm>> Start(const std::string& state_dir);
  ~SimulatedHostTpm();  // stops the swtpm process

  // "swtpm:host=127.0.0.1,port=N"
  const std::string& tcti() const { return tcti_; }
  int pid() const;

 private:
  SimulatedHostTpm() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string tcti_;
};

}  // namespace vtm
