// Spawns, watches and stops the per-VM vtm-instance processes. Keys reach an instance through
// a pipe (never argv or environment); readiness comes back on another pipe as "READY" or
// "ERROR <message>". Instances outlive a vtmd restart: a new vtmd adopts them by pid.
//
// Thread safety: all methods may be called from any thread. The exit callback runs on the
// supervisor's monitor thread and must not call back into the supervisor.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <thread>

#include "instance.h"
#include "vtm/env.h"
#include "vtm/error.h"
#include "vtm/mutex.h"
#include "vtm/secret.h"
#include "vtm/unique_fd.h"

namespace vtm {

struct InstanceLaunch {
  // The instance's command line (vtm-instance/src/instance.h); keys_fd and ready_fd are set by
  // Launch().
  instance::InstanceConfig config;
  SecretBytes state_key;      // 32 bytes
  SecretBytes migration_key;  // 32 bytes
};

class InstanceSupervisor {
 public:
  // Called once per instance that ended without Stop() having been asked for it.
  using ExitCallback = std::function<void(const std::string& vm_uuid, const std::string& how)>;

  // env (not owned; must outlive this) spawns, watches and signals the instances.
  InstanceSupervisor(std::string instance_binary, ExitCallback on_unexpected_exit, Env* env = Env::Default());
  ~InstanceSupervisor();  // stops watching; running instances are left running on purpose
  InstanceSupervisor(const InstanceSupervisor&) = delete;
  InstanceSupervisor& operator=(const InstanceSupervisor&) = delete;

  // The argv Launch() runs for launch (binary first): what measured launch measures.
  std::vector<std::string> CommandLine(const InstanceLaunch& launch) const;
  const std::string& instance_binary() const { return instance_binary_; }

  // Starts vtm-instance and waits until it reports READY. On any failure the process is gone
  // when this returns and the error carries the instance's own message.
  Result<pid_t> Launch(const InstanceLaunch& launch, std::chrono::milliseconds ready_timeout);
  // Takes over watching an instance started by an earlier vtmd.
  Status Adopt(const std::string& vm_uuid, pid_t pid);
  // SIGTERM, then SIGKILL after grace; returns once the process is gone.
  Status Stop(const std::string& vm_uuid, std::chrono::milliseconds grace) EXCLUDES(mu_);
  bool Watching(const std::string& vm_uuid) EXCLUDES(mu_);

 private:
  struct Entry {
    pid_t pid = -1;
    UniqueFd pidfd;
    bool is_child = false;
    bool stop_requested = false;
    bool exited = false;
    std::string how;  // description of the exit
  };
  void Watch(const std::string& vm_uuid, pid_t pid, UniqueFd pidfd, bool is_child) EXCLUDES(mu_);
  bool Gone(const std::string& vm_uuid) const REQUIRES(mu_);
  void MonitorLoop() EXCLUDES(mu_);
  void Wake();

  const std::string instance_binary_;
  const ExitCallback on_exit_;
  Env* const env_;
  Mutex mu_;
  CondVar cv_;  // signalled when an entry exits
  std::map<std::string, Entry> entries_ GUARDED_BY(mu_);
  UniqueFd wake_fd_;  // eventfd that interrupts the monitor's poll
  bool shutting_down_ GUARDED_BY(mu_) = false;
  std::thread monitor_;
};

}  // namespace vtm
