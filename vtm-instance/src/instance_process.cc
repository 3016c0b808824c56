// Setup of one VM's swtpm and the process around the control relay (see instance_process.h).
// Setup runs as root; after READY the process runs as the VM's uid under a seccomp filter,
// so a compromised QEMU that subverts the relay gains little beyond what swtpm's uid has.
#include "instance_process.h"

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <thread>

#include "manager_channel.h"
#include "seccomp_filter.h"
#include "swtpm_ctrl.h"
#include "vtm/fs.h"
#include "vtm/log.h"
#include "vtm/net.h"

namespace vtm::instance {
namespace {

std::string OneLine(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  std::replace(s.begin(), s.end(), '\r', ' ');
  return s;
}

}  // namespace

std::vector<std::string> BuildSwtpmArgv(const InstanceConfig& c, int state_key_fd, int migration_key_fd) {
  return {
      c.swtpm_path,
      "socket",
      "--tpm2",
      "--tpmstate",
      "dir=" + c.tpm_state_dir + ",mode=0600",
      "--ctrl",
      "type=unixio,path=" + c.SwtpmCtrlSocketPath() + ",mode=0600",
      "--key",
      "fd=" + std::to_string(state_key_fd) + ",mode=aes-256-cbc,format=binary,remove=true",
      "--migration-key",
      "fd=" + std::to_string(migration_key_fd) + ",mode=aes-256-cbc,format=binary,remove=true",
      "--log",
      "file=" + c.SwtpmLogPath() + ",level=1",
      "--pid",
      "file=" + c.SwtpmPidPath(),
      "--seccomp",
      "action=kill",
  };
}

// ---------------------------------------------------------------------------------------
// InstanceProcess

InstanceProcess::InstanceProcess(InstanceConfig config, InstanceKeys keys, UniqueFd signal_fd)
    : config_(std::move(config)), keys_(std::move(keys)), signal_fd_(std::move(signal_fd)) {}

InstanceProcess::~InstanceProcess() {
  if (swtpm_.pid() > 0 && swtpm_.running()) swtpm_.Terminate();
  RemoveSockets();
}

void InstanceProcess::ReportToVtmd(const std::string& line) {
  if (config_.ready_fd < 0) return;
  std::string text = OneLine(line) + "\n";
  auto st = WriteAll(config_.ready_fd, text.data(), text.size());
  if (!st.ok()) LOG_WARNING << "could not write to --ready-fd: " << st.error().message();
  close(config_.ready_fd);
  config_.ready_fd = -1;
}

int InstanceProcess::Run() {
  auto st = Setup();
  if (!st.ok()) {
    std::string message = "VM " + config_.vm_uuid + ": " + st.error().message();
    LOG_ERROR << "setup failed: " << message;
    ReportToVtmd("ERROR " + message);
    if (swtpm_.pid() > 0 && swtpm_.running()) swtpm_.Terminate();
    RemoveSockets();
    return 1;
  }
  ReportToVtmd("READY");
  LOG_INFO << "ready: QEMU may connect to " << config_.TpmSocketPath();
  return ServeUntilStopped();
}

Status InstanceProcess::Setup() {
  VTM_RETURN_IF_ERROR(PrepareDirectories());
  VTM_RETURN_IF_ERROR(StartSwtpm());
  VTM_RETURN_IF_ERROR(WaitForSwtpm(std::chrono::seconds(10)));
  VTM_RETURN_IF_ERROR(ListenForQemu());
  VTM_RETURN_IF_ERROR(ListenForManager());
  VTM_RETURN_IF_ERROR(StartPeerInspector());
  VTM_RETURN_IF_ERROR(DropPrivileges());
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // The sanitizer runtimes need syscalls (ptrace for leak checking, ...) the filter forbids.
  config_.seccomp = false;
  LOG_WARNING << "sanitizer build: running without the seccomp filter";
#endif
  if (config_.seccomp) {
    VTM_RETURN_IF_ERROR(ApplySeccomp());
  } else {
    LOG_WARNING << "running without a seccomp filter";
  }
  return OkStatus();
}

Status InstanceProcess::PrepareDirectories() {
  // The run dir holds the sockets; QEMU must be able to reach tpm.sock in it. When QEMU
  // runs as a uid other than the instance's (and not root), it needs search permission
  // only: 0711 lets it reach tpm.sock but not list the directory, and swtpm-ctrl.sock
  // stays 0600 owned by the instance uid.
  mode_t run_mode = 0700;
  if (config_.socket_uid != 0 && config_.socket_uid != config_.uid) run_mode = 0711;
  VTM_RETURN_IF_ERROR(MakeDir(config_.run_dir, run_mode, config_.uid, config_.gid));
  VTM_RETURN_IF_ERROR(MakeDir(config_.tpm_state_dir, 0700, config_.uid, config_.gid));
  VTM_RETURN_IF_ERROR(MakeDir(config_.log_dir, 0700, config_.uid, config_.gid));

  // A live tpm.sock means another instance serves this VM: two would be two vTPMs.
  if (PathExists(config_.TpmSocketPath()) && ConnectUnix(config_.TpmSocketPath()).ok()) {
    return Error(ErrorCode::kAlreadyExists, "another vtm-instance already serves " + config_.TpmSocketPath());
  }
  // From here on the run dir's sockets are ours to remove on the way out.
  owns_run_files_ = true;
  for (const auto& stale : {config_.SwtpmCtrlSocketPath(), config_.SwtpmPidPath()}) {
    if (::unlink(stale.c_str()) != 0 && errno != ENOENT) return ErrnoError("removing stale " + stale);
  }
  return OkStatus();
}

Status InstanceProcess::StartSwtpm() {
  // Each key goes through its own pipe, written and closed before swtpm starts, so the
  // key never appears in argv, the environment or a file. 32 bytes fit any pipe buffer.
  int state_pipe[2], migration_pipe[2];
  if (pipe2(state_pipe, O_CLOEXEC) != 0) return ErrnoError("creating the state key pipe");
  UniqueFd state_r(state_pipe[0]), state_w(state_pipe[1]);
  if (pipe2(migration_pipe, O_CLOEXEC) != 0) return ErrnoError("creating the migration key pipe");
  UniqueFd mig_r(migration_pipe[0]), mig_w(migration_pipe[1]);
  VTM_RETURN_IF_ERROR(WriteAll(state_w.get(), keys_.state_key.data(), keys_.state_key.size()));
  VTM_RETURN_IF_ERROR(WriteAll(mig_w.get(), keys_.migration_key.data(), keys_.migration_key.size()));
  state_w.reset();
  mig_w.reset();
  // Nothing here needs the keys any more; swtpm is not restarted by this process.
  keys_.state_key.Wipe();
  keys_.migration_key.Wipe();

  constexpr int kStateKeyFd = 3, kMigrationKeyFd = 4;
  SpawnOptions options;
  options.fds = {{kStateKeyFd, state_r.get()}, {kMigrationKeyFd, mig_r.get()}};
  options.uid = config_.uid;
  options.gid = config_.gid;
  // This swtpm serves only this instance: it must not outlive it (kill -9 of vtm-instance).
  options.parent_death_signal = SIGKILL;
  // swtpm's own messages go to --log; anything else it prints joins instance.log.
  auto argv = BuildSwtpmArgv(config_, kStateKeyFd, kMigrationKeyFd);
  auto child = Subprocess::Spawn(argv, options);
  if (!child.ok()) return std::move(child).error().Context("starting swtpm (" + config_.swtpm_path + ")");
  swtpm_ = std::move(*child);
  LOG_INFO << "swtpm started, pid " << swtpm_.pid() << ", uid " << config_.uid << ", gid " << config_.gid;
  return OkStatus();
}

Status InstanceProcess::WaitForSwtpm(std::chrono::milliseconds timeout) {
  const std::string path = config_.SwtpmCtrlSocketPath();
  auto deadline = std::chrono::steady_clock::now() + timeout;
  auto delay = std::chrono::milliseconds(2);
  UniqueFd fd;
  for (;;) {
    if (!swtpm_.running()) {
      auto status = swtpm_.Wait(std::chrono::milliseconds(0));
      return Error(ErrorCode::kUnavailable, "swtpm " + (status.ok() ? DescribeWaitStatus(*status) : "exited") +
                                                " during startup; see " + config_.SwtpmLogPath());
    }
    auto c = ConnectUnix(path);
    if (c.ok()) {
      fd = std::move(*c);
      break;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return Error(ErrorCode::kUnavailable, "swtpm's control socket " + path + " did not come up within " +
                                                std::to_string(timeout.count()) + " ms: " + c.error().message());
    }
    std::this_thread::sleep_for(delay);
    delay = std::min(delay * 2, std::chrono::milliseconds(50));
  }
  SetIoTimeouts(fd.get());
  // A real answer, not just a connect(): and it tells whether both keys were applied.
  VTM_ASSIGN_OR_RETURN(auto caps, SwtpmCtrlCall(fd.get(), CtrlCommand::kGetCapability, 8));
  (void)caps;
  VTM_ASSIGN_OR_RETURN(auto config, SwtpmCtrlCall(fd.get(), CtrlCommand::kGetConfig, 8));
  uint32_t result = LoadBe32(config.data()), flags = LoadBe32(config.data() + 4);
  if (result != 0)
    return Error(ErrorCode::kUnavailable, "swtpm refused GET_CONFIG (TPM result " + std::to_string(result) + ")");
  if ((flags & kPtmConfigFlagFileKey) == 0 || (flags & kPtmConfigFlagMigrationKey) == 0) {
    return Error(ErrorCode::kFailedPrecondition,
                 "swtpm runs without its state or migration key (GET_CONFIG flags 0x" + std::to_string(flags) + ")");
  }
  LOG_INFO << "swtpm answers on " << path << " with state and migration keys applied";
  return OkStatus();
}

Status InstanceProcess::ListenForQemu() {
  const std::string path = config_.TpmSocketPath();
  // Created root-owned 0600, so nobody else can connect until owner and mode are final;
  // vtmd tells QEMU to connect only after READY anyway.
  auto listener = ListenUnix(path, 0600);
  if (!listener.ok()) return std::move(listener).error().Context("creating " + path);
  if (::chown(path.c_str(), config_.socket_uid, config_.socket_gid) != 0) {
    return ErrnoError("changing owner of " + path + " to " + std::to_string(config_.socket_uid) + ":" +
                      std::to_string(config_.socket_gid));
  }
  if (::chmod(path.c_str(), config_.socket_mode) != 0) return ErrnoError("changing mode of " + path);
  listener_ = std::move(*listener);
  return OkStatus();
}

Status InstanceProcess::DropPrivileges() {
  if (geteuid() != 0) {
    // Tests and development: nothing to drop, but the process must already be the target.
    if (getuid() == config_.uid && getgid() == config_.gid) return OkStatus();
    return Error(ErrorCode::kPermissionDenied, "vtm-instance runs as uid " + std::to_string(getuid()) +
                                                   ", not root, and cannot become uid " + std::to_string(config_.uid));
  }
  if (setgroups(0, nullptr) != 0) return ErrnoError("clearing supplementary groups");
  if (setresgid(config_.gid, config_.gid, config_.gid) != 0)
    return ErrnoError("setresgid " + std::to_string(config_.gid));
  if (setresuid(config_.uid, config_.uid, config_.uid) != 0)
    return ErrnoError("setresuid " + std::to_string(config_.uid));
  uid_t r, e, s;
  if (getresuid(&r, &e, &s) != 0 || r != config_.uid || e != config_.uid || s != config_.uid) {
    return Error(ErrorCode::kInternal, "privileges were not dropped to uid " + std::to_string(config_.uid));
  }
  if (config_.uid != 0 && setuid(0) == 0)
    return Error(ErrorCode::kInternal, "could regain root after dropping privileges");
  LOG_INFO << "running as uid " << config_.uid << ", gid " << config_.gid;
  return OkStatus();
}

Status InstanceProcess::ApplySeccomp() {
  SeccompAllowList filter;
  // What the relay loop, logging, the allocator and the shutdown path use. Nothing opens
  // files, executes programs or creates non-unix sockets after setup.
  VTM_RETURN_IF_ERROR(filter.Allow({
      SCMP_SYS(read),
      SCMP_SYS(write),
      SCMP_SYS(writev),
      SCMP_SYS(close),
      SCMP_SYS(poll),
      SCMP_SYS(ppoll),
      SCMP_SYS(accept4),
      SCMP_SYS(accept),
      SCMP_SYS(connect),
      SCMP_SYS(recvmsg),
      SCMP_SYS(sendmsg),
      SCMP_SYS(recvfrom),
      SCMP_SYS(sendto),
      SCMP_SYS(getsockopt),
      SCMP_SYS(setsockopt),
      SCMP_SYS(shutdown),
      SCMP_SYS(wait4),
      SCMP_SYS(waitid),
      SCMP_SYS(nanosleep),
      SCMP_SYS(clock_nanosleep),
      SCMP_SYS(clock_gettime),
      SCMP_SYS(gettimeofday),
      SCMP_SYS(getpid),
      SCMP_SYS(gettid),
      SCMP_SYS(unlink),
      SCMP_SYS(unlinkat),
      SCMP_SYS(brk),
      SCMP_SYS(mmap),
      SCMP_SYS(munmap),
      SCMP_SYS(mremap),
      SCMP_SYS(madvise),
      SCMP_SYS(mprotect),
      SCMP_SYS(futex),
      SCMP_SYS(rt_sigprocmask),
      SCMP_SYS(rt_sigreturn),
      SCMP_SYS(rt_sigaction),
      SCMP_SYS(fstat),
      SCMP_SYS(newfstatat),
      SCMP_SYS(lseek),
      SCMP_SYS(fcntl),
      SCMP_SYS(restart_syscall),
      SCMP_SYS(exit),
      SCMP_SYS(exit_group),
      SCMP_SYS(getrandom),
  }));
  // Unix sockets only (connections to swtpm's control channel).
  VTM_RETURN_IF_ERROR(filter.AllowIf(SCMP_SYS(socket), SCMP_A0(SCMP_CMP_EQ, AF_UNIX)));
  // Signals only to our own swtpm (Terminate) and to ourselves (abort()).
  VTM_RETURN_IF_ERROR(filter.AllowIf(SCMP_SYS(kill), SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(swtpm_.pid()))));
  VTM_RETURN_IF_ERROR(filter.AllowIf(SCMP_SYS(kill), SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(getpid()))));
  // And to the peer inspector, should it outlast the end of its socket at shutdown.
  if (peer_inspector_.pid() > 0) {
    VTM_RETURN_IF_ERROR(
        filter.AllowIf(SCMP_SYS(kill), SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(peer_inspector_.pid()))));
  }
  VTM_RETURN_IF_ERROR(filter.AllowIf(SCMP_SYS(tgkill), SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(getpid()))));
  VTM_RETURN_IF_ERROR(filter.Load("vtm-instance"));
  LOG_INFO << "seccomp filter applied";
  return OkStatus();
}

