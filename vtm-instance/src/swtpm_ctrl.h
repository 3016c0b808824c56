// Direct use of swtpm's control channel (tpm_ioctl.h) by vtm-instance itself: byte order of its
// fields, socket timeouts, and one request/response exchange. Used while no QEMU is attached
// (swtpm serves one control client at a time) and by the relay when it answers for swtpm.
//
// Thread safety: pure functions over caller-owned fds.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "ctrl_protocol.h"
#include "vtm/error.h"

namespace vtm::instance {

// GET_CONFIG flags (PTM_CONFIG_FLAG_*): which keys swtpm applied.
inline constexpr uint32_t kPtmConfigFlagFileKey = 0x1;
inline constexpr uint32_t kPtmConfigFlagMigrationKey = 0x2;

// A peer that stops reading must not wedge the relay (and with it SIGTERM handling).
inline constexpr std::chrono::seconds kSocketIoTimeout(5);

uint32_t LoadBe32(const uint8_t* p);
void StoreBe32(uint32_t v, uint8_t* p);

// SO_SNDTIMEO/SO_RCVTIMEO of kSocketIoTimeout.
void SetIoTimeouts(int fd);

// Sends a body-less command and reads a response of response_size bytes.
Result<std::vector<uint8_t>> SwtpmCtrlCall(int fd, CtrlCommand cmd, size_t response_size);

}  // namespace vtm::instance
