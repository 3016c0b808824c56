// QEMU's tpm-emulator backend, as far as tests need it: a client of an swtpm (or vtm-instance)
// control socket that starts the TPM as QEMU does (GET_CAPABILITY, SET_DATAFD, INIT), moves its
// state as QEMU's migration does (GET_STATEBLOB on the source, STOP + SET_STATEBLOB + INIT on the
// destination) and sends TPM commands on the data channel. For faults a real QEMU cannot be made
// to produce on cue; tests/e2e boots real QEMU guests.
//
// Thread safety: one thread at a time. Destroying it (or Disconnect) closes both sockets, as the
// kernel does for a QEMU that was killed.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "vtm/unique_fd.h"

namespace vtm::testing {

// swtpm's control commands (tpm_ioctl.h) the fake sends, and what it sends with them.
inline constexpr uint32_t kCtrlGetCapability = 0x01, kCtrlInit = 0x02, kCtrlGetStateBlob = 0x0c,
                          kCtrlSetStateBlob = 0x0d, kCtrlStop = 0x0e, kCtrlSetDataFd = 0x10;
inline constexpr uint32_t kBlobPermanent = 1, kBlobVolatile = 2;
inline constexpr uint32_t kTpmRcSuccess = 0, kTpmRcInitialize = 0x100;
// What the fake returns for a result that never came (the peer closed, a timeout, a short answer).
inline constexpr uint32_t kNoAnswer = 0xffffffff;

class FakeQemu {
 public:
  // Connects to the control socket (connected() says whether it could); 10 s socket timeouts.
  explicit FakeQemu(const std::string& tpm_sock);

  bool connected() const { return ctrl_.valid(); }
  int ctrl_fd() const { return ctrl_.get(); }
  void Disconnect();

  // One control request in one write (as QEMU sends it), optionally passing an fd; the
  // response_size bytes of the answer, or {} if they did not come.
  std::vector<uint8_t> Call(uint32_t cmd, const std::vector<uint8_t>& body, size_t response_size, int pass_fd = -1);
  // A request whose answer is a 4-byte result: that result, or kNoAnswer.
  uint32_t Simple(uint32_t cmd, const std::vector<uint8_t>& body = {});

  // QEMU's start: GET_CAPABILITY, SET_DATAFD (a socketpair end); with init, INIT too (a QEMU
  // started with -incoming sends INIT only after the state arrived).
  ::testing::AssertionResult Start(bool init = true);

  // GET_STATEBLOB as QEMU's pre_save asks: without the state key's layer, whole in one answer.
  bool GetStateBlob(uint32_t type, std::vector<uint8_t>* blob);
  // SET_STATEBLOB in one write, as QEMU's post_load sends it; the result.
  uint32_t SetStateBlob(uint32_t type, const std::vector<uint8_t>& blob);

  // One TPM command on the data channel: its response code (kNoAnswer if none came), the whole
  // response in *response.
  uint32_t Tpm(const std::vector<uint8_t>& command, std::vector<uint8_t>* response = nullptr);
  uint32_t StartupClear();
  // TPM2_Startup(CLEAR), then TPM2_GetRandom(16): a working TPM answers both with success.
  ::testing::AssertionResult StartupAndGetRandom();
  // TPM2_NV_DefineSpace of index (owner and auth read/write, empty auth) and TPM2_NV_Write of value.
  ::testing::AssertionResult NvWrite(uint32_t index, const std::string& value);
  // TPM2_NV_Read of size bytes of index; "" if it fails.
  std::string NvRead(uint32_t index, size_t size);

 private:
  UniqueFd ctrl_, data_;
};

}  // namespace vtm::testing
