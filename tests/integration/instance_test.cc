// Integration tests for vtm-instance with a real swtpm and real processes (no QEMU): the
// test plays QEMU's tpm-emulator on tpm.sock (SET_DATAFD with SCM_RIGHTS, INIT, TPM
// commands on the data socket) and checks keys, uids, encryption at rest and clean stops.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "ctrl_protocol.h"
#include "fake_qemu.h"
#include "instance.pb.h"
#include "peer_check.h"
#include "relay_policy.h"
#include "test_cgroups.h"
#include "test_env.h"
#include "vtm/framing.h"
#include "vtm/fs.h"
#include "vtm/net.h"
#include "vtm/subprocess.h"

namespace vtm::instance {
namespace {

using vtm::testing::BuildPath;
using vtm::testing::ChildOutcome;
using vtm::testing::FakeQemu;
using vtm::testing::RunInCgroup;
using vtm::testing::TempDir;
using vtm::testing::TestCgroups;

constexpr uid_t kUid = 61234;
constexpr gid_t kGid = 61234;
constexpr const char* kVm = "6f1c2b7e-0d7a-4c55-9a40-3f0b8c1d2e11";

std::vector<uint8_t> Be32(uint32_t v) {
  return {static_cast<uint8_t>(v >> 24), static_cast<uint8_t>(v >> 16), static_cast<uint8_t>(v >> 8),
          static_cast<uint8_t>(v)};
}
uint32_t LoadBe32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

void SetTimeouts(int fd) {
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

std::string ProcStatusLine(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) return line;
  }
  return "";
}

// Keys as vtmd would pass them: 32-byte state key then 32-byte migration key.
std::string TestKeys(char seed) {
  std::string k(64, '\0');
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<char>(seed + static_cast<char>(i * 7));
  return k;
}

// One vtm-instance started the way vtmd starts it. Stops it (and, if it was killed, its
// swtpm) when destroyed, so a failing test leaves nothing behind.
class Instance {
 public:
  Instance(const std::string& base, std::string keys, std::vector<std::string> extra_args = {}) : base_(base) {
    int kp[2], rp[2];
    if (pipe2(kp, O_CLOEXEC) != 0 || pipe2(rp, O_CLOEXEC) != 0) return;
    UniqueFd keys_r(kp[0]), keys_w(kp[1]);
    ready_r_.reset(rp[0]);
    UniqueFd ready_w(rp[1]);
    (void)!write(keys_w.get(), keys.data(), keys.size());
    keys_w.reset();  // EOF after the keys, as vtmd does
    std::vector<std::string> argv = {BuildPath("vtm-instance/vtm-instance"),
                                     "--vm",
                                     kVm,
                                     "--tpm-state-dir",
                                     base + "/state",
                                     "--run-dir",
                                     base + "/run",
                                     "--log-dir",
                                     base + "/log",
                                     "--uid",
                                     std::to_string(kUid),
                                     "--gid",
                                     std::to_string(kGid),
                                     "--keys-fd",
                                     "3",
                                     "--ready-fd",
                                     "4",
                                     "--log-level",
                                     "debug"};
    argv.insert(argv.end(), extra_args.begin(), extra_args.end());
    SpawnOptions options;
    // fds 3 and 4 as vtmd passes them: the same numbers swtpm later gets its key pipes on.
    options.fds = {{3, keys_r.get()}, {4, ready_w.get()}};
    options.output_file = base + "/instance.log";
    auto p = Subprocess::Spawn(argv, options);
    if (p.ok()) process_ = std::move(*p);
  }

  ~Instance() {
    if (process_.pid() > 0) process_.Terminate(std::chrono::seconds(15));
    if (swtpm_pid_ > 0 && ProcessAlive(swtpm_pid_)) kill(swtpm_pid_, SIGKILL);
  }

  // The line vtm-instance writes to its ready fd ("READY" or "ERROR ..."), without "\n".
  std::string ReadyLine() {
    std::string line;
    char c;
    for (;;) {
      pollfd p{ready_r_.get(), POLLIN, 0};
      if (poll(&p, 1, 15000) <= 0) return line + "<timeout>";
      ssize_t n = read(ready_r_.get(), &c, 1);
      if (n <= 0 || c == '\n') break;
      line += c;
    }
    if (line == "READY") {
      auto pid = ReadFile(base_ + "/run/swtpm.pid");
      if (pid.ok()) swtpm_pid_ = std::atoi(pid->c_str());
    }
    return line;
  }

  Subprocess& process() { return process_; }
  pid_t swtpm_pid() const { return swtpm_pid_; }
  std::string Log() const {
    auto s = ReadFile(base_ + "/instance.log");
    return s.ok() ? *s : "";
  }

 private:
  std::string base_;
  UniqueFd ready_r_;
  Subprocess process_;
  pid_t swtpm_pid_ = -1;
};

class InstanceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (uid drop to " << kUid << ")";
    if (FindProgram("swtpm") == "swtpm" && access("/usr/bin/swtpm", X_OK) != 0) GTEST_SKIP() << "swtpm not installed";
    // Runs as kUid after setup: the temp dir must be traversable.
    chmod(dir_.path().c_str(), 0755);
  }
  std::string Path(const std::string& rel) const { return dir_.path() + "/" + rel; }

  TempDir dir_;
};