Status InstanceProcess::ListenForManager() {
  if (config_.manager_socket.empty()) return OkStatus();
  // Created by the uid that started us (root) before privileges are dropped, mode 0600, in a
  // directory vtmd keeps root-only: neither QEMU nor this instance's own uid can reach it
  // (ManagerChannel checks the peer uid as well). It stays when the instance ends (the
  // directory is not ours to write after the uid drop); the next instance replaces it.
  manager_uid_ = getuid();
  auto listener = ListenUnix(config_.manager_socket, 0600);
  if (!listener.ok()) return std::move(listener).error().Context("creating the manager socket " + config_.manager_socket);
  manager_listener_ = std::move(*listener);
  return OkStatus();
}

Status InstanceProcess::StartPeerInspector() {
  if (config_.peer_check == PeerCheckMode::kOff) {
    LOG_WARNING << "QEMU peer check off: any client that may open tpm.sock is taken for this VM's QEMU";
    return OkStatus();
  }
  // nobody: the files it reads are world-readable, and it can touch no file or process of this
  // VM's uid (swtpm's memory holds the keys).
  constexpr uid_t kNobody = 65534;
  auto inspector = PeerInspector::Start(config_.vm_uuid, config_.peer_check, kNobody, kNobody);
  if (!inspector.ok()) return std::move(inspector).error().Context("starting the QEMU peer check");
  peer_inspector_ = std::move(*inspector);
  LOG_INFO << "QEMU peer check " << PeerCheckModeName(config_.peer_check) << " (inspector pid " << peer_inspector_.pid()
           << "): this VM's QEMU is in cgroup partition " << VmCgroupPartition(config_.vm_uuid)
           << " or under AppArmor profile libvirt-" << config_.vm_uuid;
  return OkStatus();
}

