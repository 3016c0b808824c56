// libFuzzer target for the parsers of other tools' outputs that vtm reads: swtpm_setup's --ek
// parameter (vtm-create-certs), tpm2_makecredential files (vtmctl), and vtmd's key blob files.
#include <cstdint>
#include <string>

#include "external_formats.h"
#include "host_attestation_key.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  auto spki = vtm::SpkiFromSwtpmSetupEkParam(input);
  if (!spki.ok() && spki.error().code() != vtm::ErrorCode::kInvalidArgument) __builtin_trap();
  auto cred = vtm::ParseTpm2ToolsCredential(input);
  if (cred.ok() && 8 + cred->id_object.size() + cred->encrypted_secret.size() != input.size()) __builtin_trap();
  auto blob = vtm::BlobFromString(input, "fuzz");
  if (blob.ok() && 8 + blob->tpm2b_public.size() + blob->tpm2b_private.size() != input.size()) __builtin_trap();
  return 0;
}
