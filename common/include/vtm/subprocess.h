// The one door for starting and stopping child processes (swtpm, vtm-instance, QEMU in
// tests). Secrets reach children only through inherited fds, never argv or environment.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "vtm/error.h"
#include "vtm/unique_fd.h"

namespace vtm {

struct SpawnOptions {
  // child fd number -> parent fd to dup2 there. Everything else is closed in the child
  // except 0/1/2.
  std::map<int, int> fds;
  // Where stdout/stderr go (appended); empty means inherit. stdin is /dev/null.
  std::string output_file;
  // Drop to this uid/gid (supplementary groups cleared) before exec.
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
  // New session so a terminal's signals don't reach the child.
  bool new_session = true;
  // Environment of the child. Only PATH is passed when empty.
  std::vector<std::string> env;
  // If non-zero, the child gets this signal when the thread that spawned it ends (the whole
  // process killed by SIGKILL included): PR_SET_PDEATHSIG, set after the privilege drop (a
  // credential change clears it). For helpers that must not outlive their owner (a simulated
  // host TPM, a provisioning swtpm); never for what must survive a restart (vtm-instance).
  // Spawn such a child only from a thread that outlives it.
  int parent_death_signal = 0;
};

class Subprocess {
 public:
  Subprocess() = default;
  ~Subprocess();  // terminates (SIGTERM, then SIGKILL) a child still running
  Subprocess(Subprocess&& o) noexcept;
  Subprocess& operator=(Subprocess&& o) noexcept;
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  static Result<Subprocess> Spawn(const std::vector<std::string>& argv, const SpawnOptions& options);

  pid_t pid() const { return pid_; }
  bool running();  // false once the child has exited (and been reaped)
  // Waits up to timeout; returns the wait status (as from waitpid) or kUnavailable on timeout.
  Result<int> Wait(std::chrono::milliseconds timeout);
  // SIGTERM, wait up to grace, then SIGKILL. Returns the wait status.
  int Terminate(std::chrono::milliseconds grace = std::chrono::seconds(5));
  // Gives up ownership: the destructor will no longer stop the child.
  pid_t Release();

 private:
  explicit Subprocess(pid_t pid) : pid_(pid) {}
  pid_t pid_ = -1;
  int status_ = 0;
  bool exited_ = false;
};

// Human-readable text for a wait status: "exited with status 1", "killed by signal 9".
std::string DescribeWaitStatus(int status);

// True if a process with this pid exists and is not a zombie.
bool ProcessAlive(pid_t pid);

// A process recorded in a file (pid, start time and command line from /proc, and the recording
// process as its owner), so that whoever comes after its owner (a vtmd restarted after kill -9)
// can find it and end it. A reused pid never matches: its start time or command line differ.
Status RecordProcess(const std::string& record_path, pid_t pid);
// If the process recorded at record_path still runs and its owner does not (it is no longer
// the owner's child), kills it (SIGKILL) and waits until it is gone; removes the record.
// Returns the pid it ended, or 0 if there was nothing to end. A process whose owner still runs
// is left alone with its record.
Result<pid_t> EndRecordedProcess(const std::string& record_path);

// Absolute path of a program found next to the running executable, or else on PATH.
std::string FindProgram(const std::string& name);

}  // namespace vtm
