// The PCR banks vtm knows; a bank outside this list is rejected when parsed.
#include "internal/pcr_bank.h"

namespace vtm::internal {

const PcrBank* FindPcrBank(std::string_view name) {
  static constexpr PcrBank kBanks[] = {
      {"sha1", TPM2_ALG_SHA1, TPM2_SHA1_DIGEST_SIZE},
      {"sha256", TPM2_ALG_SHA256, TPM2_SHA256_DIGEST_SIZE},
      {"sha384", TPM2_ALG_SHA384, TPM2_SHA384_DIGEST_SIZE},
      {"sha512", TPM2_ALG_SHA512, TPM2_SHA512_DIGEST_SIZE},
  };
  for (const auto& bank : kBanks) {
    if (bank.name == name) return &bank;
  }
  return nullptr;
}

}  // namespace vtm::internal
