// Conversion of TSS2 return codes into vtm::Error (see tpm_error.h for the mapping).
#include "internal/tpm_error.h"

#include <tss2/tss2_rc.h>

#include <cstdio>
#include <string>

namespace vtm::internal {

TPM2_RC TpmResponseCode(TSS2_RC rc) {
  if ((rc & TSS2_RC_LAYER_MASK) != TSS2_TPM_RC_LAYER) return 0;
  rc &= 0xffff;
  // Format-one codes carry the parameter/handle/session number in bits 6 and 8..11.
  if (rc & TPM2_RC_FMT1) return (rc & 0x3f) | TPM2_RC_FMT1;
  return rc;
}

Error TpmError(std::string_view command, TSS2_RC rc) {
  ErrorCode code = ErrorCode::kTpm;
  switch (rc & TSS2_RC_LAYER_MASK) {
    case TSS2_TCTI_RC_LAYER:
      code = ErrorCode::kUnavailable;
      break;
    case TSS2_MU_RC_LAYER:
      code = ErrorCode::kDataLoss;
      break;
    case TSS2_TPM_RC_LAYER:
      switch (TpmResponseCode(rc)) {
        case TPM2_RC_POLICY_FAIL:
        case TPM2_RC_PCR_CHANGED:
          code = ErrorCode::kPolicyMismatch;
          break;
        case TPM2_RC_INTEGRITY:
          code = ErrorCode::kDataLoss;
          break;
        default:
          break;
      }
      break;
    default:
      break;
  }
  char hex[16];
  std::snprintf(hex, sizeof hex, "0x%x", static_cast<unsigned>(rc));
  return Error(code, std::string(command) + " failed: " + Tss2_RC_Decode(rc) + " (" + hex + ")");
}

}  // namespace vtm::internal
