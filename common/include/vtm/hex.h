// Bytes as lower-case hex, the form digests and TPM values take in messages and logs.
#pragma once

#include <string>
#include <string_view>

#include "vtm/error.h"

namespace vtm {

std::string HexEncode(std::string_view bytes);
// Hex (either case) to bytes; kInvalidArgument for an odd length or a non-hex character.
Result<std::string> HexDecode(std::string_view hex);

}  // namespace vtm
