// The control relay: vtm-instance's side of QEMU's tpm-emulator control socket. It passes each
// framed control request on to swtpm (with the data-channel fd of SET_DATAFD) and swtpm's
// answers back, counting every request on the way.
//
// Thread safety: single-threaded; all methods are called from the owner's poll loop.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ctrl_protocol.h"
#include "vtm/error.h"
#include "vtm/unique_fd.h"

namespace vtm::instance {

// Relays one QEMU control connection at a time to swtpm's control socket.
// Single-threaded; all methods are called from the owner's poll loop.
class ControlRelay {
 public:
  // listener: the bound, listening tpm.sock. swtpm_ctrl_path: where swtpm's control
  // channel listens.
  ControlRelay(UniqueFd listener, std::string swtpm_ctrl_path);

  // Serves clients until wake_fd becomes readable (returns OK) or the listener fails.
  Status Serve(int wake_fd);

  bool client_attached() const { return client_.valid(); }
  // Ends the current session, if any: closes both the client and the swtpm connection.
  void EndSession(const std::string& why);
  // Requests seen since start, by command code.
  const std::map<uint32_t, uint64_t>& request_counts() const { return counts_; }
  uint64_t sessions() const { return sessions_; }

 private:
  void AcceptClient();
  // Each returns false when the session has ended.
  bool PumpFromClient();
  bool PumpFromSwtpm();
  bool ForwardRequest(const CtrlRequest& request);

  UniqueFd listener_;
  std::string swtpm_ctrl_path_;
  UniqueFd client_;
  UniqueFd swtpm_;
  std::vector<uint8_t> from_client_;   // request bytes not yet forwarded
  std::vector<UniqueFd> pending_fds_;  // SCM_RIGHTS fds received with those bytes
  std::map<uint32_t, uint64_t> counts_;
  uint64_t session_requests_ = 0;
  uint64_t sessions_ = 0;
};

}  // namespace vtm::instance
