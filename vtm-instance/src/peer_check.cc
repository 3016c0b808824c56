// The tpm.sock peer policy and the child process that reads its facts (see peer_check.h).
#include "peer_check.h"

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "seccomp_filter.h"
#include "swtpm_ctrl.h"
#include "vtm/log.h"
#include "vtm/net.h"
#include "vtm/subprocess.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77  // Linux >= 6.5
#endif

namespace vtm::instance {
namespace {

constexpr size_t kMaxReply = 2048;
constexpr int kInspectorFd = 3;
constexpr size_t kMaxProcFile =
    size_t{256} * 1024;  // a QEMU command line runs to some KiB  // the inspector's end of the socket pair

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool IsHex(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isxdigit(c) != 0; });
}

bool StripPrefix(std::string* s, const std::string& prefix) {
  if (s->rfind(prefix, 0) != 0) return false;
  s->erase(0, prefix.size());
  return true;
}

bool StripSuffix(std::string* s, const std::string& suffix) {
  if (s->size() < suffix.size() || s->compare(s->size() - suffix.size(), suffix.size(), suffix) != 0) return false;
  s->resize(s->size() - suffix.size());
  return true;
}

// The vtm<hex> partitions named anywhere in /proc/<pid>/cgroup ("id:controllers:/a/b" lines).
std::vector<std::string> PartitionsIn(const std::string& cgroups) {
  std::vector<std::string> found;
  size_t start = 0;
  while (start < cgroups.size()) {
    size_t end = cgroups.find('\n', start);
    if (end == std::string::npos) end = cgroups.size();
    std::string line = cgroups.substr(start, end - start);
    start = end + 1;
    size_t colon = line.find(':');
    if (colon != std::string::npos) colon = line.find(':', colon + 1);
    if (colon == std::string::npos) continue;
    std::string path = line.substr(colon + 1);
    size_t pos = 0;
    while (pos <= path.size()) {
      size_t slash = path.find('/', pos);
      if (slash == std::string::npos) slash = path.size();
      std::string name = path.substr(pos, slash - pos);
      pos = slash + 1;
      StripPrefix(&name, "machine-");
      if (!StripSuffix(&name, ".slice")) StripSuffix(&name, ".partition");
      if (name.size() == 35 && name.rfind("vtm", 0) == 0 && IsHex(name.substr(3))) {
        if (std::find(found.begin(), found.end(), Lower(name)) == found.end()) found.push_back(Lower(name));
      }
    }
  }
  return found;
}

// libvirt's AppArmor driver confines each domain's QEMU as "libvirt-<uuid>"; SO_PEERSEC adds
// the mode (" (enforce)") and sometimes a NUL.
std::optional<std::string> LibvirtProfileUuid(std::string label) {
  label = label.substr(0, label.find('\0'));
  label = label.substr(0, label.find(' '));
  if (!StripPrefix(&label, "libvirt-")) return std::nullopt;
  return Lower(label);
}

std::string Describe(const PeerFacts& f) { return "pid " + std::to_string(f.pid) + " uid " + std::to_string(f.uid); }

// ---- the child ------------------------------------------------------------------------------

std::optional<std::string> ReadProcFile(pid_t pid, const char* name, size_t limit) {
  std::string path = "/proc/" + std::to_string(pid) + "/" + name;
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) return std::nullopt;
  std::string out;
  char buf[4096];
  while (out.size() < limit) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return std::nullopt;
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

std::string UuidArgument(const std::string& cmdline) {
  std::vector<std::string> args;
  size_t start = 0;
  while (start < cmdline.size()) {
    size_t end = cmdline.find('\0', start);
    if (end == std::string::npos) end = cmdline.size();
    args.push_back(cmdline.substr(start, end - start));
    start = end + 1;
  }
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == "-uuid" || args[i] == "--uuid") return args[i + 1];
  }
  return "";
}

PeerFacts GatherFacts(int client) {
  PeerFacts f;
  if (auto cred = GetPeerCredentials(client); cred.ok()) {
    f.pid = cred->pid;
    f.uid = cred->uid;
  }
  char label[256] = {};
  socklen_t len = sizeof label - 1;
  if (getsockopt(client, SOL_SOCKET, SO_PEERSEC, label, &len) == 0) f.lsm_label.assign(label, len);
  // A pidfd pins the very process that connected: if it is still alive after /proc was read,
  // what was read is its, not a process that reused its pid.
  int pidfd = -1;
  socklen_t pidfd_len = sizeof pidfd;
  if (getsockopt(client, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &pidfd_len) != 0) pidfd = -1;
  UniqueFd pin(pidfd);
  if (f.pid > 0) {
    f.cgroups = ReadProcFile(f.pid, "cgroup", kMaxProcFile);
    f.cmdline_uuid = UuidArgument(ReadProcFile(f.pid, "cmdline", kMaxProcFile).value_or(""));
  }
  if (pin.valid()) {
    // Signal 0 only probes; EPERM (a peer of another uid) still means alive.
    f.exited = syscall(SYS_pidfd_send_signal, pin.get(), 0, nullptr, 0) != 0 && errno == ESRCH;
  } else if (f.pid > 0) {
    f.exited = kill(f.pid, 0) != 0 && errno == ESRCH;
  }
  return f;
}

