// vtm-instance's configuration: the command line vtmd passes (one definition for both sides,
// ToCommandLine/ParseCommandLine) and the VM's keys, read once from vtmd's pipe.
//
// Thread safety: plain values and pure functions.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "peer_check.h"
#include "vtm/error.h"
#include "vtm/log.h"
#include "vtm/secret.h"

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
  // vtmd's channel into the instance (manager_channel.h); empty: none. Must be in a directory
  // only root can enter.
  std::string manager_socket;
  // The destination of a migration: state blobs only after vtmd admits the migration, INIT only
  // after the permanent state arrived. The state directory starts empty.
  bool incoming = false;
  // Which client of tpm.sock may be this VM's QEMU (peer_check.h). warn: refuse a proven other
  // VM's QEMU, accept an unproven peer with a warning; require: only a proven one; off: any.
  PeerCheckMode peer_check = PeerCheckMode::kWarn;
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

}  // namespace vtm::instance
