// PCR banks by name: the TPM algorithm behind "sha256" and its digest size. Shared by the
// text/binary formats and the ESAPI implementation so both accept exactly the same banks.
#pragma once

#include <tss2/tss2_tpm2_types.h>

#include <cstddef>
#include <string_view>

namespace vtm::internal {

struct PcrBank {
  std::string_view name;
  TPM2_ALG_ID alg;
  size_t digest_size;
};

// nullptr for a name that is not one of sha1, sha256, sha384, sha512.
const PcrBank* FindPcrBank(std::string_view name);

inline constexpr int kMaxPcrIndex = 23;  // PC Client TPMs have PCRs 0..23

}  // namespace vtm::internal
