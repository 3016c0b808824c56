// Message framing for vtm's stream protocols (the vtmd API today, manager-to-manager later):
// a 4-byte big-endian length, then that many bytes. Lengths above max_len are refused before
// any allocation, so a hostile peer cannot make the reader allocate.
#pragma once

#include <cstddef>
#include <string>

#include "vtm/error.h"

namespace vtm {

constexpr size_t kMaxFrameLen = 1 << 20;

Status WriteFrame(int fd, const std::string& payload);
// kUnavailable on a clean EOF before the first byte (the peer hung up between frames);
// kInvalidArgument for an oversized length; kUnavailable for EOF mid-frame.
Result<std::string> ReadFrame(int fd, size_t max_len = kMaxFrameLen);

}  // namespace vtm
