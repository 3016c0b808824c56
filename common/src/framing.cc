// Length-prefixed frames over a Stream.
#include "vtm/framing.h"

namespace vtm {

Status WriteFrame(Stream& stream, const std::string& payload, size_t max_len) {
  if (payload.size() > max_len || payload.size() > 0xffffffffu) {
    return Error(ErrorCode::kInvalidArgument, "message of " + std::to_string(payload.size()) +
                                                  " bytes is too large to send (the limit is " +
                                                  std::to_string(max_len) + ")");
  }
  uint8_t hdr[4] = {static_cast<uint8_t>(payload.size() >> 24), static_cast<uint8_t>(payload.size() >> 16),
                    static_cast<uint8_t>(payload.size() >> 8), static_cast<uint8_t>(payload.size())};
  std::string buf(reinterpret_cast<char*>(hdr), 4);
  buf += payload;
  return stream.WriteAll(buf.data(), buf.size());
}

Result<std::string> ReadFrame(Stream& stream, size_t max_len) {
  uint8_t hdr[4];
  VTM_RETURN_IF_ERROR(stream.ReadAll(hdr, sizeof hdr));
  size_t len = (size_t{hdr[0]} << 24) | (size_t{hdr[1]} << 16) | (size_t{hdr[2]} << 8) | size_t{hdr[3]};
  if (len > max_len) {
    return Error(ErrorCode::kInvalidArgument,
                 "message of " + std::to_string(len) + " bytes exceeds the limit of " + std::to_string(max_len));
  }
  std::string payload(len, '\0');
  if (len > 0) VTM_RETURN_IF_ERROR(stream.ReadAll(payload.data(), len));
  return payload;
}

}  // namespace vtm
