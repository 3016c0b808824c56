// libFuzzer target for the event log parsers of vtm_attest: the TCG PC Client firmware log
// and the IMA binary_runtime_measurements (the first byte picks one), with replay. Beyond "no
// crash": rejections are kInvalidArgument, and a parsed log always replays.
// Link: vtm_attest.
#include <cstdint>
#include <string_view>

#include "vtm/event_log.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] & 1) {
    auto log = vtm::attest::ParseTcgEventLog(input);
    if (!log.ok()) {
      if (log.error().code() != vtm::ErrorCode::kInvalidArgument) __builtin_trap();
      return 0;
    }
    if (!vtm::attest::ReplayTcgEventLog(*log).ok()) __builtin_trap();
  } else {
    auto entries = vtm::attest::ParseImaLog(input);
    if (!entries.ok()) {
      if (entries.error().code() != vtm::ErrorCode::kInvalidArgument) __builtin_trap();
      return 0;
    }
    if (!vtm::attest::ReplayImaLog(*entries).ok()) __builtin_trap();
  }
  return 0;
}
