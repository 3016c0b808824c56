// libFuzzer target for the TPM-public-area helpers of vtm_attest (SpkiFromTpmPublic,
// TpmNameOfPublic, MakeCredential to an EK) and the tpm2-tools PCR file reader: verifiers feed
// them EK/AK publics from other hosts, and guests' quote files reach vtmctl. Beyond "no crash":
// rejections carry kInvalidArgument/kDataLoss only, every SPKI produced parses, and PCR values
// read from a file parse as Quote.pcr_values.
// Link: vtm_attest.
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "vtm/credential.h"
#include "vtm/quote.h"
#include "vtm/tpm_structures.h"

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  setenv("TSS2_LOG", "all+none", /*overwrite=*/0);  // tss2-mu logs every malformed input
  return 0;
}

namespace {
bool Expected(vtm::ErrorCode code) {
  return code == vtm::ErrorCode::kInvalidArgument || code == vtm::ErrorCode::kDataLoss;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  auto spki = vtm::SpkiFromTpmPublic(input);
  if (spki.ok()) {
    const auto* p = reinterpret_cast<const unsigned char*>(spki->data());
    EVP_PKEY* key = d2i_PUBKEY(nullptr, &p, static_cast<long>(spki->size()));
    if (key == nullptr) __builtin_trap();
    EVP_PKEY_free(key);
  } else if (!Expected(spki.error().code())) {
    __builtin_trap();
  }
  auto name = vtm::TpmNameOfPublic(input);
  if (name.ok()) {
    if (name->size() < 2 + 20) __builtin_trap();  // nameAlg + at least a SHA-1 digest
  } else if (!Expected(name.error().code())) {
    __builtin_trap();
  }
  // A credential to whatever this is: only a real EK public area gets one.
  auto cred = vtm::attest::MakeCredential(input, std::string(32, 's'), std::string(34, 'n'));
  if (cred.ok()) {
    if (!spki.ok() || cred->id_object.size() < 4 || cred->encrypted_secret.size() < 2) __builtin_trap();
  } else if (!Expected(cred.error().code())) {
    __builtin_trap();
  }
  auto pcrs = vtm::attest::PcrValuesFromTpm2ToolsFile(input);
  if (pcrs.ok()) {
    if (!vtm::attest::ParsePcrValues(*pcrs).ok()) __builtin_trap();
  } else if (pcrs.error().code() != vtm::ErrorCode::kInvalidArgument) {
    __builtin_trap();
  }
  return 0;
}
