// libFuzzer target for the evidence envelope (HostEvidence/DeepEvidence) through the whole
// verifier: quotes, PCR values, Merkle proofs, certificates, event logs and the measurement
// log inside it are all outside data. Beyond "no crash": a verdict of garbage is never
// trusted (the policy trusts no manufacturer).
// Link: vtm_attest.
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <string>

#include "attestation.pb.h"
#include "vtm/verifier.h"

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  setenv("TSS2_LOG", "all+none", /*overwrite=*/0);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto* verifier = [] {
    vtm::attest::AttestationPolicy policy;
    policy.set_version(1);
    policy.set_accept_simulated_host_tpm(true);
    return vtm::attest::Verifier::Create(policy).value().release();
  }();
  const std::string input(reinterpret_cast<const char*>(data), size);
  vtm::attest::DeepEvidence deep;
  if (deep.ParseFromString(input)) {
    const auto v = verifier->AppraiseDeep(deep, deep.host().nonce(), 0);
    if (v.trusted) __builtin_trap();
    (void)v.ToJson();
  }
  vtm::attest::HostEvidence host;
  if (host.ParseFromString(input)) {
    if (verifier->AppraiseHost(host, host.nonce(), 0).trusted) __builtin_trap();
  }
  return 0;
}
