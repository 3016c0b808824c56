// The control relay: vtm-instance's side of QEMU's tpm-emulator control socket. It passes each
// framed control request on to swtpm (with the data-channel fd of SET_DATAFD) and swtpm's
// answers back, counting every request on the way. Its policy (relay_policy.h) refuses what
// swtpm would wrongly accept: unencrypted state blobs, INIT and state export after a fence,
// state import into an incoming vTPM vtmd has not admitted. vtmd talks to it through the
// manager channel (manager_channel.h), served from the same poll loop.
//
// Thread safety: single-threaded; all methods are called from the owner's poll loop.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ctrl_protocol.h"
#include "peer_check.h"
#include "relay_policy.h"
#include "vtm/error.h"
#include "vtm/unique_fd.h"

namespace vtm::instance {

// Relays one QEMU control connection at a time to swtpm's control socket.
// Single-threaded; all methods are called from the owner's poll loop.
class ManagerChannel;

class ControlRelay {
 public:
  struct Counters {
    uint64_t exported = 0;  // GET_STATEBLOB passed on
    uint64_t imported = 0;  // SET_STATEBLOB passed on
    uint64_t inits = 0;     // INIT passed on
    uint64_t refused = 0;
    std::string last_refusal;
  };

  // listener: the bound, listening tpm.sock. swtpm_ctrl_path: where swtpm's control
  // channel listens.
  // mode: kIncoming for the destination of a migration, else kActive.
  // peers: decides which client may be this VM's QEMU (not owned; null: any client the
  // socket's permissions let in).
  ControlRelay(UniqueFd listener, std::string swtpm_ctrl_path, RelayMode mode = RelayMode::kActive,
               const PeerInspector* peers = nullptr);

  // Serves clients (and vtmd on `manager`, if given) until wake_fd becomes readable (returns
  // OK) or the listener fails.
  Status Serve(int wake_fd, ManagerChannel* manager = nullptr);

  // Manager commands. Fence ends QEMU's session, stops the TPM in swtpm (CMD_STOP) and
  // refuses INIT and state export/import from then on; idempotent.
  Status Fence(const std::string& reason);
  // Lets an incoming instance accept the state blobs of migration_id (once; the same ID again
  // is accepted, another one refused).
  Status AdmitIncoming(const std::string& migration_id, uint64_t generation);

  const RelayPolicyState& policy() const { return policy_; }
  const Counters& counters() const { return counters_; }
  const std::string& migration_id() const { return migration_id_; }
  uint64_t generation() const { return generation_; }

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
  // Answers QEMU in swtpm's place; false when the session has ended.
  bool Refuse(const CtrlRequest& request, const Refusal& refusal);

  UniqueFd listener_;
  std::string swtpm_ctrl_path_;
  const PeerInspector* peers_;
  UniqueFd client_;
  UniqueFd swtpm_;
  std::vector<uint8_t> from_client_;   // request bytes not yet forwarded
  std::vector<UniqueFd> pending_fds_;  // SCM_RIGHTS fds received with those bytes
  std::map<uint32_t, uint64_t> counts_;
  uint64_t session_requests_ = 0;
  uint64_t sessions_ = 0;
  RelayPolicyState policy_;
  Counters counters_;
  std::string migration_id_;
  uint64_t generation_ = 0;
};

}  // namespace vtm::instance
