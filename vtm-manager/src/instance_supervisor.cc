// vtm-instance process management: launch with key/ready pipes, pidfd-based monitoring.
#include "instance_supervisor.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "vtm/log.h"
#include "vtm/net.h"
#include "vtm/subprocess.h"

namespace vtm {

InstanceSupervisor::InstanceSupervisor(std::string instance_binary, ExitCallback on_unexpected_exit, Env* env)
    : instance_binary_(std::move(instance_binary)), on_exit_(std::move(on_unexpected_exit)), env_(env) {
  wake_fd_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  monitor_ = std::thread([this] { MonitorLoop(); });
}

InstanceSupervisor::~InstanceSupervisor() {
  {
    MutexLock lock(mu_);
    shutting_down_ = true;
  }
  Wake();
  monitor_.join();
}

void InstanceSupervisor::Wake() {
  uint64_t one = 1;
  (void)!write(wake_fd_.get(), &one, sizeof one);
}

void InstanceSupervisor::Watch(const std::string& vm_uuid, pid_t pid, UniqueFd pidfd, bool is_child) {
  {
    MutexLock lock(mu_);
    Entry& e = entries_[vm_uuid];
    e = Entry{};
    e.pid = pid;
    e.pidfd = std::move(pidfd);
    e.is_child = is_child;
  }
  Wake();
}

bool InstanceSupervisor::Watching(const std::string& vm_uuid) {
  MutexLock lock(mu_);
  auto it = entries_.find(vm_uuid);
  return it != entries_.end() && !it->second.exited;
}

std::vector<std::string> InstanceSupervisor::CommandLine(const InstanceLaunch& launch) const {
  instance::InstanceConfig config = launch.config;
  config.keys_fd = 3;
  config.ready_fd = 4;
  std::vector<std::string> argv = instance::ToCommandLine(config);
  argv.insert(argv.begin(), instance_binary_);
  return argv;
}

Result<pid_t> InstanceSupervisor::Launch(const InstanceLaunch& launch, std::chrono::milliseconds ready_timeout) {
  int keys[2], ready[2];
  if (pipe2(keys, O_CLOEXEC) != 0) return ErrnoError("pipe2");
  UniqueFd keys_r(keys[0]), keys_w(keys[1]);
  if (pipe2(ready, O_CLOEXEC) != 0) return ErrnoError("pipe2");
  UniqueFd ready_r(ready[0]), ready_w(ready[1]);
  // 64 bytes fit in the pipe buffer, so they are written before the child exists.
  VTM_RETURN_IF_ERROR(WriteAll(keys_w.get(), launch.state_key.data(), launch.state_key.size()));
  VTM_RETURN_IF_ERROR(WriteAll(keys_w.get(), launch.migration_key.data(), launch.migration_key.size()));
  keys_w.reset();

  const std::vector<std::string> argv = CommandLine(launch);
  SpawnOptions opts;
  opts.fds = {{3, keys_r.get()}, {4, ready_w.get()}};  // the keys_fd and ready_fd of CommandLine()
  opts.output_file = launch.config.log_dir + "/instance.log";
  VTM_ASSIGN_OR_RETURN(Subprocess child, env_->Spawn(argv, opts));
  keys_r.reset();
  ready_w.reset();

  // Read the readiness line; the Subprocess destructor kills the child on every error path.
  std::string line;
  auto deadline = env_->SteadyNow() + ready_timeout;
  while (line.find('\n') == std::string::npos) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - env_->SteadyNow());
    if (left.count() <= 0) {
      return Error(ErrorCode::kUnavailable, "vtm-instance did not become ready within " +
                                                std::to_string(ready_timeout.count()) + " ms; see " +
                                                opts.output_file);
    }
    pollfd p{ready_r.get(), POLLIN, 0};
    int r = poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    char buf[512];
    ssize_t n = read(ready_r.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      auto st = child.Wait(std::chrono::seconds(2));
      return Error(ErrorCode::kInternal, "vtm-instance " +
                                             (st.ok() ? DescribeWaitStatus(*st) : std::string("closed its ready pipe")) +
                                             " before it was ready; see " + opts.output_file);
    }
    line.append(buf, static_cast<size_t>(n));
    if (line.size() > 4096) break;
  }
  line = line.substr(0, line.find('\n'));
  if (line != "READY") {
    std::string msg = line.rfind("ERROR ", 0) == 0 ? line.substr(6) : "unexpected readiness message '" + line + "'";
    (void)child.Wait(std::chrono::seconds(2));
    return Error(ErrorCode::kInternal, "vTPM instance failed to start: " + msg + " (log: " + opts.output_file + ")");
  }
  VTM_ASSIGN_OR_RETURN(UniqueFd pidfd, env_->OpenPidFd(child.pid()));
  pid_t pid = child.Release();
  Watch(launch.config.vm_uuid, pid, std::move(pidfd), /*is_child=*/true);
  return pid;
}

