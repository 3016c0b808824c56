// Which process may become this VM's QEMU on tpm.sock. Under libvirt every QEMU runs as one
// user, so file permissions cannot keep VM A's QEMU off VM B's socket; what A's QEMU cannot
// change about itself is what root gave it: its cgroup (libvirt places each domain's QEMU; only
// root may move it) and its LSM label (libvirt's AppArmor profile `libvirt-<uuid>`). Its
// command line it can rewrite, so that only ever refuses (a misconfigured socket path).
//
// DecidePeer is the policy, a pure function. PeerInspector gathers the facts in a small child
// process: the relay's seccomp filter allows no open(), and letting the relay open files would
// let it read its own swtpm's memory (and keys) through /proc/<swtpm>/mem.
//
// Thread safety: DecidePeer is pure; a PeerInspector is used from one thread.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "vtm/error.h"
#include "vtm/subprocess.h"
#include "vtm/unique_fd.h"

namespace vtm::instance {

enum class PeerCheckMode {
  kOff,      // any client the socket's permissions let in (plain QEMU, tests' fake QEMUs)
  kWarn,     // refuse proven strangers; accept an unproven peer with a warning
  kRequire,  // accept only a peer proven to be this VM's QEMU
};
Result<PeerCheckMode> ParsePeerCheckMode(const std::string& text);
const char* PeerCheckModeName(PeerCheckMode mode);

// The cgroup name that marks this VM's QEMU: "vtm" and the UUID's 32 hex digits. libvirt puts
// a domain with <resource><partition>/machine/vtm…</partition></resource> under it
// (systemd: machine-vtm….slice; without systemd: vtm….partition).
std::string VmCgroupPartition(const std::string& vm_uuid);

// What the kernel says about the process at the other end of tpm.sock.
struct PeerFacts {
  pid_t pid = -1;
  uid_t uid = static_cast<uid_t>(-1);
  std::string lsm_label;               // SO_PEERSEC; empty: no LSM labels sockets here
  std::optional<std::string> cgroups;  // /proc/<pid>/cgroup; nullopt: unreadable
  std::string cmdline_uuid;            // the value after -uuid in /proc/<pid>/cmdline, if any
  bool exited = false;                 // the peer was gone after its facts were read
};

struct PeerVerdict {
  enum class Kind { kAccept, kAcceptUnproven, kRefuse };
  Kind kind = Kind::kRefuse;
  std::string reason;  // names the peer (pid, uid) and what decided
};

PeerVerdict DecidePeer(const PeerFacts& facts, const std::string& vm_uuid, PeerCheckMode mode);

// The child process that reads /proc for the relay: vtm-instance run again (a fresh exec) as
// `uid`/`gid` (nobody: /proc's cgroup and cmdline files are world-readable), undumpable, under
// its own seccomp filter, and killed with its parent.
inline constexpr const char* kPeerInspectorFlag = "--peer-inspector";

class PeerInspector {
 public:
  // Starts the child. Call while still root and before the relay's seccomp filter.
  static Result<PeerInspector> Start(const std::string& vm_uuid, PeerCheckMode mode, uid_t uid, gid_t gid);
  PeerInspector() = default;
  PeerInspector(PeerInspector&&) = default;
  PeerInspector& operator=(PeerInspector&&) = default;
  ~PeerInspector();

  bool running() const { return socket_.valid(); }
  pid_t pid() const { return process_.pid(); }
  // Decides about the peer of `client` (an accepted tpm.sock connection).
  PeerVerdict Inspect(int client) const;

 private:
  Subprocess process_;  // declared first: destroyed after socket_ (EOF first, then the wait)
  UniqueFd socket_;
};

// main() of the child: args are vtm-instance's argv[1..], starting with kPeerInspectorFlag.
int PeerInspectorMain(const std::vector<std::string>& args);

}  // namespace vtm::instance
