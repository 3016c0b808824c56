// libFuzzer target for host-tpm's parsers of untrusted bytes: SealedObject::Parse (files on
// disk) and PcrSelection::Parse (configuration). Beyond "no crash", it checks that rejections
// carry the documented error code and that whatever parses survives a round trip unchanged.
// Link: vtm_host_tpm (which brings vtm_common, tss2-mu/-rc and OpenSSL).
#include <cstdint>
#include <cstdlib>
#include <string>

#include "vtm/host_tpm.h"

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  // tss2-mu logs malformed input; at millions of inputs that is only noise and slowness.
  setenv("TSS2_LOG", "all+none", /*overwrite=*/0);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);

  auto sealed = vtm::SealedObject::Parse(input);
  if (sealed.ok()) {
    // The format has exactly one encoding per object, so re-serializing must give the input back.
    if (sealed->Serialize() != input) __builtin_trap();
  } else if (sealed.error().code() != vtm::ErrorCode::kDataLoss) {
    __builtin_trap();
  }

  auto selection = vtm::PcrSelection::Parse(input);
  if (selection.ok()) {
    // Parse normalizes (sorts), so ToString of the result must parse back to the same selection.
    auto again = vtm::PcrSelection::Parse(selection->ToString());
    if (!again.ok() || again->bank != selection->bank || again->pcrs != selection->pcrs) __builtin_trap();
  } else if (selection.error().code() != vtm::ErrorCode::kInvalidArgument) {
    __builtin_trap();
  }
  return 0;
}