[[maybe_unused]] Status ApplyInspectorFilter() {
  SeccompAllowList filter;
  // Receive a socket, read /proc, answer, log. kill(pid, 0) only probes (no pidfd support).
  VTM_RETURN_IF_ERROR(filter.Allow({
      SCMP_SYS(read),         SCMP_SYS(write),        SCMP_SYS(writev),         SCMP_SYS(close),
      SCMP_SYS(openat),       SCMP_SYS(open),         SCMP_SYS(recvmsg),        SCMP_SYS(sendmsg),
      SCMP_SYS(sendto),       SCMP_SYS(recvfrom),     SCMP_SYS(getsockopt),     SCMP_SYS(pidfd_send_signal),
      SCMP_SYS(brk),          SCMP_SYS(mmap),         SCMP_SYS(munmap),         SCMP_SYS(mremap),
      SCMP_SYS(madvise),      SCMP_SYS(futex),        SCMP_SYS(fstat),          SCMP_SYS(newfstatat),
      SCMP_SYS(lseek),        SCMP_SYS(getpid),       SCMP_SYS(gettid),         SCMP_SYS(clock_gettime),
      SCMP_SYS(gettimeofday), SCMP_SYS(rt_sigreturn), SCMP_SYS(rt_sigprocmask), SCMP_SYS(exit),
      SCMP_SYS(exit_group),
  }));
  VTM_RETURN_IF_ERROR(filter.AllowIf(SCMP_SYS(kill), SCMP_A1(SCMP_CMP_EQ, 0)));
  return filter.Load("the peer inspector");
}

// Spawn has closed every other descriptor and dropped to the inspector's uid. exec made the
// process dumpable again: undo that first, then make sure nobody of that uid attached in the
// moment before (a tracer could forge verdicts).
Status BecomeInspector() {
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return ErrnoError("PR_SET_DUMPABLE");
  auto status = ReadProcFile(getpid(), "status", kMaxProcFile);
  if (!status || status->find("\nTracerPid:\t0\n") == std::string::npos) {
    return Error(ErrorCode::kPermissionDenied, "the peer inspector is being traced (or cannot tell)");
  }
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return OkStatus();  // the sanitizer runtimes need syscalls the filter forbids (as the relay's)
#else
  return ApplyInspectorFilter();
#endif
}

[[noreturn]] void ServeInspections(int sock, const std::string& vm_uuid, PeerCheckMode mode) {
  for (;;) {
    char byte;
    iovec iov{&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) _exit(0);  // the relay is gone
    UniqueFd client;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
        client.reset(fd);
      }
    }
    PeerVerdict v;
    if (!client.valid()) {
      v.reason = "the relay sent no client socket";
    } else {
      v = DecidePeer(GatherFacts(client.get()), vm_uuid, mode);
    }
    std::string reply(1, static_cast<char>('0' + static_cast<int>(v.kind)));
    reply += v.reason.substr(0, kMaxReply - 1);
    (void)send(sock, reply.data(), reply.size(), MSG_NOSIGNAL);
  }
}

}  // namespace

Result<PeerCheckMode> ParsePeerCheckMode(const std::string& text) {
  if (text == "off") return PeerCheckMode::kOff;
  if (text == "warn") return PeerCheckMode::kWarn;
  if (text == "require") return PeerCheckMode::kRequire;
  return Error(ErrorCode::kInvalidArgument, "the QEMU peer check must be require, warn or off, not '" + text + "'");
}

const char* PeerCheckModeName(PeerCheckMode mode) {
  switch (mode) {
    case PeerCheckMode::kOff:
      return "off";
    case PeerCheckMode::kWarn:
      return "warn";
    case PeerCheckMode::kRequire:
      return "require";
  }
  return "?";
}

std::string VmCgroupPartition(const std::string& vm_uuid) {
  std::string hex;
  for (char c : Lower(vm_uuid)) {
    if (c != '-') hex += c;
  }
  return "vtm" + hex;
}

