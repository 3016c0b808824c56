// Setup of one VM's swtpm and the control-channel relay that QEMU talks to.
// Setup runs as root; after READY the process runs as the VM's uid under a seccomp filter,
// so a compromised QEMU that subverts the relay gains little beyond what swtpm's uid has.
#include "instance.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "vtm/fs.h"
#include "vtm/net.h"

namespace vtm::instance {
namespace {

// tpm_ioctl.h constants the instance needs; the header itself is C and not required to build.
constexpr uint32_t kPtmConfigFlagFileKey = 0x1;
constexpr uint32_t kPtmConfigFlagMigrationKey = 0x2;
// How many fds one recvmsg accepts; QEMU passes exactly one (with SET_DATAFD).
constexpr int kMaxFdsPerMessage = 4;
// A peer that stops reading must not wedge the relay (and with it SIGTERM handling).
constexpr std::chrono::seconds kSocketIoTimeout(5);
constexpr size_t kSunPathMax = sizeof(sockaddr_un::sun_path) - 1;

uint32_t LoadBe32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}
void StoreBe32(uint32_t v, uint8_t* p) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}

Result<unsigned long> ParseNumber(const std::string& option, const std::string& text, int base, unsigned long max) {
  if (text.empty()) return Error(ErrorCode::kInvalidArgument, option + " needs a value");
  errno = 0;
  char* end = nullptr;
  unsigned long v = std::strtoul(text.c_str(), &end, base);
  if (errno != 0 || *end != '\0' || text[0] == '-' || v > max) {
    return Error(ErrorCode::kInvalidArgument, option + ": not a valid number: " + text);
  }
  return v;
}

Status CheckPath(const std::string& option, const std::string& path) {
  if (path.empty() || path[0] != '/') {
    return Error(ErrorCode::kInvalidArgument, option + " must be an absolute path: " + path);
  }
  // swtpm splits its option values at commas; a comma in a path would change its meaning.
  if (path.find(',') != std::string::npos) {
    return Error(ErrorCode::kInvalidArgument, option + " must not contain ',': " + path);
  }
  return OkStatus();
}

bool LooksLikeUuid(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) || c == '-'; });
}