Status InstanceSupervisor::Adopt(const std::string& vm_uuid, pid_t pid) {
  VTM_ASSIGN_OR_RETURN(UniqueFd pidfd, env_->OpenPidFd(pid));
  Watch(vm_uuid, pid, std::move(pidfd), /*is_child=*/false);
  return OkStatus();
}

bool InstanceSupervisor::Gone(const std::string& vm_uuid) const {
  auto it = entries_.find(vm_uuid);
  return it == entries_.end() || it->second.exited;
}

Status InstanceSupervisor::Stop(const std::string& vm_uuid, std::chrono::milliseconds grace) {
  MutexLock lock(mu_);
  auto it = entries_.find(vm_uuid);
  if (it == entries_.end()) return OkStatus();  // not ours to stop: already gone
  Entry& e = it->second;
  e.stop_requested = true;
  if (!e.exited) (void)env_->SignalPidFd(e.pidfd.get(), SIGTERM);
  auto gone = [&] {
    mu_.AssertHeld();
    return Gone(vm_uuid);
  };
  if (!cv_.WaitFor(mu_, grace, gone)) {
    LOG_WARNING << "vtm-instance for VM " << vm_uuid << " ignored SIGTERM for " << grace.count()
                << " ms; sending SIGKILL";
    (void)env_->SignalPidFd(e.pidfd.get(), SIGKILL);
    if (!cv_.WaitFor(mu_, std::chrono::seconds(10), gone)) {
      return Error(ErrorCode::kInternal, "vtm-instance for VM " + vm_uuid + " survived SIGKILL");
    }
  }
  entries_.erase(vm_uuid);
  return OkStatus();
}

void InstanceSupervisor::MonitorLoop() {
  for (;;) {
    std::vector<pollfd> fds;
    std::vector<std::string> uuids;
    {
      MutexLock lock(mu_);
      if (shutting_down_) return;
      fds.push_back({wake_fd_.get(), POLLIN, 0});
      for (auto& [uuid, e] : entries_) {
        if (e.exited) continue;
        fds.push_back({e.pidfd.get(), POLLIN, 0});
        uuids.push_back(uuid);
      }
    }
    int r = poll(fds.data(), fds.size(), 1000);
    if (r < 0 && errno != EINTR) {
      LOG_ERROR << "instance monitor poll failed: " << errno;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    if (fds[0].revents) {
      uint64_t v;
      (void)!read(wake_fd_.get(), &v, sizeof v);
    }
    std::vector<std::pair<std::string, std::string>> unexpected;
    {
      MutexLock lock(mu_);
      for (size_t i = 1; i < fds.size(); ++i) {
        if (!fds[i].revents) continue;
        auto it = entries_.find(uuids[i - 1]);
        if (it == entries_.end()) continue;
        Entry& e = it->second;
        std::string how = "exited";
        if (e.is_child) {
          int st = 0;
          if (waitpid(e.pid, &st, WNOHANG) == e.pid) how = DescribeWaitStatus(st);
        }
        e.exited = true;
        e.how = how;
        if (!e.stop_requested) {
          unexpected.emplace_back(it->first, how);
          entries_.erase(it);
        }
      }
    }
    cv_.NotifyAll();
    for (auto& [uuid, how] : unexpected) {
      LOG_ERROR << "vtm-instance for VM " << uuid << " " << how << " unexpectedly";
      if (on_exit_) on_exit_(uuid, how);
    }
  }
}

}  // namespace vtm
