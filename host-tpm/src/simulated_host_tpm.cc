// An swtpm process standing in for the host TPM (development, demos, tests). It listens on
// loopback TCP so the stock swtpm TCTI of tpm2-tss reaches it; its state directory keeps the
// seeds across restarts, so secrets sealed to it survive a restart like they survive a reboot.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <string_view>
#include <thread>

#include "vtm/fs.h"
#include "vtm/host_tpm.h"
#include "vtm/log.h"
#include "vtm/net.h"
#include "vtm/subprocess.h"

namespace vtm {
namespace {

constexpr int kStartAttempts = 5;
constexpr auto kStartTimeout = std::chrono::seconds(10);

// True if nothing holds 127.0.0.1:port right now (a bind test; the caller still may lose a race).
bool LoopbackPortFree(int port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  return ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
}

// The tpm2-tss swtpm TCTI always uses the data port + 1 as the control port, so both must be free.
Result<int> PickFreePortPair() {
  for (int i = 0; i < 50; ++i) {
    VTM_ASSIGN_OR_RETURN(int port, PickFreeTcpPort());
    if (port < 65535 && LoopbackPortFree(port + 1)) return port;
  }
  return Error(ErrorCode::kUnavailable, "found no two consecutive free TCP ports on 127.0.0.1");
}

size_t FileSize(const std::string& path) {
  auto text = ReadFile(path);
  return text.ok() ? text->size() : 0;
}

// What swtpm wrote to its log after byte `from` (this attempt), so a failed start says why
// without opening the file.
std::string LogTail(const std::string& path, size_t from) {
  auto text = ReadFile(path);
  if (!text.ok() || text->size() <= from) return "swtpm wrote nothing to its log " + path;
  std::string_view mine(*text);
  mine.remove_prefix(from);
  constexpr size_t kTail = 400;
  std::string tail = mine.size() > kTail ? "..." + std::string(mine.substr(mine.size() - kTail)) : std::string(mine);
  while (!tail.empty() && (tail.back() == '\n' || tail.back() == ' ')) tail.pop_back();
  return "its log " + path + " ends with: " + tail;
}

// Sends one TPM2_GetRandom over swtpm's data port and checks the TPM answers. swtpm binds its
// sockets before it initializes libtpms and locks the state directory, so open ports alone do
// not mean the TPM works (a second swtpm on a locked directory listens briefly, then exits).
Status ProbeTpm(int port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoError("socket");
  timeval timeout{2, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return ErrnoError("connecting to swtpm on 127.0.0.1:" + std::to_string(port));
  }
  // TPM_ST_NO_SESSIONS, size 12, TPM_CC_GetRandom, bytesRequested 8.
  static constexpr uint8_t kGetRandom[] = {0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8};
  VTM_RETURN_IF_ERROR(WriteAll(fd.get(), kGetRandom, sizeof kGetRandom));
  uint8_t header[10];  // tag, size, response code
  if (Status st = ReadAll(fd.get(), header, sizeof header); !st.ok()) {
    return std::move(st).error().Context("swtpm did not answer a TPM command");
  }
  auto be32 = [&](int at) {
    return (uint32_t{header[at]} << 24) | (uint32_t{header[at + 1]} << 16) | (uint32_t{header[at + 2]} << 8) |
           header[at + 3];
  };
  uint32_t size = be32(2), rc = be32(6);
  // Read the rest too: closing with unread data would reset the connection under swtpm.
  uint8_t body[64];
  if (size < sizeof header || size - sizeof header > sizeof body) {
    return Error(ErrorCode::kUnavailable, "swtpm sent a malformed response (" + std::to_string(size) + " bytes)");
  }
  VTM_RETURN_IF_ERROR(ReadAll(fd.get(), body, size - sizeof header));
  if (rc != 0) {
    return Error(ErrorCode::kUnavailable, "swtpm answered TPM2_GetRandom with response code " + std::to_string(rc));
  }
  return OkStatus();
}

// Waits until swtpm listens on both ports and its TPM answers, or reports that it exited
// (a lost port race, a state directory in use) or hung.
Status WaitUntilServing(Subprocess& swtpm, int port) {
  auto deadline = std::chrono::steady_clock::now() + kStartTimeout;
  Status last = Error(ErrorCode::kUnavailable, "swtpm did not listen on 127.0.0.1:" + std::to_string(port));
  for (;;) {
    if (!swtpm.running()) {
      auto status = swtpm.Wait(std::chrono::milliseconds(0));
      return Error(ErrorCode::kUnavailable,
                   "swtpm " + (status.ok() ? DescribeWaitStatus(*status) : std::string("exited")));
    }
    if (WaitForTcpPort(port, std::chrono::milliseconds(50)).ok() &&
        WaitForTcpPort(port + 1, std::chrono::milliseconds(50)).ok()) {
      last = ProbeTpm(port);
      if (last.ok()) return OkStatus();
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return Error(ErrorCode::kUnavailable, "swtpm was not ready within " + std::to_string(kStartTimeout.count()) +
                                                " s: " + last.error().message());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace

struct SimulatedHostTpm::Impl {
  Subprocess swtpm;
  std::string state_dir;
};

Result<std::unique_ptr<SimulatedHostTpm>> SimulatedHostTpm::Start(const std::string& state_dir) {
  // swtpm splits its option values on commas, so such a path would be misread.
  if (state_dir.empty() || state_dir.find(',') != std::string::npos) {
    return Error(ErrorCode::kInvalidArgument,
                 "simulated host TPM state directory \"" + state_dir + "\" must be non-empty and contain no comma");
  }
  const std::string context = "starting the simulated host TPM in " + state_dir;
  // 0700: the state files hold the TPM's seeds, i.e. everything that is "sealed" to it.
  if (auto st = MakeDir(state_dir, 0700); !st.ok()) return std::move(st).error().Context(context);
  const std::string log_path = state_dir + "/swtpm.log";
  // An swtpm left by an owner killed before it could stop it (kill -9 of vtmd) holds the
  // state directory's lock; end it, identified by the record its owner left.
  const std::string record = state_dir + "/swtpm.process";
  auto stale = EndRecordedProcess(record);
  if (!stale.ok()) return std::move(stale).error().Context(context);
  if (*stale > 0) LOG_WARNING << "ended the simulated host TPM's swtpm (pid " << *stale << ") that its owner left running";

  Error last_error(ErrorCode::kUnavailable, "no attempt made");
  size_t log_start = 0;
  for (int attempt = 1; attempt <= kStartAttempts; ++attempt) {
    auto port = PickFreePortPair();
    if (!port.ok()) return std::move(port).error().Context(context);
    const std::string p = std::to_string(*port);
    std::vector<std::string> argv = {
        "swtpm", "socket", "--tpm2",
        "--tpmstate", "dir=" + state_dir,
        "--server", "type=tcp,port=" + p + ",bindaddr=127.0.0.1",
        "--ctrl", "type=tcp,port=" + std::to_string(*port + 1) + ",bindaddr=127.0.0.1",
        // swtpm powers on and runs TPM2_Startup(CLEAR) itself, as firmware would on a host.
        "--flags", "not-need-init,startup-clear",
        "--log", "file=" + log_path,
    };
    log_start = FileSize(log_path);
    SpawnOptions options;
    options.output_file = log_path;  // anything swtpm prints before its log is open
    // The simulated TPM lives and dies with its owner (a clean shutdown: swtpm saves its state).
    options.parent_death_signal = SIGTERM;
    auto swtpm = Subprocess::Spawn(argv, options);
    if (!swtpm.ok()) return std::move(swtpm).error().Context(context + " (is swtpm installed?)");
    Status serving = WaitUntilServing(*swtpm, *port);
    if (serving.ok()) {
      if (Status recorded = RecordProcess(record, swtpm->pid()); !recorded.ok()) {
        return std::move(recorded).error().Context(context);
      }
      std::unique_ptr<SimulatedHostTpm> tpm(new SimulatedHostTpm());
      tpm->impl_ = std::make_unique<Impl>(Impl{std::move(swtpm).value(), state_dir});
      tpm->tcti_ = "swtpm:host=127.0.0.1,port=" + p;
      LOG_WARNING << "USING A SIMULATED HOST TPM (swtpm pid " << tpm->pid() << ", " << tpm->tcti_
                  << "): this is NOT a hardware root of trust. Keys sealed to it are only as safe as the files in "
                  << state_dir << " - anyone who can read them can unseal every key. For development and tests "
                  << "only; production hosts must use their real TPM (device:/dev/tpmrm0).";
      return tpm;
    }
    swtpm->Terminate();
    last_error = std::move(serving).error();
    LOG_INFO << "swtpm on port " << p << " did not start (attempt " << attempt << " of " << kStartAttempts
             << "): " << last_error.message();
  }
  return Error(last_error.code(), last_error.message() + "; " + LogTail(log_path, log_start)).Context(context);
}

SimulatedHostTpm::~SimulatedHostTpm() {
  if (!impl_) return;
  impl_->swtpm.Terminate();
  ::unlink((impl_->state_dir + "/swtpm.process").c_str());
}

int SimulatedHostTpm::pid() const { return impl_ ? impl_->swtpm.pid() : -1; }

}  // namespace vtm
