// Bytes as lower-case hex, the form digests and TPM values take in messages and logs.
#pragma once

#include <string>
#include <string_view>

namespace vtm {

std::string HexEncode(std::string_view bytes);

}  // namespace vtm