int InstanceProcess::ServeUntilStopped() {
  ControlRelay relay(std::move(listener_), config_.SwtpmCtrlSocketPath(),
                     config_.incoming ? RelayMode::kIncoming : RelayMode::kActive,
                     peer_inspector_.running() ? &peer_inspector_ : nullptr);
  std::unique_ptr<ManagerChannel> manager;
  if (manager_listener_.valid()) {
    manager = std::make_unique<ManagerChannel>(std::move(manager_listener_), manager_uid_, config_.vm_uuid,
                                               swtpm_.pid());
  }
  for (;;) {
    auto st = relay.Serve(signal_fd_.get(), manager.get());
    if (!st.ok()) {
      LOG_ERROR << "relay failed: " << st.error().message();
      relay.EndSession("relay failure");
      StopSwtpm();
      RemoveSockets();
      return 1;
    }
    signalfd_siginfo info{};
    ssize_t n = read(signal_fd_.get(), &info, sizeof info);
    if (n != static_cast<ssize_t>(sizeof info)) continue;
    if (info.ssi_signo == SIGCHLD) {
      if (swtpm_.running()) continue;
      auto status = swtpm_.Wait(std::chrono::milliseconds(0));
      LOG_ERROR << "swtpm (pid " << swtpm_.pid() << ") " << (status.ok() ? DescribeWaitStatus(*status) : "exited")
                << " unexpectedly; see " << config_.SwtpmLogPath();
      relay.EndSession("swtpm is gone");
      RemoveSockets();
      return 1;
    }
    LOG_INFO << "received " << strsignal(static_cast<int>(info.ssi_signo)) << ", stopping";
    bool attached = relay.client_attached();
    relay.EndSession("instance stopping");
    if (attached) {
      // swtpm's single control connection was QEMU's; don't race its teardown.
      LOG_INFO << "QEMU was attached: stopping swtpm with SIGTERM";
      int status = swtpm_.Terminate(std::chrono::seconds(10));
      LOG_INFO << "swtpm " << DescribeWaitStatus(status);
    } else {
      StopSwtpm();
    }
    RemoveSockets();
    LOG_INFO << "stopped; " << relay.sessions() << " QEMU session(s) served";
    return 0;
  }
}

