// Message framing for vtm's stream protocols (the vtmd API, the RA client's network service,
// manager-to-manager migration): a 4-byte big-endian length, then that many bytes, over any
// Stream (a socket or a TLS connection). Lengths above max_len are refused before
// any allocation, so a hostile peer cannot make the reader allocate.
#pragma once

#include <cstddef>
#include <string>

#include "vtm/error.h"
#include "vtm/stream.h"

namespace vtm {

constexpr size_t kMaxFrameLen = 1 << 20;

// Refuses (kInvalidArgument, nothing written) a payload above max_len: the reader's limit for
// this protocol, so what one end may send the other accepts.
Status WriteFrame(Stream& stream, const std::string& payload, size_t max_len = kMaxFrameLen);
// kUnavailable on a clean EOF before the first byte (the peer hung up between frames);
// kInvalidArgument for an oversized length; kUnavailable for EOF mid-frame.
Result<std::string> ReadFrame(Stream& stream, size_t max_len = kMaxFrameLen);

// The same over a plain stream socket.
inline Status WriteFrame(int fd, const std::string& payload, size_t max_len = kMaxFrameLen) {
  FdStream s(fd);
  return WriteFrame(s, payload, max_len);
}
inline Result<std::string> ReadFrame(int fd, size_t max_len = kMaxFrameLen) {
  FdStream s(fd);
  return ReadFrame(s, max_len);
}

}  // namespace vtm
