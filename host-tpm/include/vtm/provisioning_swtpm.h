// An swtpm that vtmd itself talks to, to provision a new vTPM (EKs, AK, IK, NV certificates)
// before any VM attaches. Both of swtpm's channels are socketpairs vtmd holds (control: an
// inherited fd, `--ctrl type=unixio,clientfd=3`; data: handed over with CMD_SET_DATAFD), so no
// socket path exists that another process could connect to while the vTPM is being built.
//
// Thread safety: not thread-safe; one caller provisions one vTPM.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "vtm/env.h"
#include "vtm/error.h"
#include "vtm/secret.h"
#include "vtm/subprocess.h"
#include "vtm/tpm.h"

namespace vtm {

struct ProvisioningSwtpmOptions {
  std::string swtpm_path = "swtpm";
  // The vTPM's state directory: absolute, no comma (swtpm splits option values at commas).
  // Created 0700 and owned by uid/gid if given.
  std::string tpm_state_dir;
  // The keys the instance will later run with, passed exactly as vtm-instance passes them
  // (`--key fd=N,mode=aes-256-cbc,format=binary,remove=true`, same for --migration-key), each
  // through its own pipe, never argv. Give the state key at provisioning: swtpm cannot add one
  // to a state that was first written in plaintext. Read during Start() only.
  const SecretBytes* state_key = nullptr;      // 32 bytes, or null for an unencrypted state
  const SecretBytes* migration_key = nullptr;  // 32 bytes, or null
  // swtpm runs as this user and group (the VM's), so the state files get their final owner.
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
  // swtpm's log (--log file=..., and its stdout/stderr); empty: stderr is inherited.
  std::string log_path;
  // Whole options appended to swtpm's argv, e.g. {"--seccomp", "action=kill"}.
  std::vector<std::string> extra_args;
  // If set, swtpm's pid, start time and command line are recorded here while it runs, so a
  // successor of an owner killed mid-provisioning can end it (EndRecordedProcess). swtpm also
  // gets SIGKILL when the thread that started it ends.
  std::string process_record;
  // Names the vTPM in errors and in Tpm::Describe(), e.g. "vTPM of VM <uuid>".
  std::string label;
  // For every exchange on the control channel and for swtpm's exit.
  std::chrono::milliseconds timeout = std::chrono::seconds(10);
  // Makes the state directory, spawns swtpm, removes the process record (not owned).
  Env* env = Env::Default();
};

class ProvisioningSwtpm {
 public:
  // Starts swtpm (powered on, TPM2_Startup(CLEAR) done by swtpm itself), checks that the keys
  // were applied (CMD_GET_CONFIG), passes it the data socket (CMD_SET_DATAFD) and opens a Tpm
  // on the other end. On failure nothing keeps running.
  static Result<std::unique_ptr<ProvisioningSwtpm>> Start(const ProvisioningSwtpmOptions& options);
  // Shuts down if Shutdown() was not called (errors only logged).
  ~ProvisioningSwtpm();
  ProvisioningSwtpm(const ProvisioningSwtpm&) = delete;
  ProvisioningSwtpm& operator=(const ProvisioningSwtpm&) = delete;

  // Valid until Shutdown(); every TpmKey of it must be gone before Shutdown().
  Tpm& tpm() { return *tpm_; }
  pid_t pid() const { return swtpm_.pid(); }

  // Closes the Tpm, sends CMD_SHUTDOWN (swtpm writes its state and exits) and waits for the
  // exit. After this the state directory is ready for vtm-instance.
  Status Shutdown();

 private:
  ProvisioningSwtpm() = default;

  std::string label_;
  std::string log_path_;
  std::chrono::milliseconds timeout_{0};
  Subprocess swtpm_;
  UniqueFd ctrl_;
  std::unique_ptr<Tpm> tpm_;
  std::string process_record_;
  bool shut_down_ = false;
};

}  // namespace vtm
