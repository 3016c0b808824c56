// libFuzzer target for vtmd's measurement log (a serialized MeasurementLog) as a verifier
// replays it. Beyond "no crash": a log that replays, replayed again, gives the same value.
// Link: vtm_attest.
#include <cstdint>
#include <string>

#include "attestation.pb.h"
#include "vtm/event_log.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vtm::attest::MeasurementLog log;
  if (!log.ParseFromArray(data, static_cast<int>(size))) return 0;
  auto value = vtm::attest::ReplayMeasurementLog(log);
  if (value.ok() && *vtm::attest::ReplayMeasurementLog(log) != *value) __builtin_trap();
  return 0;
}