void SetIoTimeouts(int fd) {
  timeval tv{};
  tv.tv_sec = kSocketIoTimeout.count();
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

// One request/response exchange on a fresh connection to swtpm's control channel; used
// only while no QEMU is attached (swtpm serves one control client at a time).
Result<std::vector<uint8_t>> SwtpmCtrlCall(int fd, CtrlCommand cmd, size_t response_size) {
  uint8_t req[kCtrlCodeSize];
  StoreBe32(static_cast<uint32_t>(cmd), req);
  VTM_RETURN_IF_ERROR(WriteAll(fd, req, sizeof req));
  std::vector<uint8_t> resp(response_size);
  auto st = ReadAll(fd, resp.data(), resp.size());
  if (!st.ok())
    return std::move(st).error().Context("reading swtpm's answer to " + CtrlCommandName(static_cast<uint32_t>(cmd)));
  return resp;
}

std::string OneLine(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  std::replace(s.begin(), s.end(), '\r', ' ');
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Command line and keys

std::vector<std::string> ToCommandLine(const InstanceConfig& c) {
  char mode[8];
  snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(c.socket_mode));
  std::vector<std::string> args = {"--vm",         c.vm_uuid,
                                   "--tpm-state-dir", c.tpm_state_dir,
                                   "--run-dir",    c.run_dir,
                                   "--log-dir",    c.log_dir,
                                   "--uid",        std::to_string(c.uid),
                                   "--gid",        std::to_string(c.gid),
                                   "--socket-uid", std::to_string(c.socket_uid),
                                   "--socket-gid", std::to_string(c.socket_gid),
                                   "--keys-fd",    std::to_string(c.keys_fd),
                                   "--ready-fd",   std::to_string(c.ready_fd)};
  // Options at their defaults are left out, so `ps` shows what is particular to this VM.
  const InstanceConfig defaults;
  if (c.socket_mode != defaults.socket_mode) args.insert(args.end(), {"--socket-mode", mode});
  if (c.swtpm_path != defaults.swtpm_path) args.insert(args.end(), {"--swtpm", c.swtpm_path});
  if (!c.seccomp) args.push_back("--no-seccomp");
  static const char* kLevels[] = {"debug", "info", "warning", "error"};
  if (c.log_level != defaults.log_level) args.insert(args.end(), {"--log-level", kLevels[static_cast<int>(c.log_level)]});
  return args;
}

Result<InstanceConfig> ParseCommandLine(const std::vector<std::string>& args) {
  InstanceConfig c;
  bool have_uid = false, have_gid = false, have_keys = false, have_ready = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& opt = args[i];
    if (opt == "--no-seccomp") {
      c.seccomp = false;
      continue;
    }
    if (i + 1 >= args.size()) return Error(ErrorCode::kInvalidArgument, opt + " needs a value");
    const std::string& val = args[++i];
    if (opt == "--vm") {
      if (!LooksLikeUuid(val)) return Error(ErrorCode::kInvalidArgument, "--vm must be a UUID: " + val);
      c.vm_uuid = val;
    } else if (opt == "--tpm-state-dir") {
      VTM_RETURN_IF_ERROR(CheckPath(opt, val));
      c.tpm_state_dir = val;
    } else if (opt == "--run-dir") {
      VTM_RETURN_IF_ERROR(CheckPath(opt, val));
      c.run_dir = val;
    } else if (opt == "--log-dir") {
      VTM_RETURN_IF_ERROR(CheckPath(opt, val));
      c.log_dir = val;
    } else if (opt == "--uid") {
      VTM_ASSIGN_OR_RETURN(c.uid, ParseNumber(opt, val, 10, 0xfffffffe));
      have_uid = true;
    } else if (opt == "--gid") {
      VTM_ASSIGN_OR_RETURN(c.gid, ParseNumber(opt, val, 10, 0xfffffffe));
      have_gid = true;
    } else if (opt == "--socket-uid") {
      VTM_ASSIGN_OR_RETURN(c.socket_uid, ParseNumber(opt, val, 10, 0xfffffffe));
    } else if (opt == "--socket-gid") {
      VTM_ASSIGN_OR_RETURN(c.socket_gid, ParseNumber(opt, val, 10, 0xfffffffe));
    } else if (opt == "--socket-mode") {
      VTM_ASSIGN_OR_RETURN(c.socket_mode, ParseNumber(opt, val, 8, 0777));
    } else if (opt == "--keys-fd") {
      VTM_ASSIGN_OR_RETURN(c.keys_fd, ParseNumber(opt, val, 10, 65535));
      have_keys = true;
    } else if (opt == "--ready-fd") {
      VTM_ASSIGN_OR_RETURN(c.ready_fd, ParseNumber(opt, val, 10, 65535));
      have_ready = true;
    } else if (opt == "--swtpm") {
      if (val.empty()) return Error(ErrorCode::kInvalidArgument, "--swtpm needs a path");
      c.swtpm_path = val;
    } else if (opt == "--log-level") {
      if (val == "debug")
        c.log_level = LogLevel::kDebug;
      else if (val == "info")
        c.log_level = LogLevel::kInfo;
      else if (val == "warning")
        c.log_level = LogLevel::kWarning;
      else if (val == "error")
        c.log_level = LogLevel::kError;
      else
        return Error(ErrorCode::kInvalidArgument, "--log-level must be debug, info, warning or error");
    } else {
      return Error(ErrorCode::kInvalidArgument, "unknown option " + opt);
    }
  }
  if (c.vm_uuid.empty()) return Error(ErrorCode::kInvalidArgument, "--vm is required");
  if (c.tpm_state_dir.empty()) return Error(ErrorCode::kInvalidArgument, "--tpm-state-dir is required");
  if (c.run_dir.empty()) return Error(ErrorCode::kInvalidArgument, "--run-dir is required");
  if (c.log_dir.empty()) return Error(ErrorCode::kInvalidArgument, "--log-dir is required");
  if (!have_uid || !have_gid) return Error(ErrorCode::kInvalidArgument, "--uid and --gid are required");
  if (!have_keys) return Error(ErrorCode::kInvalidArgument, "--keys-fd is required");
  if (!have_ready) return Error(ErrorCode::kInvalidArgument, "--ready-fd is required");
  if (c.keys_fd <= 2 || c.ready_fd <= 2 || c.keys_fd == c.ready_fd) {
    return Error(ErrorCode::kInvalidArgument, "--keys-fd and --ready-fd must be distinct fds above 2");
  }
  for (const auto& p : {c.TpmSocketPath(), c.SwtpmCtrlSocketPath()}) {
    if (p.size() > kSunPathMax) {
      return Error(ErrorCode::kInvalidArgument, "--run-dir is too long for a unix socket path (max " +
                                                    std::to_string(kSunPathMax) + " bytes): " + p);
    }
  }
  return c;
}

