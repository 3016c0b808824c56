// What vtm-instance lets through on QEMU's control channel, beyond what swtpm enforces itself
// (DESIGN.md, "Why vtm-instance should be more than a launcher"): swtpm accepts an unencrypted
// state blob even with --migration-key, lets a second copy of a vTPM run, and exports its state
// to whoever asks. The policy is a pure function of one parsed request and the instance's
// mode, so it is unit-tested and fuzzed apart from the sockets.
//
// Thread safety: plain values and pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "ctrl_protocol.h"

namespace vtm::instance {

enum class RelayMode {
  kActive,    // a normal vTPM
  kIncoming,  // destination of a migration, before its state arrived and INIT passed
  kFenced,    // after a committed migration: no INIT, no state export or import, ever
};
const char* RelayModeName(RelayMode mode);

// PTM_BLOB_TYPE_* (tpm_ioctl.h).
inline constexpr uint32_t kBlobTypePermanent = 1;
inline constexpr uint32_t kBlobTypeVolatile = 2;
inline constexpr uint32_t kBlobTypeSavestate = 3;
// PTM_STATE_FLAG_ENCRYPTED: the blob is encrypted with the migration key.
inline constexpr uint32_t kStateFlagEncrypted = 2;
// swtpm's blob header flag: the data is encrypted with the migration key.
inline constexpr uint16_t kBlobFlagMigrationEncrypted = 2;

struct RelayPolicyState {
  RelayMode mode = RelayMode::kActive;
  bool incoming_admitted = false;   // AdmitIncoming was received (kIncoming only)
  uint32_t imported_blob_types = 0;  // bit (1 << type) per state blob type passed to swtpm
};

// The answer vtm-instance sends to QEMU itself instead of passing a request on.
struct Refusal {
  uint32_t tpm_result = 0;     // non-zero ptm_res
  size_t response_size = 0;    // bytes of the response QEMU reads for this command
  std::string reason;          // for the log and the manager's status
};

// TPM_FAIL and TPM_BAD_PARAMETER (TPM 1.2 result codes, which swtpm's control channel uses).
inline constexpr uint32_t kTpmFail = 0x09;
inline constexpr uint32_t kTpmBadParameter = 0x03;

// nullopt: pass the request on. A refusal says what QEMU gets instead.
std::optional<Refusal> CheckRequest(const CtrlRequest& request, const RelayPolicyState& state);

// The response bytes of a refusal: tpm_result big-endian, zero-padded to response_size.
std::string RefusalResponse(const Refusal& refusal);

// Records a request that was passed on (state blobs imported; INIT ends kIncoming).
void RecordPassed(const CtrlRequest& request, RelayPolicyState* state);

}  // namespace vtm::instance
