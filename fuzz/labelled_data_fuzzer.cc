// libFuzzer target for labelled signed data, outside data a verifier receives from a VM: the
// label parser, and the whole VerifyLabelledData path (CMS DER, certificates inside it, the
// chain and signature checks) against a fixed trusted CA. The first input byte picks which.
#include <cstdint>
#include <ctime>
#include <string>

#include "fuzz_ca.h"
#include "vtm/labelled_data.h"
#include "vtm/x509.h"

namespace {

const vtm::tc::SignedDataExpectation& Expectation() {
  static const vtm::tc::SignedDataExpectation* e = [] {
    auto* x = new vtm::tc::SignedDataExpectation();
    x->trusted_ca_pem = vtm::ca::DerToPem(vtm::fuzz::FixedCaCertificate());
    x->allow_missing_crl = true;
    return x;
  }();
  return *e;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string input(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 2 == 0) {
    auto parsed = vtm::tc::ParseLabelledContent(input);
    if (parsed.ok()) {
      // What parses must serialize back to something that parses to the same label.
      auto again = vtm::tc::ParseLabelledContent(vtm::tc::SerializeLabelledContent(*parsed));
      if (!again.ok() || again->label.vm_uuid != parsed->label.vm_uuid || again->data != parsed->data) __builtin_trap();
    }
  } else {
    (void)vtm::tc::VerifyLabelledData(input, Expectation());
  }
  return 0;
}
