// Starting, driving and stopping the provisioning swtpm over its control protocol
// (/usr/include/swtpm/tpm_ioctl.h: big-endian command code, then a big-endian ptm_res).
// Keys reach swtpm through pipes, the data socket through SCM_RIGHTS.
#include "vtm/provisioning_swtpm.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "vtm/fs.h"
#include "vtm/log.h"
#include "vtm/net.h"

namespace vtm {
namespace {

// tpm_ioctl.h's command codes (the header is C and only in swtpm-dev; these are its ABI).
constexpr uint32_t kCmdShutdown = 0x03;
constexpr uint32_t kCmdGetConfig = 0x0f;
constexpr uint32_t kCmdSetDataFd = 0x10;
// CMD_GET_CONFIG flags: which keys swtpm runs with.
constexpr uint32_t kConfigFileKey = 0x1;
constexpr uint32_t kConfigMigrationKey = 0x2;
constexpr size_t kKeySize = 32;  // AES-256, as vtm-instance passes them

// Child fd numbers; fd 3 is the control channel as in swtpm's own documentation.
constexpr int kCtrlFd = 3;
constexpr int kStateKeyFd = 4;
constexpr int kMigrationKeyFd = 5;

void StoreBe32(uint32_t v, uint8_t* p) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}
uint32_t LoadBe32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

const char* CommandName(uint32_t code) {
  switch (code) {
    case kCmdShutdown:
      return "CMD_SHUTDOWN";
    case kCmdGetConfig:
      return "CMD_GET_CONFIG";
    case kCmdSetDataFd:
      return "CMD_SET_DATAFD";
    default:
      return "control command";
  }
}

// One request on the control channel, optionally carrying fd_to_pass; reads response_size
// bytes back and checks the leading ptm_res. swtpm frames requests by read() boundaries, so
// the request goes out in one sendmsg (SendWithFd).
Result<std::vector<uint8_t>> CtrlCall(int ctrl, uint32_t code, size_t response_size, int fd_to_pass = -1) {
  uint8_t request[4];
  StoreBe32(code, request);
  if (Status st = SendWithFd(ctrl, request, sizeof request, fd_to_pass); !st.ok()) {
    return std::move(st).error().Context(std::string("sending ") + CommandName(code));
  }
  std::vector<uint8_t> response(response_size);
  if (Status st = ReadAll(ctrl, response.data(), response.size()); !st.ok()) {
    return std::move(st).error().Context(std::string("reading swtpm's answer to ") + CommandName(code));
  }
  uint32_t result = LoadBe32(response.data());
  if (result != 0) {
    return Error(ErrorCode::kUnavailable,
                 std::string("swtpm refused ") + CommandName(code) + " (TPM result " + std::to_string(result) + ")");
  }
  return response;
}

// A pipe holding key, its write end already closed, so swtpm reads the key and then EOF.
Result<UniqueFd> KeyPipe(const SecretBytes& key, const char* what) {
  if (key.size() != kKeySize) {
    return Error(ErrorCode::kInvalidArgument, std::string(what) + " must have " + std::to_string(kKeySize) +
                                                  " bytes, not " + std::to_string(key.size()));
  }
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return ErrnoError(std::string("creating the pipe for the ") + what);
  UniqueFd read_end(fds[0]), write_end(fds[1]);
  VTM_RETURN_IF_ERROR(WriteAll(write_end.get(), key.data(), key.size()));
  return read_end;
}

Status SetTimeouts(int fd, std::chrono::milliseconds timeout) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) {
    return ErrnoError("setting socket timeouts");
  }
  return OkStatus();
}

size_t FileSize(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<size_t>(st.st_size) : 0;
}

// Why swtpm stopped answering during startup: its exit status and what it logged since `from`
// (a wrong state key, say, is only reported there).
Error StartupFailure(Subprocess& swtpm, const Error& cause, const std::string& log_path, size_t from) {
  std::string what = "swtpm stopped answering (" + cause.message() + ")";
  auto status = swtpm.Wait(std::chrono::seconds(2));
  if (status.ok()) what = "swtpm " + DescribeWaitStatus(*status) + " during startup";
  if (log_path.empty()) return Error(ErrorCode::kUnavailable, what);
  auto text = ReadFile(log_path);
  std::string tail = text.ok() && text->size() > from ? text->substr(from) : std::string();
  constexpr size_t kTail = 300;
  if (tail.size() > kTail) tail = "..." + tail.substr(tail.size() - kTail);
  while (!tail.empty() && (tail.back() == '\n' || tail.back() == ' ')) tail.pop_back();
  for (char& c : tail) {
    if (c == '\n') c = ' ';
  }
  return Error(ErrorCode::kUnavailable,
               what + "; " + (tail.empty() ? "nothing in " + log_path : log_path + " ends with: " + tail) +
                   " (a state encrypted with another key is refused this way)");
}

}  // namespace

