// The one place where TSS2 return codes become vtm::Errors, so every TPM failure reads the
// same way: what was attempted, the decoded TSS text and the raw code for searching.
#pragma once

#include <tss2/tss2_common.h>
#include <tss2/tss2_tpm2_types.h>

#include <string_view>

#include "vtm/error.h"

namespace vtm::internal {

// Converts a TSS2 return code from `command` (e.g. "TPM2_Unseal") into an Error:
//   policy failures          -> kPolicyMismatch
//   integrity failures and malformed marshalled data -> kDataLoss
//   TCTI (transport) failures -> kUnavailable
//   everything else          -> kTpm
Error TpmError(std::string_view command, TSS2_RC rc);

// The TPM's own response code with the handle/session/parameter number stripped (e.g.
// TPM2_RC_POLICY_FAIL for 0x99d), or 0 if rc did not come from the TPM itself.
TPM2_RC TpmResponseCode(TSS2_RC rc);

}  // namespace vtm::internal
