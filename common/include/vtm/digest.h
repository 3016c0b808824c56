// SHA-256 of bytes and of files, as measurements, TPM names and Merkle leaves use it.
#pragma once

#include <string>
#include <string_view>

#include "vtm/error.h"

namespace vtm {

// The raw 32-byte SHA-256 of data.
std::string Sha256Digest(std::string_view data);
// The SHA-256 of a file's contents (read in chunks); kNotFound / kIo with the path.
Result<std::string> Sha256OfFile(const std::string& path);

}  // namespace vtm