TEST_F(InstanceTest, RelaysTwoQemuSessionsAndStopsCleanly) {
  Instance inst(dir_.path(), TestKeys(1));
  ASSERT_EQ(inst.ReadyLine(), "READY") << inst.Log();
  ASSERT_GT(inst.swtpm_pid(), 0);

  // Both processes run as the VM's uid.
  EXPECT_EQ(ProcStatusLine(inst.swtpm_pid(), "Uid"), "Uid:\t61234\t61234\t61234\t61234");
  EXPECT_EQ(ProcStatusLine(inst.process().pid(), "Uid"), "Uid:\t61234\t61234\t61234\t61234");
  EXPECT_EQ(ProcStatusLine(inst.process().pid(), "Gid"), "Gid:\t61234\t61234\t61234\t61234");
  // Sanitizer builds run without the filter on purpose (their runtimes need more syscalls).
  if (inst.Log().find("sanitizer build") == std::string::npos) {
    EXPECT_EQ(ProcStatusLine(inst.process().pid(), "Seccomp"), "Seccomp:\t2");
  }
  struct stat st {};
  ASSERT_EQ(stat(Path("run").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  EXPECT_EQ(st.st_uid, kUid);

  for (int session = 0; session < 2; ++session) {
    SCOPED_TRACE("session " + std::to_string(session));
    FakeQemu qemu(Path("run/tpm.sock"));
    ASSERT_TRUE(qemu.connected());
    ASSERT_TRUE(qemu.Start()) << inst.Log();
    ASSERT_TRUE(qemu.StartupAndGetRandom()) << inst.Log();
    // QEMU sends SHUTDOWN when it exits; the vTPM must outlive it.
    auto r = qemu.Call(static_cast<uint32_t>(CtrlCommand::kShutdown), {}, 4);
    ASSERT_EQ(r.size(), 4u);
    EXPECT_EQ(LoadBe32(r.data()), 0u);
    qemu.Disconnect();
    usleep(100 * 1000);
    ASSERT_TRUE(ProcessAlive(inst.swtpm_pid())) << inst.Log();
  }

  ASSERT_EQ(kill(inst.process().pid(), SIGTERM), 0);
  auto status = inst.process().Wait(std::chrono::seconds(15));
  ASSERT_TRUE(status.ok());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << DescribeWaitStatus(*status) << inst.Log();
  EXPECT_FALSE(PathExists(Path("run/tpm.sock")));
  EXPECT_FALSE(PathExists(Path("run/swtpm-ctrl.sock")));
  EXPECT_FALSE(ProcessAlive(inst.swtpm_pid()));

  std::string log = inst.Log();
  EXPECT_NE(log.find("ctrl SET_DATAFD"), std::string::npos);
  EXPECT_NE(log.find("ctrl INIT"), std::string::npos);
  EXPECT_NE(log.find("2 QEMU session(s) served"), std::string::npos) << log;
  // Key material never reaches the log: check for the raw key bytes and their hex.
  std::string keys = TestKeys(1);
  EXPECT_EQ(log.find(keys.substr(0, 16)), std::string::npos);
}

TEST_F(InstanceTest, StateIsEncryptedAtRestAndNeedsTheKey) {
  {
    Instance inst(dir_.path(), TestKeys(2));
    ASSERT_EQ(inst.ReadyLine(), "READY") << inst.Log();
    FakeQemu qemu(Path("run/tpm.sock"));
    ASSERT_TRUE(qemu.Start());
    ASSERT_TRUE(qemu.StartupAndGetRandom());
    qemu.Disconnect();
    kill(inst.process().pid(), SIGTERM);
    ASSERT_TRUE(inst.process().Wait(std::chrono::seconds(15)).ok());
  }
  // swtpm's state file: header (version, min version, header size, flags, total length)
  // then TLVs. Flag 0x01 = encrypted with the file key, 0x08 = 256-bit key; the first TLV
  // must be TAG_ENCRYPTED_DATA (2), not plaintext TAG_DATA (1).
  auto blob = ReadFile(Path("state/tpm2-00.permall"));
  ASSERT_TRUE(blob.ok()) << blob.error().message();
  ASSERT_GT(blob->size(), 16u);
  const auto* b = reinterpret_cast<const uint8_t*>(blob->data());
  uint16_t hdrsize = static_cast<uint16_t>((b[2] << 8) | b[3]);
  uint16_t flags = static_cast<uint16_t>((b[4] << 8) | b[5]);
  EXPECT_EQ(flags & 0x01, 0x01) << "state not encrypted, flags 0x" << std::hex << flags;
  EXPECT_EQ(flags & 0x08, 0x08) << "not a 256-bit key, flags 0x" << std::hex << flags;
  ASSERT_LT(hdrsize + 2u, blob->size());
  EXPECT_EQ((b[hdrsize] << 8) | b[hdrsize + 1], 2) << "first TLV is not encrypted data";

  // Same state with the right keys: INIT loads it.
  {
    Instance inst(dir_.path(), TestKeys(2));
    ASSERT_EQ(inst.ReadyLine(), "READY") << inst.Log();
    FakeQemu qemu(Path("run/tpm.sock"));
    EXPECT_TRUE(qemu.Start()) << inst.Log();
  }
  // With other keys: swtpm cannot decrypt the state, so INIT fails.
  {
    Instance inst(dir_.path(), TestKeys(3));
    ASSERT_EQ(inst.ReadyLine(), "READY") << inst.Log();
    FakeQemu qemu(Path("run/tpm.sock"));
    EXPECT_FALSE(qemu.Start());
  }
  // Plain swtpm without --key on the same state: INIT fails as well.
  std::string ctrl = Path("plain-ctrl.sock");
  auto swtpm = Subprocess::Spawn({FindProgram("swtpm"), "socket", "--tpm2", "--tpmstate", "dir=" + Path("state"),
                                  "--ctrl", "type=unixio,path=" + ctrl, "--log", "file=" + Path("plain.log")},
                                 SpawnOptions{});
  ASSERT_TRUE(swtpm.ok());
  auto conn = ConnectUnixWithRetry(ctrl, std::chrono::seconds(10));
  ASSERT_TRUE(conn.ok());
  SetTimeouts(conn->get());
  auto init = Be32(static_cast<uint32_t>(CtrlCommand::kInit));
  auto zero = Be32(0);
  init.insert(init.end(), zero.begin(), zero.end());
  ASSERT_TRUE(WriteAll(conn->get(), init.data(), init.size()).ok());
  uint8_t res[4];
  ASSERT_TRUE(ReadAll(conn->get(), res, 4).ok());
  EXPECT_NE(LoadBe32(res), 0u) << "swtpm without the key loaded the state";
}

TEST_F(InstanceTest, ShortKeysAreReportedOnTheReadyFd) {
  Instance inst(dir_.path(), TestKeys(4).substr(0, 40));
  std::string line = inst.ReadyLine();
  EXPECT_EQ(line.rfind("ERROR ", 0), 0u) << line;
  EXPECT_NE(line.find("40 bytes"), std::string::npos) << line;
  EXPECT_NE(line.find(kVm), std::string::npos) << line;
  auto status = inst.process().Wait(std::chrono::seconds(15));
  ASSERT_TRUE(status.ok());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 1) << DescribeWaitStatus(*status);
}

TEST_F(InstanceTest, TooManyKeyBytesAreRefused) {
  Instance inst(dir_.path(), TestKeys(4) + "x");
  EXPECT_EQ(inst.ReadyLine().rfind("ERROR ", 0), 0u);
  auto status = inst.process().Wait(std::chrono::seconds(15));
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(WEXITSTATUS(*status), 1);
}

TEST_F(InstanceTest, SwtpmThatCannotStartIsReported) {
  Instance inst(dir_.path(), TestKeys(5), {"--swtpm", "/bin/false"});
  std::string line = inst.ReadyLine();
  EXPECT_EQ(line.rfind("ERROR ", 0), 0u) << line;
  EXPECT_NE(line.find("swtpm"), std::string::npos) << line;
  auto status = inst.process().Wait(std::chrono::seconds(15));
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(WEXITSTATUS(*status), 1);
}

TEST_F(InstanceTest, SocketOwnerAndModeAndSecondInstanceRefused) {
  Instance inst(dir_.path(), TestKeys(6), {"--socket-uid", "61235", "--socket-gid", "61236", "--socket-mode", "0660"});
  ASSERT_EQ(inst.ReadyLine(), "READY") << inst.Log();
  struct stat st {};
  ASSERT_EQ(stat(Path("run/tpm.sock").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 61235u);
  EXPECT_EQ(st.st_gid, 61236u);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  // QEMU's uid differs from the instance's: it may traverse the run dir but not list it.
  ASSERT_EQ(stat(Path("run").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0711u);

  Instance second(dir_.path(), TestKeys(6));
  std::string line = second.ReadyLine();
  EXPECT_EQ(line.rfind("ERROR ", 0), 0u) << line;
  EXPECT_NE(line.find("already serves"), std::string::npos) << line;
  // The first one is untouched.
  EXPECT_TRUE(PathExists(Path("run/tpm.sock")));
  FakeQemu qemu(Path("run/tpm.sock"));
  EXPECT_TRUE(qemu.Start()) << inst.Log();
}

TEST_F(InstanceTest, MalformedClientIsDroppedAndTheNextOneServed) {
  Instance inst(dir_.path(), TestKeys(7));
  ASSERT_EQ(inst.ReadyLine(), "READY") << inst.Log();
  {
    FakeQemu bad(Path("run/tpm.sock"));
    ASSERT_TRUE(bad.connected());
    // SET_STATEBLOB announcing 4 GiB.
    std::vector<uint8_t> req = Be32(static_cast<uint32_t>(CtrlCommand::kSetStateBlob));
    for (uint32_t v : {0u, 1u, 0xffffffffu}) {
      auto x = Be32(v);
      req.insert(req.end(), x.begin(), x.end());
    }
    ASSERT_TRUE(WriteAll(bad.ctrl_fd(), req.data(), req.size()).ok());
    uint8_t c;
    EXPECT_EQ(read(bad.ctrl_fd(), &c, 1), 0) << "the relay should hang up";
  }
  {
    // An unknown command is passed on; swtpm answers it with an error code.
    FakeQemu odd(Path("run/tpm.sock"));
    auto r = odd.Call(0x77, {}, 4);
    ASSERT_EQ(r.size(), 4u);
    EXPECT_NE(LoadBe32(r.data()), 0u);
  }
  FakeQemu good(Path("run/tpm.sock"));
  ASSERT_TRUE(good.Start()) << inst.Log();
  EXPECT_TRUE(good.StartupAndGetRandom());
  EXPECT_NE(inst.Log().find("malformed control stream"), std::string::npos);
  EXPECT_NE(inst.Log().find("unknown control command UNKNOWN(0x00000077)"), std::string::npos);
}

// A second QEMU waits in the backlog while the first is attached (as a migration's destination
// would); if it is gone when its turn comes, nothing it queued reaches swtpm.
TEST_F(InstanceTest, QueuedClientThatHungUpIsDroppedUnread) {
  Instance inst(dir_.path(), TestKeys(8));
  ASSERT_EQ(inst.ReadyLine(), "READY") << inst.Log();
  auto first = std::make_unique<FakeQemu>(Path("run/tpm.sock"));
  ASSERT_TRUE(first->Start()) << inst.Log();
  ASSERT_TRUE(first->StartupAndGetRandom()) << inst.Log();
  {
    // Queued behind the first: an (unknown, so logged when passed on) request, then gone.
    FakeQemu gone(Path("run/tpm.sock"));
    ASSERT_TRUE(gone.connected());
    auto req = Be32(0x77);
    ASSERT_TRUE(WriteAll(gone.ctrl_fd(), req.data(), req.size()).ok());
  }
  first.reset();
  // The next QEMU is served as usual.
  FakeQemu next(Path("run/tpm.sock"));
  ASSERT_TRUE(next.Start()) << inst.Log();
  EXPECT_TRUE(next.StartupAndGetRandom()) << inst.Log();
  const std::string log = inst.Log();
  EXPECT_NE(log.find("hung up while it waited for the vTPM; dropped without passing on anything"), std::string::npos)
      << log;
  EXPECT_EQ(log.find("UNKNOWN(0x00000077)"), std::string::npos) << log;
}

TEST_F(InstanceTest, SigtermWhileQemuIsAttachedStopsSwtpm) {
  Instance inst(dir_.path(), TestKeys(9));
  ASSERT_EQ(inst.ReadyLine(), "READY") << inst.Log();
  FakeQemu qemu(Path("run/tpm.sock"));
  ASSERT_TRUE(qemu.Start()) << inst.Log();
  ASSERT_EQ(kill(inst.process().pid(), SIGTERM), 0);
  auto status = inst.process().Wait(std::chrono::seconds(15));
  ASSERT_TRUE(status.ok());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << DescribeWaitStatus(*status) << inst.Log();
  EXPECT_FALSE(ProcessAlive(inst.swtpm_pid()));
  EXPECT_FALSE(PathExists(Path("run/tpm.sock")));
  // The client sees the connection go away.
  uint8_t c;
  EXPECT_LE(read(qemu.ctrl_fd(), &c, 1), 0);
}

TEST_F(InstanceTest, SwtpmDeathEndsTheInstanceWithFailure) {
  Instance inst(dir_.path(), TestKeys(8));
  ASSERT_EQ(inst.ReadyLine(), "READY") << inst.Log();
  ASSERT_EQ(kill(inst.swtpm_pid(), SIGKILL), 0);
  auto status = inst.process().Wait(std::chrono::seconds(15));
  ASSERT_TRUE(status.ok());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) != 0) << DescribeWaitStatus(*status);
  EXPECT_NE(inst.Log().find("killed by signal"), std::string::npos) << inst.Log();
  EXPECT_FALSE(PathExists(Path("run/tpm.sock")));
}


// ---------------------------------------------------------------------------------------
// The manager channel and the relay's policy

// vtmd's side of the manager channel, as a test sees it.
instance_api::InstanceResponse Manage(const std::string& socket, const instance_api::InstanceRequest& request) {
  instance_api::InstanceResponse response;
  auto conn = ConnectUnix(socket);
  if (!conn.ok()) {
    response.set_error("connect: " + conn.error().message());
    return response;
  }
  SetTimeouts(conn->get());
  if (!WriteFrame(conn->get(), request.SerializeAsString()).ok()) return response;
  auto frame = ReadFrame(conn->get());
  if (frame.ok()) (void)response.ParseFromString(*frame);
  return response;
}
instance_api::StatusResponse StatusOf(const std::string& socket) {
  instance_api::InstanceRequest request;
  request.mutable_status();
  return Manage(socket, request).status();
}

// GET_STATEBLOB of one blob type in one response (the state of a fresh vTPM fits); flags 1
// asks for it decrypted. Returns {result, state_flags, data}.
struct StateBlob {
  uint32_t result = 0xffffffff;
  uint32_t flags = 0;
  std::vector<uint8_t> data;
};
StateBlob GetStateBlob(int ctrl_fd, uint32_t type, uint32_t flags) {
  StateBlob out;
  auto req = Be32(static_cast<uint32_t>(CtrlCommand::kGetStateBlob));
  for (uint32_t v : {flags, type, 0u}) {
    auto b = Be32(v);
    req.insert(req.end(), b.begin(), b.end());
  }
  if (!WriteAll(ctrl_fd, req.data(), req.size()).ok()) return out;
  uint8_t hdr[16];
  if (!ReadAll(ctrl_fd, hdr, sizeof hdr).ok()) return out;
  out.result = LoadBe32(hdr);
  out.flags = LoadBe32(hdr + 4);
  uint32_t length = LoadBe32(hdr + 12);
  if (out.result != 0 || length > (8u << 20)) return out;
  out.data.resize(length);
  if (!ReadAll(ctrl_fd, out.data.data(), length).ok()) out.result = 0xfffffffe;
  return out;
}
// SET_STATEBLOB in one write, as QEMU sends it; returns the TPM result (or 0xffffffff).
uint32_t SetStateBlob(int ctrl_fd, uint32_t type, uint32_t flags, const std::vector<uint8_t>& data) {
  auto req = Be32(static_cast<uint32_t>(CtrlCommand::kSetStateBlob));
  for (uint32_t v : {flags, type, static_cast<uint32_t>(data.size())}) {
    auto b = Be32(v);
    req.insert(req.end(), b.begin(), b.end());
  }
  req.insert(req.end(), data.begin(), data.end());
  if (!WriteAll(ctrl_fd, req.data(), req.size()).ok()) return 0xffffffff;
  uint8_t resp[4];
  if (!ReadAll(ctrl_fd, resp, sizeof resp).ok()) return 0xffffffff;
  return LoadBe32(resp);
}
uint32_t Simple(int ctrl_fd, CtrlCommand cmd, const std::vector<uint8_t>& body = {}) {
  auto req = Be32(static_cast<uint32_t>(cmd));
  req.insert(req.end(), body.begin(), body.end());
  if (!WriteAll(ctrl_fd, req.data(), req.size()).ok()) return 0xffffffff;
  uint8_t resp[4];
  if (!ReadAll(ctrl_fd, resp, sizeof resp).ok()) return 0xffffffff;
  return LoadBe32(resp);
}

class InstanceManagerTest : public InstanceTest {
 protected:
  void SetUp() override {
    InstanceTest::SetUp();
    if (IsSkipped()) return;
    ASSERT_EQ(mkdir(Path("mgr").c_str(), 0700), 0);
  }
  std::string ManagerSocket() const { return Path("mgr/instance.sock"); }
};

TEST_F(InstanceManagerTest, UnencryptedStateBlobIsRefusedThatSwtpmItselfWouldTake) {
  Instance inst(dir_.path(), TestKeys(5), {"--manager-socket", ManagerSocket()});
  ASSERT_EQ(inst.ReadyLine(), "READY") << inst.Log();
  // Only root reaches the manager socket.
  struct stat st {};
  ASSERT_EQ(stat(ManagerSocket().c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto status = StatusOf(ManagerSocket());
  EXPECT_EQ(status.pid(), inst.process().pid());
  EXPECT_EQ(status.vm_uuid(), kVm);
  EXPECT_EQ(status.mode(), instance_api::MODE_ACTIVE);
  EXPECT_FALSE(status.qemu_attached());

  FakeQemu qemu(Path("run/tpm.sock"));
  ASSERT_TRUE(qemu.Start()) << inst.Log();
  ASSERT_TRUE(qemu.StartupAndGetRandom()) << inst.Log();
  status = StatusOf(ManagerSocket());
  EXPECT_TRUE(status.qemu_attached());
  EXPECT_EQ(status.inits(), 1u);

  // The state as swtpm exports it: still under the state key (PTM_STATE_FLAG_ENCRYPTED), and
  // as QEMU asks for it (flag DECRYPTED: without the state key's encryption, but encrypted with
  // the migration key, which swtpm's own blob header says).
  StateBlob encrypted = GetStateBlob(qemu.ctrl_fd(), kBlobTypePermanent, 0);
  ASSERT_EQ(encrypted.result, 0u);
  EXPECT_EQ(encrypted.flags & kStateFlagEncrypted, kStateFlagEncrypted);
  StateBlob for_qemu = GetStateBlob(qemu.ctrl_fd(), kBlobTypePermanent, 1);
  ASSERT_EQ(for_qemu.result, 0u);
  EXPECT_EQ(for_qemu.flags & kStateFlagEncrypted, 0u);
  ASSERT_GE(for_qemu.data.size(), 10u);
  EXPECT_NE(for_qemu.data[5] & kBlobFlagMigrationEncrypted, 0) << "swtpm's header does not say migration-encrypted";

  // A plaintext state: what an swtpm without a migration key exports (a source that would send
  // the vTPM across in clear), from a vTPM of its own.
  std::vector<uint8_t> plain;
  {
    std::string ctrl = Path("plain-ctrl.sock");
    std::filesystem::create_directories(Path("plain-state"));
    auto swtpm = Subprocess::Spawn({FindProgram("swtpm"), "socket", "--tpm2", "--tpmstate", "dir=" + Path("plain-state"),
                                    "--ctrl", "type=unixio,path=" + ctrl, "--flags", "not-need-init,startup-clear",
                                    "--log", "file=" + Path("plain.log")},
                                   SpawnOptions{});
    ASSERT_TRUE(swtpm.ok());
    auto conn = ConnectUnixWithRetry(ctrl, std::chrono::seconds(10));
    ASSERT_TRUE(conn.ok());
    SetTimeouts(conn->get());
    StateBlob exported = GetStateBlob(conn->get(), kBlobTypePermanent, 1);
    ASSERT_EQ(exported.result, 0u);
    ASSERT_GE(exported.data.size(), 10u);
    EXPECT_EQ(exported.data[5] & (kBlobFlagMigrationEncrypted | 1), 0);
    plain = exported.data;
    (void)swtpm->Terminate(std::chrono::seconds(2));
  }

  ASSERT_EQ(Simple(qemu.ctrl_fd(), CtrlCommand::kStop), 0u);
  EXPECT_EQ(SetStateBlob(qemu.ctrl_fd(), kBlobTypePermanent, 0, plain), kTpmBadParameter);
  status = StatusOf(ManagerSocket());
  EXPECT_EQ(status.requests_refused(), 1u);
  EXPECT_EQ(status.state_blobs_imported(), 0u);
  EXPECT_NE(status.last_refusal().find("not encrypted"), std::string::npos) << status.last_refusal();
  // Both encrypted forms pass, and the vTPM runs on them.
  EXPECT_EQ(SetStateBlob(qemu.ctrl_fd(), kBlobTypePermanent, 0, for_qemu.data), 0u);
  EXPECT_EQ(SetStateBlob(qemu.ctrl_fd(), kBlobTypePermanent, kStateFlagEncrypted, encrypted.data), 0u);
  EXPECT_EQ(Simple(qemu.ctrl_fd(), CtrlCommand::kInit, Be32(0)), 0u);
  EXPECT_EQ(StatusOf(ManagerSocket()).state_blobs_imported(), 2u);
  qemu.Disconnect();
  usleep(100 * 1000);

  // swtpm itself, reached directly, takes the plaintext blob although it runs with a
  // migration key: the gap the relay closes.
  auto direct = ConnectUnixWithRetry(Path("run/swtpm-ctrl.sock"), std::chrono::seconds(5));
  ASSERT_TRUE(direct.ok()) << direct.error().message();
  SetTimeouts(direct->get());
  ASSERT_EQ(Simple(direct->get(), CtrlCommand::kStop), 0u);
  EXPECT_EQ(SetStateBlob(direct->get(), kBlobTypePermanent, 0, plain), 0u);
}

TEST_F(InstanceManagerTest, FenceEndsTheSessionStopsTheTpmAndRefusesInitAndExport) {
  Instance inst(dir_.path(), TestKeys(6), {"--manager-socket", ManagerSocket()});
  ASSERT_EQ(inst.ReadyLine(), "READY") << inst.Log();
  FakeQemu qemu(Path("run/tpm.sock"));
  ASSERT_TRUE(qemu.Start()) << inst.Log();
  ASSERT_TRUE(qemu.StartupAndGetRandom()) << inst.Log();

  instance_api::InstanceRequest fence;
  fence.mutable_fence()->set_reason("test");
  auto r = Manage(ManagerSocket(), fence);
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_TRUE(r.fence().qemu_was_attached());
  // QEMU's control connection is gone; the data channel it still holds reaches no running TPM.
  uint8_t byte;
  EXPECT_LE(read(qemu.ctrl_fd(), &byte, 1), 0);
  EXPECT_NE(qemu.Tpm({0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x7b, 0x00, 0x10}), 0u) << "the fenced TPM still answers";
  EXPECT_EQ(StatusOf(ManagerSocket()).mode(), instance_api::MODE_FENCED);
  // Idempotent.
  EXPECT_TRUE(Manage(ManagerSocket(), fence).ok());

  FakeQemu again(Path("run/tpm.sock"));
  ASSERT_TRUE(again.connected());
  EXPECT_EQ(Simple(again.ctrl_fd(), CtrlCommand::kInit, Be32(0)), kTpmFail);
  EXPECT_EQ(GetStateBlob(again.ctrl_fd(), kBlobTypePermanent, 0).result, kTpmFail);
  EXPECT_EQ(StatusOf(ManagerSocket()).requests_refused(), 2u);
  // An incoming admission makes no sense here.
  instance_api::InstanceRequest admit;
  admit.mutable_admit_incoming()->set_migration_id("m1");
  EXPECT_FALSE(Manage(ManagerSocket(), admit).ok());
}

TEST_F(InstanceManagerTest, IncomingInstanceTakesStateOnlyAfterAdmissionAndInitOnlyAfterState) {
  // The source: a vTPM with some state, exported encrypted with the shared migration key.
  TempDir source_dir;
  chmod(source_dir.path().c_str(), 0755);
  std::vector<StateBlob> blobs;
  {
    Instance src(source_dir.path(), TestKeys(7));
    ASSERT_EQ(src.ReadyLine(), "READY") << src.Log();
    FakeQemu qemu(source_dir.path() + "/run/tpm.sock");
    ASSERT_TRUE(qemu.Start());
    ASSERT_TRUE(qemu.StartupAndGetRandom());
    for (uint32_t type : {kBlobTypePermanent, kBlobTypeVolatile}) {
      blobs.push_back(GetStateBlob(qemu.ctrl_fd(), type, 0));
      ASSERT_EQ(blobs.back().result, 0u) << "type " << type;
    }
  }
  Instance dst(dir_.path(), TestKeys(7), {"--manager-socket", ManagerSocket(), "--incoming"});
  ASSERT_EQ(dst.ReadyLine(), "READY") << dst.Log();
  EXPECT_EQ(StatusOf(ManagerSocket()).mode(), instance_api::MODE_INCOMING);
  FakeQemu qemu(Path("run/tpm.sock"));
  ASSERT_TRUE(qemu.connected());
  // No state yet: INIT would start an empty vTPM in the VM's place.
  EXPECT_EQ(Simple(qemu.ctrl_fd(), CtrlCommand::kInit, Be32(0)), kTpmFail);
  // Not admitted yet.
  EXPECT_EQ(SetStateBlob(qemu.ctrl_fd(), kBlobTypePermanent, kStateFlagEncrypted, blobs[0].data), kTpmFail);

  instance_api::InstanceRequest admit;
  admit.mutable_admit_incoming()->set_migration_id("mig-1");
  admit.mutable_admit_incoming()->set_generation(7);
  ASSERT_TRUE(Manage(ManagerSocket(), admit).ok());
  // A second, different migration is refused; the same one again is fine.
  instance_api::InstanceRequest other = admit;
  other.mutable_admit_incoming()->set_migration_id("mig-2");
  EXPECT_FALSE(Manage(ManagerSocket(), other).ok());
  EXPECT_TRUE(Manage(ManagerSocket(), admit).ok());

  EXPECT_EQ(Simple(qemu.ctrl_fd(), CtrlCommand::kStop), 0u);
  EXPECT_EQ(SetStateBlob(qemu.ctrl_fd(), kBlobTypePermanent, kStateFlagEncrypted, blobs[0].data), 0u);
  EXPECT_EQ(SetStateBlob(qemu.ctrl_fd(), kBlobTypeVolatile, kStateFlagEncrypted, blobs[1].data), 0u);
  EXPECT_EQ(Simple(qemu.ctrl_fd(), CtrlCommand::kInit, Be32(0)), 0u) << dst.Log();
  auto status = StatusOf(ManagerSocket());
  EXPECT_EQ(status.mode(), instance_api::MODE_ACTIVE);
  EXPECT_EQ(status.migration_id(), "mig-1");
  EXPECT_EQ(status.generation(), 7u);
  EXPECT_EQ(status.imported_blob_types(), (1u << kBlobTypePermanent) | (1u << kBlobTypeVolatile));
}

TEST_F(InstanceManagerTest, OtherUidsCannotReachTheManagerSocket) {
  Instance inst(dir_.path(), TestKeys(8), {"--manager-socket", ManagerSocket()});
  ASSERT_EQ(inst.ReadyLine(), "READY") << inst.Log();
  // The instance's own uid (a compromised swtpm or relay) and any other uid are kept out.
  for (uid_t uid : {kUid, uid_t{65534}}) {
    pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      if (setresgid(uid, uid, uid) != 0 || setresuid(uid, uid, uid) != 0) _exit(2);
      _exit(ConnectUnix(ManagerSocket()).ok() ? 1 : 0);
    }
    int wstatus = 0;
    ASSERT_EQ(waitpid(child, &wstatus, 0), child);
    EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) << "uid " << uid << " reached the manager socket";
  }
  EXPECT_EQ(StatusOf(ManagerSocket()).pid(), inst.process().pid());
}

// ---- Which client may be this VM's QEMU --------------------------------------------------
//
// Under libvirt all QEMUs share one uid, so tpm.sock's permissions let VM A's QEMU in as well.
// What A's QEMU cannot change is its cgroup. The test builds that layout in a cgroup hierarchy
// of its own (root may create and populate cgroups, an unprivileged QEMU may not leave its own):
// this VM's partition, another VM's, and a plain one, and connects from a process in each.
// Connects from a process in `cgroup`: exit code 0 when the vTPM answered GET_CAPABILITY, 3 when
// the relay hung up without an answer.
// The client stays alive until it has its answer (or the relay hung up).
ChildOutcome ConnectFromCgroup(const std::string& tpm_sock, const std::string& cgroup) {
  return RunInCgroup(cgroup, [&] {
    FakeQemu qemu(tpm_sock);
    if (!qemu.connected()) return 5;
    return qemu.Call(static_cast<uint32_t>(CtrlCommand::kGetCapability), {}, 8).size() == 8 ? 0 : 3;
  });
}

class PeerCheckTest : public InstanceTest {
 protected:
  void SetUp() override {
    InstanceTest::SetUp();
    if (IsSkipped()) return;
    if (!cgroups_.usable()) GTEST_SKIP() << "no cgroup hierarchy this test may create cgroups in";
    ours_ = cgroups_.Make(VmCgroupPartition(kVm) + ".partition");
    theirs_ = cgroups_.Make("vtm11111111222233334444555555555555.partition");
    plain_ = cgroups_.Make("plain");
    ASSERT_FALSE(ours_.empty() || theirs_.empty() || plain_.empty());
  }

  TestCgroups cgroups_;
  std::string ours_, theirs_, plain_;
};

TEST_F(PeerCheckTest, RequireRefusesAnotherVmsQemuAndAnUnprovenOneAndServesThisVms) {
  Instance inst(dir_.path(), TestKeys(11), {"--qemu-peer-check", "require"});
  ASSERT_EQ(inst.ReadyLine(), "READY") << inst.Log();
  const std::string sock = Path("run/tpm.sock");

  // No QEMU of this VM is attached: the gap the check closes.
  ChildOutcome other_vm = ConnectFromCgroup(sock, theirs_);
  EXPECT_EQ(other_vm.exit_code, 3) << "0: another VM's QEMU reached this vTPM\n" << inst.Log();
  ChildOutcome unproven = ConnectFromCgroup(sock, plain_);
  EXPECT_EQ(unproven.exit_code, 3) << "0: a peer outside this VM's partition reached this vTPM\n" << inst.Log();
  ChildOutcome own = ConnectFromCgroup(sock, ours_);
  EXPECT_EQ(own.exit_code, 0) << inst.Log();

  std::string log = inst.Log();
  EXPECT_NE(log.find("refused a client on tpm.sock: pid " + std::to_string(other_vm.pid) +
                     " uid 0 is in cgroup partition vtm11111111222233334444555555555555, another VM's"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("refused a client on tpm.sock: pid " + std::to_string(unproven.pid) +
                     " uid 0 is neither in cgroup partition " + VmCgroupPartition(kVm)),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("pid " + std::to_string(own.pid) + " uid 0 is in this VM's cgroup partition"), std::string::npos)
      << log;

  // The process that reads /proc for the relay runs as nobody under its own seccomp filter.
  size_t at = log.find("(inspector pid ");
  ASSERT_NE(at, std::string::npos) << log;
  pid_t inspector = std::atoi(log.c_str() + at + std::strlen("(inspector pid "));
  EXPECT_EQ(ProcStatusLine(inspector, "Uid"), "Uid:\t65534\t65534\t65534\t65534");
  // Sanitizer builds run without the filter on purpose (their runtimes need more syscalls).
  if (log.find("sanitizer build") == std::string::npos) {
    EXPECT_EQ(ProcStatusLine(inspector, "Seccomp"), "Seccomp:\t2");
  }
  // A fresh exec with a command line of its own: not counted as a second vtm-instance.
  auto cmdline = ReadFile("/proc/" + std::to_string(inspector) + "/cmdline");
  ASSERT_TRUE(cmdline.ok());
  EXPECT_EQ(cmdline->find("vtm-instance"), std::string::npos) << *cmdline;
  EXPECT_NE(cmdline->find("--peer-inspector"), std::string::npos) << *cmdline;
}

TEST_F(PeerCheckTest, WarnRefusesAnotherVmsQemuAndAcceptsAnUnprovenOneWithAWarning) {
  Instance inst(dir_.path(), TestKeys(12));  // warn is the default
  ASSERT_EQ(inst.ReadyLine(), "READY") << inst.Log();
  const std::string sock = Path("run/tpm.sock");

  ChildOutcome other_vm = ConnectFromCgroup(sock, theirs_);
  EXPECT_EQ(other_vm.exit_code, 3) << inst.Log();
  ChildOutcome unproven = ConnectFromCgroup(sock, plain_);
  EXPECT_EQ(unproven.exit_code, 0) << inst.Log();

  std::string log = inst.Log();
  EXPECT_NE(log.find("refused a client on tpm.sock: pid " + std::to_string(other_vm.pid)), std::string::npos) << log;
  EXPECT_NE(log.find("WARNING: QEMU peer check: pid " + std::to_string(unproven.pid)), std::string::npos) << log;
}

TEST_F(PeerCheckTest, OffLetsEveryClientIn) {
  Instance inst(dir_.path(), TestKeys(13), {"--qemu-peer-check", "off"});
  ASSERT_EQ(inst.ReadyLine(), "READY") << inst.Log();
  EXPECT_EQ(ConnectFromCgroup(Path("run/tpm.sock"), theirs_).exit_code, 0) << inst.Log();
}

}  // namespace
}  // namespace vtm::instance