Result<InstanceKeys> ReadInstanceKeys(int fd, std::chrono::milliseconds timeout) {
  SecretBytes buf(2 * kKeySize + 1);  // one spare byte detects a writer sending too much
  size_t got = 0;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return Error(ErrorCode::kUnavailable, "timed out reading the keys from --keys-fd (got " + std::to_string(got) +
                                                " of " + std::to_string(2 * kKeySize) + " bytes and no EOF)");
    }
    pollfd p{fd, POLLIN, 0};
    int r = poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return ErrnoError("waiting for the keys on --keys-fd");
    if (r == 0) continue;
    ssize_t n = read(fd, buf.data() + got, buf.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("reading the keys from --keys-fd");
    if (n == 0) break;
    got += static_cast<size_t>(n);
    if (got > 2 * kKeySize) {
      return Error(ErrorCode::kInvalidArgument,
                   "--keys-fd carried more than " + std::to_string(2 * kKeySize) + " bytes");
    }
  }
  if (got != 2 * kKeySize) {
    return Error(ErrorCode::kInvalidArgument, "--keys-fd carried " + std::to_string(got) + " bytes, expected " +
                                                  std::to_string(2 * kKeySize) +
                                                  " (32-byte state key, 32-byte migration key)");
  }
  InstanceKeys keys;
  keys.state_key = SecretBytes(buf.data(), kKeySize);
  keys.migration_key = SecretBytes(buf.data() + kKeySize, kKeySize);
  return keys;
}

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
// ControlRelay

ControlRelay::ControlRelay(UniqueFd listener, std::string swtpm_ctrl_path)
    : listener_(std::move(listener)), swtpm_ctrl_path_(std::move(swtpm_ctrl_path)) {}

Status ControlRelay::Serve(int wake_fd) {
  for (;;) {
    // While a client is attached the listener is not polled: a second QEMU waits in the
    // backlog, as it would with swtpm itself, until the first one goes.
    pollfd fds[3] = {{wake_fd, POLLIN, 0}, {-1, POLLIN, 0}, {-1, POLLIN, 0}};
    if (client_.valid()) {
      fds[1].fd = client_.get();
      fds[2].fd = swtpm_.get();
    } else {
      fds[1].fd = listener_.get();
    }
    int r = poll(fds, 3, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("poll");
    }
    if (fds[0].revents & POLLIN) return OkStatus();
    if (!client_.valid()) {
      if (fds[1].revents & (POLLERR | POLLNVAL)) return Error(ErrorCode::kIo, "the listening socket failed");
      if (fds[1].revents & POLLIN) AcceptClient();
      continue;
    }
    // Answers first, so a response and a hang-up in the same round reach the client in order.
    if (fds[2].revents & (POLLIN | POLLHUP | POLLERR)) {
      if (!PumpFromSwtpm()) continue;
    }
    if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) PumpFromClient();
  }
}