Result<std::unique_ptr<ProvisioningSwtpm>> ProvisioningSwtpm::Start(const ProvisioningSwtpmOptions& options) {
  const std::string& dir = options.tpm_state_dir;
  const std::string label = options.label.empty() ? "provisioning swtpm in " + dir : options.label;
  const std::string context = "starting swtpm to provision the " + label;
  if (dir.empty() || dir[0] != '/' || dir.find(',') != std::string::npos) {
    return Error(ErrorCode::kInvalidArgument,
                 "vTPM state directory \"" + dir + "\" must be an absolute path without commas")
        .Context(context);
  }
  if (options.log_path.find(',') != std::string::npos) {
    return Error(ErrorCode::kInvalidArgument, "swtpm log path \"" + options.log_path + "\" must not contain commas")
        .Context(context);
  }
  if (Status st = options.env->MakeDir(dir, 0700, options.uid, options.gid); !st.ok()) {
    return std::move(st).error().Context(context);
  }

  std::vector<std::string> argv = {
      options.swtpm_path,
      "socket",
      "--tpm2",
      "--tpmstate",
      "dir=" + dir + ",mode=0600",
      "--ctrl",
      "type=unixio,clientfd=" + std::to_string(kCtrlFd),
      // Powered on and started like a TPM after firmware, so TPM commands work at once.
      "--flags",
      "not-need-init,startup-clear",
  };
  SpawnOptions spawn;
  spawn.uid = options.uid;
  spawn.gid = options.gid;
  // A half-provisioned vTPM is undone by the owner's successor; its swtpm must not outlive
  // the owner (kill -9 of vtmd mid-create).
  spawn.parent_death_signal = SIGKILL;

  UniqueFd state_key, migration_key;
  if (options.state_key != nullptr) {
    auto pipe = KeyPipe(*options.state_key, "state key");
    if (!pipe.ok()) return std::move(pipe).error().Context(context);
    state_key = std::move(*pipe);
    spawn.fds[kStateKeyFd] = state_key.get();
    argv.insert(argv.end(),
                {"--key", "fd=" + std::to_string(kStateKeyFd) + ",mode=aes-256-cbc,format=binary,remove=true"});
  }
  if (options.migration_key != nullptr) {
    auto pipe = KeyPipe(*options.migration_key, "migration key");
    if (!pipe.ok()) return std::move(pipe).error().Context(context);
    migration_key = std::move(*pipe);
    spawn.fds[kMigrationKeyFd] = migration_key.get();
    argv.insert(argv.end(), {"--migration-key",
                             "fd=" + std::to_string(kMigrationKeyFd) + ",mode=aes-256-cbc,format=binary,remove=true"});
  }
  if (!options.log_path.empty()) {
    // Created here and given to swtpm's user: swtpm opens --log after dropping to uid.
    UniqueFd log(::open(options.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
    if (!log.valid()) return ErrnoError("creating swtpm log " + options.log_path).Context(context);
    if ((options.uid || options.gid) && ::fchown(log.get(), options.uid ? *options.uid : static_cast<uid_t>(-1),
                                                 options.gid ? *options.gid : static_cast<gid_t>(-1)) != 0) {
      return ErrnoError("changing owner of " + options.log_path).Context(context);
    }
    argv.insert(argv.end(), {"--log", "file=" + options.log_path});
    spawn.output_file = options.log_path;
  }
  argv.insert(argv.end(), options.extra_args.begin(), options.extra_args.end());

  int ctrl_pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctrl_pair) != 0) {
    return ErrnoError("creating the control socketpair").Context(context);
  }
  UniqueFd ctrl(ctrl_pair[0]), ctrl_child(ctrl_pair[1]);
  spawn.fds[kCtrlFd] = ctrl_child.get();

  const size_t log_start = options.log_path.empty() ? 0 : FileSize(options.log_path);
  std::unique_ptr<ProvisioningSwtpm> self(new ProvisioningSwtpm());
  self->label_ = label;
  self->log_path_ = options.log_path;
  self->timeout_ = options.timeout;
  auto child = options.env->Spawn(argv, spawn);
  if (!child.ok()) return std::move(child).error().Context(context + " (is swtpm installed?)");
  self->swtpm_ = std::move(*child);
  if (!options.process_record.empty()) {
    if (Status st = RecordProcess(options.process_record, self->swtpm_.pid()); !st.ok()) {
      return std::move(st).error().Context(context);
    }
    self->process_record_ = options.process_record;
  }
  // Only swtpm holds these now: if it exits, reads on ctrl see EOF instead of hanging.
  ctrl_child.reset();
  state_key.reset();
  migration_key.reset();

  // From here on, `self` going out of scope stops swtpm (Subprocess's destructor).
  if (Status st = SetTimeouts(ctrl.get(), options.timeout); !st.ok()) return std::move(st).error().Context(context);
  auto config = CtrlCall(ctrl.get(), kCmdGetConfig, 8);
  if (!config.ok()) return StartupFailure(self->swtpm_, config.error(), options.log_path, log_start).Context(context);
  uint32_t flags = LoadBe32(config->data() + 4);
  if ((options.state_key != nullptr && !(flags & kConfigFileKey)) ||
      (options.migration_key != nullptr && !(flags & kConfigMigrationKey))) {
    return Error(ErrorCode::kFailedPrecondition,
                 "swtpm runs without the state or migration key it was given (CMD_GET_CONFIG flags " +
                     std::to_string(flags) + ")")
        .Context(context);
  }

  int data_pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, data_pair) != 0) {
    return ErrnoError("creating the TPM data socketpair").Context(context);
  }
  UniqueFd data(data_pair[0]), data_child(data_pair[1]);
  auto set = CtrlCall(ctrl.get(), kCmdSetDataFd, 4, data_child.get());
  if (!set.ok()) return StartupFailure(self->swtpm_, set.error(), options.log_path, log_start).Context(context);
  data_child.reset();
  // A TPM command that never gets an answer (swtpm hung) must not hang vtmd forever.
  if (Status st = SetTimeouts(data.get(), std::chrono::minutes(1)); !st.ok()) {
    return std::move(st).error().Context(context);
  }
  self->ctrl_ = std::move(ctrl);

  auto tpm = Tpm::OpenStream(std::move(data), label);
  if (!tpm.ok()) return std::move(tpm).error().Context(context);
  self->tpm_ = std::move(*tpm);
  LOG_INFO << "provisioning swtpm for the " << label << " started (pid " << self->swtpm_.pid() << ")";
  return self;
}

