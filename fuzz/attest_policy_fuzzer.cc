// libFuzzer target for verifier policies (AttestationPolicy JSON, edited by operators):
// ParsePolicyJson and Verifier::Create, which parses the PEM certificates inside. Beyond "no
// crash": a policy that parses prints to JSON that parses again.
// Link: vtm_attest.
#include <cstdint>
#include <string_view>

#include "vtm/verifier.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto policy = vtm::attest::ParsePolicyJson(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!policy.ok()) return 0;
  (void)vtm::attest::Verifier::Create(*policy);
  if (!vtm::attest::ParsePolicyJson(vtm::attest::PolicyToJson(*policy)).ok()) __builtin_trap();
  return 0;
}