void ControlRelay::AcceptClient() {
  UniqueFd client(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!client.valid()) {
    if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
      LOG_WARNING << ErrnoError("accepting a client on tpm.sock").message();
    return;
  }
  std::string peer = "unknown peer";
  if (auto cred = GetPeerCredentials(client.get()); cred.ok()) {
    peer = "pid " + std::to_string(cred->pid) + " uid " + std::to_string(cred->uid);
  }
  auto swtpm = ConnectUnix(swtpm_ctrl_path_);
  if (!swtpm.ok()) {
    LOG_ERROR << "QEMU (" << peer
              << ") connected but swtpm's control channel is unreachable: " << swtpm.error().message()
              << "; dropping the client";
    return;
  }
  SetIoTimeouts(client.get());
  SetIoTimeouts(swtpm->get());
  client_ = std::move(client);
  swtpm_ = std::move(*swtpm);
  ++sessions_;
  session_requests_ = 0;
  LOG_INFO << "QEMU attached (" << peer << "), session " << sessions_;
}

void ControlRelay::EndSession(const std::string& why) {
  if (!client_.valid()) return;
  LOG_INFO << "QEMU detached (" << why << ") after " << session_requests_ << " control requests";
  client_.reset();
  swtpm_.reset();
  from_client_.clear();
  pending_fds_.clear();
}

bool ControlRelay::PumpFromClient() {
  uint8_t buf[16384];
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  iovec iov{buf, sizeof buf};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n = recvmsg(client_.get(), &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  if (n < 0) {
    if (errno == EINTR || errno == EAGAIN) return true;
    EndSession(ErrnoError("reading from QEMU").message());
    return false;
  }
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      pending_fds_.emplace_back(fd);
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    EndSession("QEMU sent more file descriptors than a control request may carry");
    return false;
  }
  if (n == 0) {
    EndSession("QEMU closed the connection");
    return false;
  }
  from_client_.insert(from_client_.end(), buf, buf + n);

  while (!from_client_.empty()) {
    CtrlParseResult p = ParseCtrlRequest(from_client_);
    if (p.kind == CtrlParseResult::Kind::kNeedMore) break;
    if (p.kind == CtrlParseResult::Kind::kMalformed) {
      LOG_WARNING << "malformed control stream from QEMU: " << p.error;
      EndSession("malformed control request");
      return false;
    }
    if (!ForwardRequest(p.request)) return false;
    from_client_.erase(from_client_.begin(), from_client_.begin() + static_cast<std::ptrdiff_t>(p.request.size));
  }
  return true;
}