Status ProvisioningSwtpm::Shutdown() {
  if (shut_down_) return OkStatus();
  shut_down_ = true;
  const std::string context = "shutting down the provisioning swtpm of the " + label_;
  tpm_.reset();  // closes the data socket; swtpm keeps running until told otherwise
  Status sent = OkStatus();
  if (ctrl_.valid()) {
    auto response = CtrlCall(ctrl_.get(), kCmdShutdown, 4);
    if (!response.ok()) sent = std::move(response).error().Context(context);
    ctrl_.reset();
  }
  auto status = swtpm_.Wait(timeout_);
  if (!status.ok()) swtpm_.Terminate();
  if (!process_record_.empty()) ::unlink(process_record_.c_str());
  if (!status.ok()) {
    return Error(ErrorCode::kUnavailable,
                 "swtpm did not exit within " + std::to_string(timeout_.count()) + " ms of CMD_SHUTDOWN and was killed")
        .Context(context);
  }
  if (!sent.ok()) return sent;
  if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
    return Error(ErrorCode::kUnavailable,
                 "swtpm " + DescribeWaitStatus(*status) + (log_path_.empty() ? "" : "; see " + log_path_))
        .Context(context);
  }
  return OkStatus();
}

ProvisioningSwtpm::~ProvisioningSwtpm() {
  // A Start() that failed half-way leaves no Tpm: Subprocess's destructor then stops swtpm.
  if (shut_down_ || !tpm_) {
    if (!shut_down_) {
      swtpm_.Terminate();
      if (!process_record_.empty()) ::unlink(process_record_.c_str());
    }
    return;
  }
  if (Status st = Shutdown(); !st.ok()) LOG_WARNING << st.error().message();
}

}  // namespace vtm
