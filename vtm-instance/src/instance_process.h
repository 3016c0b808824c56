// The whole life of one vtm-instance process: setup as root (directories, swtpm with its keys
// by pipe, QEMU's socket), READY to vtmd, then the control relay as the VM's uid under a
// seccomp filter, until SIGTERM or swtpm's end.
//
// Thread safety: single-threaded.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "control_relay.h"
#include "instance_config.h"
#include "vtm/error.h"
#include "vtm/subprocess.h"
#include "vtm/unique_fd.h"

namespace vtm::instance {

// swtpm's command line. The keys are read from the given child fds; no startup flags:
// QEMU sends INIT over the control channel and the firmware sends TPM2_Startup, and an
// incoming migration must not touch the state before the blobs arrive.
std::vector<std::string> BuildSwtpmArgv(const InstanceConfig& config, int state_key_fd, int migration_key_fd);

// The whole life of one instance: setup as root, READY, relay as --uid, clean stop.
class InstanceProcess {
 public:
  // signal_fd: a signalfd for SIGTERM, SIGINT and SIGCHLD (blocked by the caller).
  InstanceProcess(InstanceConfig config, InstanceKeys keys, UniqueFd signal_fd);
  ~InstanceProcess();
  InstanceProcess(const InstanceProcess&) = delete;
  InstanceProcess& operator=(const InstanceProcess&) = delete;

  // Runs to the end and returns the process exit code: 0 after SIGTERM/SIGINT, 1 when
  // setup fails (after "ERROR ..." on the ready fd) or swtpm dies.
  int Run();

 private:
  Status Setup();
  Status PrepareDirectories();
  Status StartSwtpm();
  Status WaitForSwtpm(std::chrono::milliseconds timeout);
  Status ListenForQemu();
  Status ListenForManager();
  Status StartPeerInspector();
  Status DropPrivileges();
  Status ApplySeccomp();
  int ServeUntilStopped();
  void StopSwtpm();
  void RemoveSockets();
  void ReportToVtmd(const std::string& line);

  InstanceConfig config_;
  InstanceKeys keys_;
  UniqueFd signal_fd_;
  Subprocess swtpm_;
  UniqueFd listener_;
  UniqueFd manager_listener_;  // --manager-socket, if given
  PeerInspector peer_inspector_;  // unless --qemu-peer-check off
  uid_t manager_uid_ = 0;      // the uid that started the instance (vtmd: root)
  bool owns_run_files_ = false;  // set once no other instance can own the run dir's sockets
};

}  // namespace vtm::instance
