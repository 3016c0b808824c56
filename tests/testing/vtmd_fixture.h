// Runs a real vtmd (and vtmctl against it) for integration and e2e tests: a simulated host
// TPM started by the test (so it survives vtmd restarts), temp state/run dirs, and cleanup
// of every process on destruction, also when an assertion failed, and when the test process
// is killed (ctest's timeout): vtmd and the host TPM get SIGKILL with it, and an OrphanGuard
// ends whatever else names the test's directory.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "test_env.h"
#include "test_processes.h"
#include "vtm/host_tpm.h"
#include "vtm/subprocess.h"

namespace vtm::testing {

class VtmdFixture {
 public:
  VtmdFixture();
  ~VtmdFixture();

  // Starts vtmd with the test's host TPM; returns false (and fills log()) if it exits early.
  bool StartVtmd(const std::vector<std::string>& extra_args = {});
  // SIGTERM and wait; returns vtmd's wait status.
  int StopVtmd();
  // Waits for vtmd to exit by itself (a crash point, kill -9 by the test); its wait status.
  int WaitVtmdExit(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // Extra "NAME=value" entries for the environment of vtmd started from now on (PATH is
  // always passed), e.g. VTM_CRASH_AT.
  void SetVtmdEnvironment(std::vector<std::string> env) { vtmd_env_ = std::move(env); }
  // Runs vtmd in the foreground until it exits (for start-up failures).
  CommandResult RunVtmdExpectingExit(const std::vector<std::string>& extra_args = {});

  // A host reboot as the host TPM sees it: its swtpm ends and starts again on the same state
  // (seeds, NV and everything sealed under it kept; PCRs reset by TPM2_Startup(CLEAR)). Stop
  // vtmd first. host_tcti() may change. Returns false (with a test failure) if it fails.
  bool RebootHostTpm();

  CommandResult Vtmctl(const std::vector<std::string>& args);
  // vtmctl run as another uid/gid through setpriv, e.g. {"--reuid=65534", "--regid=65534",
  // "--clear-groups"}. The binary is copied into the test's (traversable) directory first, so
  // the build tree's permissions do not matter.
  CommandResult VtmctlAs(const std::vector<std::string>& setpriv_args, const std::vector<std::string>& args);
  // Any program of the build tree (e.g. "vtm-manager/vtm-create-certs") run the same way.
  CommandResult RunBuiltAs(const std::vector<std::string>& setpriv_args, const std::string& build_path,
                           const std::vector<std::string>& args);
  std::string VtmdLog() const;
  // Waits up to `timeout` for vtmd's log to hold `text`, for what vtmd logs after the client
  // already has its answer (e.g. a refused TLS handshake, which the client sees first).
  bool WaitForVtmdLog(const std::string& text, std::chrono::milliseconds timeout = std::chrono::seconds(10)) const;
  // The public key (PEM) of a VM's vTPM certificate of kind "ak", "ik", "ek-ecc" or "ek-rsa",
  // read with `openssl x509 -pubkey` from `vtmctl certs`; "" (and a test failure) if missing.
  std::string CertificatePublicKeyPem(const std::string& vm, const std::string& kind);

  const std::string& state_dir() const { return state_dir_; }
  const std::string& run_dir() const { return run_dir_; }
  const std::string& socket() const { return socket_; }
  const std::string& host_tcti() const { return host_tpm_->tcti(); }
  pid_t vtmd_pid() const { return vtmd_.pid(); }

 private:
  std::vector<std::string> VtmdArgv(const std::vector<std::string>& extra) const;
  TempDir dir_;
  // Ends what the test started (vtmd, instances it adopted across restarts, swtpms) if the
  // test is killed before the destructor runs.
  OrphanGuard guard_{dir_.path()};
  std::string state_dir_, run_dir_, socket_, log_;
  std::unique_ptr<SimulatedHostTpm> host_tpm_;
  Subprocess vtmd_;
  std::vector<std::string> vtmd_env_;
  std::vector<std::string> started_vms_;
};

// Matches swtpm's own command line ("swtpm\0socket..."), not another process that merely names
// swtpm in its arguments (vtm-instance --swtpm PATH).
inline const std::string kSwtpmProcess("swtpm\0socket", 12);

// The real uid of a process, from /proc/<pid>/status; -1 if gone.
long ProcessUid(pid_t pid);
// Value of "key: value" in vtmctl's human output.
std::string Field(const std::string& output, const std::string& key);

}  // namespace vtm::testing
