// Parsers of files and parameters that other tools produce: swtpm_setup's --ek argument to a
// create_certs_tool, and tpm2_makecredential's credential file. Both are outside data: every
// malformed input gets kInvalidArgument with a message, and both are fuzzed
// (fuzz/external_formats_fuzzer.cc).
#pragma once

#include <string>

#include "vtm/error.h"
#include "vtm/tpm.h"

namespace vtm {

// DER SubjectPublicKeyInfo from swtpm_setup's --ek value: an RSA modulus in hex (exponent
// 65537), or "x=<hex>,y=<hex>[,id=secp256r1|secp384r1]" for an ECC key.
Result<std::string> SpkiFromSwtpmSetupEkParam(const std::string& param);

// tpm2_makecredential's output file: magic 0xBADCC0DE, version 1 (both 4 bytes, big endian),
// then a marshalled TPM2B_ID_OBJECT and a TPM2B_ENCRYPTED_SECRET, and nothing after them.
Result<TpmCredential> ParseTpm2ToolsCredential(const std::string& bytes);

}  // namespace vtm
