// The control-channel policy of vtm-instance (see relay_policy.h).
#include "relay_policy.h"

namespace vtm::instance {
namespace {

bool Is(const CtrlRequest& r, CtrlCommand c) { return r.code == static_cast<uint32_t>(c); }

Refusal Refuse(uint32_t result, size_t size, std::string reason) {
  return Refusal{result, size, std::move(reason)};
}

// QEMU reads 4 bytes (ptm_res) for INIT and SET_STATEBLOB, and the 16-byte header of
// ptm_getstate's response (result, flags, totlength, length) for GET_STATEBLOB.
constexpr size_t kResultOnly = 4;
constexpr size_t kGetStateHeader = 16;

}  // namespace

const char* RelayModeName(RelayMode mode) {
  switch (mode) {
    case RelayMode::kActive:
      return "active";
    case RelayMode::kIncoming:
      return "incoming";
    case RelayMode::kFenced:
      return "fenced";
  }
  return "unknown";
}

std::optional<Refusal> CheckRequest(const CtrlRequest& request, const RelayPolicyState& state) {
  if (Is(request, CtrlCommand::kSetStateBlob)) {
    if (state.mode == RelayMode::kFenced) {
      return Refuse(kTpmFail, kResultOnly, "SET_STATEBLOB refused: this vTPM was fenced after a migration");
    }
    if (state.mode == RelayMode::kIncoming && !state.incoming_admitted) {
      return Refuse(kTpmFail, kResultOnly,
                    "SET_STATEBLOB refused: vtmd has not admitted an incoming migration for this vTPM");
    }
    // A blob neither encrypted with the migration key (swtpm's header flag; what QEMU carries:
    // it asks for blobs without the state key's encryption) nor still with the state key
    // (PTM_STATE_FLAG_ENCRYPTED) would be taken by swtpm as plaintext state: anyone who can
    // reach the control socket could replace the vTPM's state, and a blob meant for this host
    // would have crossed the network in clear. swtpm itself checks that an encrypted blob
    // decrypts with its key.
    if (!request.state_blob || ((request.state_blob->state_flags & kStateFlagEncrypted) == 0 &&
                                (request.state_blob->swtpm_blob_flags & kBlobFlagMigrationEncrypted) == 0)) {
      return Refuse(kTpmBadParameter, kResultOnly,
                    "SET_STATEBLOB refused: the state blob is not encrypted (neither with the migration key nor the "
                    "state key); the source must run swtpm with a migration key");
    }
    return std::nullopt;
  }
  if (Is(request, CtrlCommand::kGetStateBlob) && state.mode == RelayMode::kFenced) {
    return Refuse(kTpmFail, kGetStateHeader, "GET_STATEBLOB refused: this vTPM was fenced after a migration");
  }
  if (Is(request, CtrlCommand::kInit)) {
    if (state.mode == RelayMode::kFenced) {
      return Refuse(kTpmFail, kResultOnly, "INIT refused: this vTPM was fenced after a migration");
    }
    if (state.mode == RelayMode::kIncoming && (state.imported_blob_types & (1u << kBlobTypePermanent)) == 0) {
      // An incoming vTPM without its state would start as a fresh, empty TPM: a different
      // identity in the VM's place.
      return Refuse(kTpmFail, kResultOnly, "INIT refused: the incoming vTPM has not received its permanent state");
    }
  }
  return std::nullopt;
}

std::string RefusalResponse(const Refusal& refusal) {
  std::string out(refusal.response_size < 4 ? 4 : refusal.response_size, '\0');
  out[0] = static_cast<char>(refusal.tpm_result >> 24);
  out[1] = static_cast<char>(refusal.tpm_result >> 16);
  out[2] = static_cast<char>(refusal.tpm_result >> 8);
  out[3] = static_cast<char>(refusal.tpm_result);
  return out;
}

void RecordPassed(const CtrlRequest& request, RelayPolicyState* state) {
  if (Is(request, CtrlCommand::kSetStateBlob) && request.state_blob && request.state_blob->blob_type < 32) {
    state->imported_blob_types |= 1u << request.state_blob->blob_type;
  }
  if (Is(request, CtrlCommand::kInit) && state->mode == RelayMode::kIncoming) state->mode = RelayMode::kActive;
}

}  // namespace vtm::instance