PeerVerdict DecidePeer(const PeerFacts& f, const std::string& vm_uuid, PeerCheckMode mode) {
  using Kind = PeerVerdict::Kind;
  const std::string who = Describe(f);
  const std::string uuid = Lower(vm_uuid);
  const std::string partition = VmCgroupPartition(vm_uuid);
  if (mode == PeerCheckMode::kOff) return {Kind::kAccept, who + ": peer check off"};
  if (f.pid <= 0) return {Kind::kRefuse, "a client whose pid the kernel does not tell (SO_PEERCRED failed)"};
  if (f.exited) return {Kind::kRefuse, who + " exited before it could be checked"};

  // Refusals first: any one proof of being another VM's QEMU outweighs the rest.
  std::optional<std::string> profile = LibvirtProfileUuid(f.lsm_label);
  if (profile && *profile != uuid) {
    return {Kind::kRefuse, who + " runs under AppArmor profile libvirt-" + *profile +
                               ", the QEMU of another VM (this vTPM belongs to " + uuid + ")"};
  }
  std::vector<std::string> partitions = f.cgroups ? PartitionsIn(*f.cgroups) : std::vector<std::string>{};
  auto foreign =
      std::find_if(partitions.begin(), partitions.end(), [&](const std::string& p) { return p != partition; });
  if (foreign != partitions.end()) {
    return {Kind::kRefuse,
            who + " is in cgroup partition " + *foreign + ", another VM's (this vTPM's is " + partition + ")"};
  }
  if (!f.cmdline_uuid.empty() && Lower(f.cmdline_uuid) != uuid) {
    return {Kind::kRefuse, who + " is a QEMU started with -uuid " + f.cmdline_uuid + ", not this VM's " + uuid +
                               " (its <tpm> points at another VM's socket?)"};
  }

  if (profile) return {Kind::kAccept, who + " runs under AppArmor profile libvirt-" + uuid};
  if (!partitions.empty()) return {Kind::kAccept, who + " is in this VM's cgroup partition " + partition};

  std::string unproven = who;
  unproven += " is neither in cgroup partition " + partition + " nor under AppArmor profile libvirt-" + uuid;
  if (!f.cgroups) unproven += " (its /proc/<pid>/cgroup was unreadable)";
  if (mode == PeerCheckMode::kRequire) {
    return {Kind::kRefuse,
            unproven + "; put the domain in <resource><partition>/machine/" + partition +
                "</partition></resource> (and check that libvirt places it there: it ignores the partition when it "
                "manages no cgroups), or set qemu-peer-check to warn or off"};
  }
  return {Kind::kAcceptUnproven, unproven +
                                     "; accepted (peer check: warn), so only file permissions keep other "
                                     "VMs' QEMUs off this vTPM"};
}

// ---- PeerInspector -------------------------------------------------------------------------

Result<PeerInspector> PeerInspector::Start(const std::string& vm_uuid, PeerCheckMode mode, uid_t uid, gid_t gid) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    return ErrnoError("creating the peer inspector's socket pair");
  }
  UniqueFd ours(sv[0]), theirs(sv[1]);
  // A fresh exec, not a bare fork: no copy of this process's memory, and a command line that
  // does not pass for a vtm-instance.
  SpawnOptions options;
  options.fds = {{kInspectorFd, theirs.get()}};
  options.uid = uid;
  options.gid = gid;
  options.new_session = false;
  options.parent_death_signal = SIGKILL;
  auto process = Subprocess::Spawn({"/proc/self/exe", kPeerInspectorFlag, vm_uuid, PeerCheckModeName(mode)}, options);
  if (!process.ok()) return std::move(process).error().Context("starting the peer inspector");
  SetIoTimeouts(ours.get());
  PeerInspector inspector;
  inspector.process_ = std::move(*process);
  inspector.socket_ = std::move(ours);
  return inspector;
}

PeerInspector::~PeerInspector() {
  socket_.reset();  // the child sees EOF and exits
  if (process_.pid() > 0) (void)process_.Wait(std::chrono::seconds(2));
}

int PeerInspectorMain(const std::vector<std::string>& args) {
  // Exec'd as /proc/self/exe (no path to traverse, so the unprivileged child can run a binary
  // under a directory only root may enter): without this, ps and top name it "exe".
  (void)prctl(PR_SET_NAME, "vtm-peer-insp", 0, 0, 0);
  SetLogComponent("vtm-peer-inspector");
  if (args.size() != 3 || args[0] != kPeerInspectorFlag) {
    LOG_ERROR << "usage: " << kPeerInspectorFlag << " VM-UUID require|warn";
    return 2;
  }
  auto mode = ParsePeerCheckMode(args[2]);
  if (!mode.ok()) {
    LOG_ERROR << mode.error().message();
    return 2;
  }
  SetLogComponent("vtm-peer-inspector[" + args[1] + "]");
  if (Status st = BecomeInspector(); !st.ok()) {
    LOG_ERROR << st.error().message();
    return 1;
  }
  ServeInspections(kInspectorFd, args[1], *mode);
}

PeerVerdict PeerInspector::Inspect(int client) const {
  PeerVerdict failed;
  if (!socket_.valid()) {
    failed.reason = "the peer inspector is not running";
    return failed;
  }
  char byte = 'Q';
  if (Status st = SendWithFd(socket_.get(), &byte, 1, client); !st.ok()) {
    failed.reason = "asking the peer inspector failed: " + st.error().message();
    return failed;
  }
  char reply[kMaxReply];
  ssize_t n;
  do {
    n = recv(socket_.get(), reply, sizeof reply, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 1 || reply[0] < '0' || reply[0] > '2') {
    failed.reason = n < 0 ? ErrnoError("waiting for the peer inspector").message() : "the peer inspector is gone";
    return failed;
  }
  PeerVerdict v;
  v.kind = static_cast<PeerVerdict::Kind>(reply[0] - '0');
  v.reason.assign(reply + 1, static_cast<size_t>(n - 1));
  return v;
}

}  // namespace vtm::instance