bool ControlRelay::ForwardRequest(const CtrlRequest& request) {
  ++counts_[request.code];
  ++session_requests_;
  std::string name = CtrlCommandName(request.code);
  if (!request.known) {
    LOG_WARNING << "passing on unknown control command " << name << " (" << request.size << " bytes)";
  } else if (request.state_blob) {
    LOG_DEBUG << "ctrl " << name << " type=" << request.state_blob->blob_type << " flags=0x" << std::hex
              << request.state_blob->state_flags << std::dec << " length=" << request.state_blob->length;
  } else if (request.init_flags) {
    LOG_DEBUG << "ctrl " << name << " flags=0x" << std::hex << *request.init_flags;
  } else {
    LOG_DEBUG << "ctrl " << name;
  }

  std::vector<uint8_t> bytes(from_client_.begin(), from_client_.begin() + static_cast<std::ptrdiff_t>(request.size));
  // QEMU sends SHUTDOWN when it exits, which would end swtpm; but swtpm's life belongs to
  // vtmd (the VM may be started again on the same vTPM). STOP has the same effect on the
  // TPM (libtpms terminated, state on disk) and the same 4-byte answer, and keeps swtpm.
  if (request.code == static_cast<uint32_t>(CtrlCommand::kShutdown)) {
    LOG_INFO << "QEMU sent SHUTDOWN; passing it to swtpm as STOP so the vTPM stays available";
    StoreBe32(static_cast<uint32_t>(CtrlCommand::kStop), bytes.data());
  }

  // Only SET_DATAFD carries a descriptor (the TPM data socket). Anything else is dropped
  // so that swtpm never holds descriptors it does not expect.
  std::vector<UniqueFd> fds = std::move(pending_fds_);
  pending_fds_.clear();
  bool wants_fd = request.code == static_cast<uint32_t>(CtrlCommand::kSetDataFd);
  if (!wants_fd && !fds.empty()) {
    LOG_WARNING << "dropping " << fds.size() << " file descriptor(s) QEMU sent with " << name;
    fds.clear();
  }
  if (wants_fd && fds.size() > 1) {
    LOG_WARNING << "SET_DATAFD came with " << fds.size() << " descriptors; passing on the first";
    fds.resize(1);
  }

  // One sendmsg per request: swtpm frames most requests by read() boundaries. A large
  // SET_STATEBLOB may go out in pieces; the descriptor goes with the first one.
  if (Status st = SendWithFd(swtpm_.get(), bytes.data(), bytes.size(), fds.empty() ? -1 : fds[0].get()); !st.ok()) {
    EndSession(std::move(st).error().Context("passing " + name + " to swtpm").message());
    return false;
  }
  return true;
}

bool ControlRelay::PumpFromSwtpm() {
  uint8_t buf[16384];
  ssize_t n = recv(swtpm_.get(), buf, sizeof buf, MSG_DONTWAIT);
  if (n < 0) {
    if (errno == EINTR || errno == EAGAIN) return true;
    EndSession(ErrnoError("reading from swtpm").message());
    return false;
  }
  if (n == 0) {
    EndSession("swtpm closed the control connection");
    return false;
  }
  auto st = WriteAll(client_.get(), buf, static_cast<size_t>(n));
  if (!st.ok()) {
    EndSession("writing to QEMU: " + st.error().message());
    return false;
  }
  return true;
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
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return ErrnoError("PR_SET_NO_NEW_PRIVS");
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
  if (ctx == nullptr) return Error(ErrorCode::kInternal, "seccomp_init failed");
  struct Releaser {
    scmp_filter_ctx c;
    ~Releaser() { seccomp_release(c); }
  } releaser{ctx};

  // What the relay loop, logging, the allocator and the shutdown path use. Nothing opens
  // files, executes programs or creates non-unix sockets after setup.
  const int allowed[] = {
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
  };
  for (int sys : allowed) {
    if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, sys, 0) != 0) {
      return Error(ErrorCode::kInternal, "seccomp_rule_add failed for syscall " + std::to_string(sys));
    }
  }
  // Unix sockets only (connections to swtpm's control channel).
  if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1, SCMP_A0(SCMP_CMP_EQ, AF_UNIX)) != 0) {
    return Error(ErrorCode::kInternal, "seccomp_rule_add failed for socket");
  }
  // Signals only to our own swtpm (Terminate) and to ourselves (abort()).
  if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(kill), 1,
                       SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(swtpm_.pid()))) != 0 ||
      seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(kill), 1,
                       SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(getpid()))) != 0 ||
      seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(tgkill), 1,
                       SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(getpid()))) != 0) {
    return Error(ErrorCode::kInternal, "seccomp_rule_add failed for kill");
  }
  int rc = seccomp_load(ctx);
  if (rc != 0) return ErrnoError("loading the seccomp filter", -rc);
  LOG_INFO << "seccomp filter applied";
  return OkStatus();
}

int InstanceProcess::ServeUntilStopped() {
  ControlRelay relay(std::move(listener_), config_.SwtpmCtrlSocketPath());
  for (;;) {
    auto st = relay.Serve(signal_fd_.get());
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
