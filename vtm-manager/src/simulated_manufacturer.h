// Plays the TPM manufacturer for a simulated host TPM: gives its EK a certificate at NV
// 0x01C0000A, issued by a clearly named TEST manufacturer CA, so the host identity chain can
// be exercised end to end without hardware. Never used with a real TPM (those come with their
// manufacturer's certificate).
#pragma once

#include <string>

#include "vtm/error.h"
#include "vtm/tpm.h"

namespace vtm {

// If the TPM has no ECC EK certificate yet: creates a one-off test manufacturer CA (its private
// key is discarded after this one signature), issues the EK certificate, writes it to NV and
// the CA certificate to dir/test-manufacturer-ca.pem. Does nothing if the certificate exists.
Status ManufactureSimulatedHostTpm(Tpm& tpm, const std::string& dir);

}  // namespace vtm
