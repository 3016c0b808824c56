// A fixed host-CA-like certificate for fuzz targets that need a valid, trusted CA to compare
// with or chain to (x509_fuzzer's evidence checks, labelled_data_fuzzer's trusted CA): a fresh
// P-256 key, self-signed, made once per process. Header-only; the fuzzers link vtm_ca.
#pragma once

#include <string>

#include "vtm/x509.h"

namespace vtm::fuzz {

// DER of the certificate; traps if it cannot be made (a fuzz run without it means nothing).
inline const std::string& FixedCaCertificate() {
  static const std::string* cert = [] {
    auto signer = vtm::ca::SoftwareSigner::Generate();
    if (!signer.ok()) __builtin_trap();
    vtm::ca::CaCertRequest req;
    req.common_name = "fuzz CA";
    req.validity = {1, 0};
    auto der = vtm::ca::CreateSelfSignedCaCertificate(**signer, req);
    if (!der.ok()) __builtin_trap();
    return new std::string(*der);
  }();
  return *cert;
}

}  // namespace vtm::fuzz
