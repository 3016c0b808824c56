// libFuzzer target for vtm_ca's parsers of outside data: certificates (DER or PEM), the
// certify-evidence extension and its TPM structures (TPM2B_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE)
// up to signature and name checks. The first input byte picks the entry point.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>

#include "../ca/src/internal.h"  // DecodeCertifyEvidence: reach the DER reader without a signed certificate
#include "fuzz_ca.h"
#include "vtm/x509.h"

namespace {

// Splits input into length-prefixed (2 bytes, big-endian) fields; the last takes the rest.
std::string TakeField(std::string& rest) {
  if (rest.size() < 2) return std::exchange(rest, std::string());
  const size_t n = (static_cast<uint8_t>(rest[0]) << 8) | static_cast<uint8_t>(rest[1]);
  std::string field = rest.substr(2, n);
  rest.erase(0, std::min(rest.size(), 2 + n));
  return field;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // tss2-mu logs every malformed structure to stderr; that is expected here, not news.
  setenv("TSS2_LOG", "all+none", /*overwrite=*/0);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0] % 3;
  std::string input(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (mode) {
    case 0: {
      auto info = vtm::ca::ParseCertificate(input);
      auto evidence = vtm::ca::ExtractCertifyEvidence(input);
      // Whatever parses converts to DER, and that DER parses again to the same facts.
      if (info.ok()) {
        auto der = vtm::ca::CertificateToDer(input);
        if (!der.ok()) __builtin_trap();
        auto again = vtm::ca::ParseCertificate(*der);
        if (!again.ok() || again->subject != info->subject || again->spki_der != info->spki_der ||
            again->serial_hex != info->serial_hex || again->uris != info->uris) {
          __builtin_trap();
        }
      }
      if (evidence.ok()) (void)vtm::ca::VerifyCertifyEvidence(input, *evidence);
      break;
    }
    case 1: {
      auto evidence = vtm::ca::DecodeCertifyEvidence(input);
      if (evidence.ok()) {
        // Whatever decodes must encode back to the same bytes (DER is canonical).
        if (vtm::ca::EncodeCertifyEvidence(*evidence) != input) __builtin_trap();
        (void)vtm::ca::VerifyCertifyEvidence(vtm::fuzz::FixedCaCertificate(), *evidence);
      }
      break;
    }
    default: {
      vtm::ca::CertifyEvidence e;
      e.key_tpm2b_public = TakeField(input);
      e.attest = TakeField(input);
      e.signature = TakeField(input);
      e.ak_tpm2b_public = input;
      (void)vtm::ca::VerifyCertifyEvidence(vtm::fuzz::FixedCaCertificate(), e);
      break;
    }
  }
  return 0;
}
