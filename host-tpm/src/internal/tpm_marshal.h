// TPM structures to and from their marshalled byte form (tss2-mu), with the MU return codes
// converted by TpmError like every other TSS2 code (malformed bytes become kDataLoss).
#pragma once

#include <tss2/tss2_mu.h>

#include <cstdint>
#include <string>

#include "internal/tpm_error.h"
#include "vtm/error.h"
#include "vtm/tpm_structures.h"

namespace vtm::internal {

template <typename T, TSS2_RC (*Marshal)(const T*, uint8_t[], size_t, size_t*)>
Result<std::string> MarshalToString(const T& value, const char* type_name) {
  uint8_t buffer[sizeof(T) + 8];  // the marshalled form is never larger than the structure
  size_t offset = 0;
  TSS2_RC rc = Marshal(&value, buffer, sizeof buffer, &offset);
  if (rc != TSS2_RC_SUCCESS) return TpmError(std::string("marshalling ") + type_name, rc);
  return std::string(reinterpret_cast<const char*>(buffer), offset);
}

// Unmarshals blob, which must hold exactly one T: trailing bytes mean the blob is not what it
// claims to be. Failures are kDataLoss.
template <typename T, TSS2_RC (*Unmarshal)(const uint8_t[], size_t, size_t*, T*)>
Result<T> UnmarshalExactly(const std::string& blob, const char* type_name) {
  T value{};
  const UnmarshalOutcome outcome = UnmarshalInto<T, Unmarshal>(blob, &value);
  if (outcome.rc != TSS2_RC_SUCCESS) return TpmError(std::string("unmarshalling ") + type_name, outcome.rc);
  if (outcome.trailing != 0) {
    return Error(ErrorCode::kDataLoss,
                 std::string(type_name) + " is followed by " + std::to_string(outcome.trailing) + " stray bytes");
  }
  return value;
}

}  // namespace vtm::internal
