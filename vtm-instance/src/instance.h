// vtm-instance: the per-VM process between QEMU's tpm-emulator control socket and swtpm.
// InstanceProcess sets up one VM's swtpm (keys by pipe, uid drop) and then serves QEMU
// through ControlRelay, which frames and counts every control request on the way.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ctrl_protocol.h"
#include "vtm/error.h"
#include "vtm/log.h"
#include "vtm/secret.h"
#include "vtm/subprocess.h"
#include "vtm/unique_fd.h"

namespace vtm::instance {

// What vtmd passes on the command line (see README.md for the contract).
struct InstanceConfig {
  std::string vm_uuid;
  std::string tpm_state_dir;
  std::string run_dir;
  std::string log_dir;
  uid_t uid = 0;
  gid_t gid = 0;
  uid_t socket_uid = 0;
  gid_t socket_gid = 0;
  mode_t socket_mode = 0600;
  int keys_fd = -1;
  int ready_fd = -1;
  std::string swtpm_path = "swtpm";
  bool seccomp = true;  // --no-seccomp turns the relay's filter off (debugging)
  LogLevel log_level = LogLevel::kInfo;

  std::string TpmSocketPath() const { return run_dir + "/tpm.sock"; }
  std::string SwtpmCtrlSocketPath() const { return run_dir + "/swtpm-ctrl.sock"; }
  std::string SwtpmPidPath() const { return run_dir + "/swtpm.pid"; }
  std::string SwtpmLogPath() const { return log_dir + "/swtpm.log"; }
};

// Parses argv[1..]; every error names the offending option.
Result<InstanceConfig> ParseCommandLine(const std::vector<std::string>& args);
// The inverse, used by vtmd to start an instance: ParseCommandLine(ToCommandLine(c)) == c.
// One place defines the contract between the two processes.
std::vector<std::string> ToCommandLine(const InstanceConfig& config);

inline constexpr size_t kKeySize = 32;

struct InstanceKeys {
  SecretBytes state_key;      // swtpm --key: state at rest
  SecretBytes migration_key;  // swtpm --migration-key: state blobs leaving through QEMU
};

// Reads exactly 2 * kKeySize bytes and then EOF from fd (vtmd's pipe), waiting at most
// `timeout` for the writer.
Result<InstanceKeys> ReadInstanceKeys(int fd, std::chrono::milliseconds timeout);

// swtpm's command line. The keys are read from the given child fds; no startup flags:
// QEMU sends INIT over the control channel and the firmware sends TPM2_Startup, and an
// incoming migration must not touch the state before the blobs arrive.
std::vector<std::string> BuildSwtpmArgv(const InstanceConfig& config, int state_key_fd, int migration_key_fd);

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
  bool owns_run_files_ = false;  // set once no other instance can own the run dir's sockets
};

}  // namespace vtm::instance
