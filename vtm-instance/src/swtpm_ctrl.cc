// swtpm control channel helpers (see swtpm_ctrl.h).
#include "swtpm_ctrl.h"

#include <sys/socket.h>
#include <sys/time.h>

#include "vtm/net.h"

namespace vtm::instance {

uint32_t LoadBe32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}
void StoreBe32(uint32_t v, uint8_t* p) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}

void SetIoTimeouts(int fd) {
  timeval tv{};
  tv.tv_sec = kSocketIoTimeout.count();
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

// One request/response exchange on a fresh connection to swtpm's control channel; used
// only while no QEMU is attached (swtpm serves one control client at a time).
Result<std::vector<uint8_t>> SwtpmCtrlCall(int fd, CtrlCommand cmd, size_t response_size) {
  uint8_t req[kCtrlCodeSize];
  StoreBe32(static_cast<uint32_t>(cmd), req);
  VTM_RETURN_IF_ERROR(WriteAll(fd, req, sizeof req));
  std::vector<uint8_t> resp(response_size);
  auto st = ReadAll(fd, resp.data(), resp.size());
  if (!st.ok())
    return std::move(st).error().Context("reading swtpm's answer to " + CtrlCommandName(static_cast<uint32_t>(cmd)));
  return resp;
}

}  // namespace vtm::instance