void InstanceProcess::StopSwtpm() {
  if (!swtpm_.running()) return;
  // CMD_SHUTDOWN lets swtpm terminate libtpms cleanly and remove its own socket and pid file.
  auto conn = ConnectUnix(config_.SwtpmCtrlSocketPath());
  if (conn.ok()) {
    SetIoTimeouts(conn->get());
    auto resp = SwtpmCtrlCall(conn->get(), CtrlCommand::kShutdown, 4);
    if (resp.ok()) {
      auto status = swtpm_.Wait(std::chrono::seconds(10));
      if (status.ok()) {
        LOG_INFO << "swtpm shut down, " << DescribeWaitStatus(*status);
        return;
      }
    } else {
      LOG_WARNING << "CMD_SHUTDOWN failed: " << resp.error().message();
    }
  } else {
    LOG_WARNING << "cannot reach swtpm's control channel to shut it down: " << conn.error().message();
  }
  int status = swtpm_.Terminate(std::chrono::seconds(5));
  LOG_INFO << "swtpm terminated, " << DescribeWaitStatus(status);
}

void InstanceProcess::RemoveSockets() {
  if (!owns_run_files_) return;
  owns_run_files_ = false;
  listener_.reset();
  for (const auto& path : {config_.TpmSocketPath(), config_.SwtpmCtrlSocketPath(), config_.SwtpmPidPath()}) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      LOG_WARNING << "could not remove " << path << ": " << std::strerror(errno);
    }
  }
}

}  // namespace vtm::instance
