// libFuzzer target for the stream framing every vtm protocol uses: arbitrary bytes from a
// peer through ReadFrame until the stream ends; lengths over the limit must be refused before
// any allocation, and a frame must never be longer than its limit.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "vtm/framing.h"
#include "vtm/net.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 60000) return 0;  // stays within one socket buffer, so the write never blocks
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
  if (!vtm::WriteAll(sv[0], data, size).ok()) __builtin_trap();
  close(sv[0]);
  constexpr size_t kLimit = 4096;
  for (;;) {
    auto f = vtm::ReadFrame(sv[1], kLimit);
    if (!f.ok()) break;
    if (f->size() > kLimit) __builtin_trap();
  }
  close(sv[1]);
  return 0;
}
