// Isolation between VMs, seen from the outside (issue 10, ISO/IEC 27070 cross-VM threats): a
// real vtmd runs two vTPMs; as VM A's instance uid the test tries, with tools we did not
// write (cat, ls, python3's socket module under setpriv), to read VM B's state and logs, to
// connect to B's sockets, to reach the root-only manager sockets and to read the sealed master
// key, the registry and the host identity. A positive control with A's own files and sockets
// shows that the same attempts work where they should, so a refusal is the kernel's answer to
// the permissions, not a broken probe. Then: processes that hold keys give no core dumps.
//
// Thread safety: single-threaded gtest cases.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "peer_check.h"
#include "test_cgroups.h"
#include "vtm/fs.h"
#include "vtm/net.h"
#include "vtmd_fixture.h"

namespace vtm::testing {
namespace {

constexpr const char* kUuidA = "6f1b2e6c-0a1b-4c2d-8e3f-00000000000a";
constexpr const char* kUuidB = "6f1b2e6c-0a1b-4c2d-8e3f-00000000000b";

// The interpreter of the system, not a user's pyenv shim (which another uid cannot traverse).
constexpr const char* kPython = "/usr/bin/python3";
// Connects to the unix socket argv[1]; prints the outcome and exits 0 only when connected.
constexpr const char* kConnectProbe =
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
    "try:\n"
    "    s.connect(sys.argv[1])\n"
    "except OSError as e:\n"
    "    print('refused:', e.strerror); sys.exit(1)\n"
    "print('connected'); sys.exit(0)\n";

class IsolationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
    for (const char* uuid : {kUuidA, kUuidB}) {
      auto created = f.Vtmctl({"create", "--uuid", uuid});
      ASSERT_EQ(created.exit_code, 0) << created.output;
      auto started = f.Vtmctl({"start", uuid});
      ASSERT_EQ(started.exit_code, 0) << started.output;
      uid_[uuid] = Field(started.output, "instance uid");
      instance_pid_[uuid] = static_cast<pid_t>(std::stol(Field(started.output, "instance pid")));
    }
    ASSERT_NE(uid_[kUuidA], uid_[kUuidB]);
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "---- vtmd log ----\n" << f.VtmdLog();
  }

  std::vector<std::string> AsVm(const std::string& uuid) {
    return {"setpriv", "--reuid=" + uid_[uuid], "--regid=" + uid_[uuid], "--clear-groups"};
  }
  CommandResult RunAs(const std::string& uuid, const std::vector<std::string>& argv) {
    auto full = AsVm(uuid);
    full.insert(full.end(), argv.begin(), argv.end());
    return RunCommand(full);
  }
  CommandResult ConnectAs(const std::string& uuid, const std::string& socket) {
    return RunAs(uuid, {kPython, "-c", kConnectProbe, socket});
  }
  // Every regular file and socket under dir (as root sees it).
  static std::vector<std::string> Entries(const std::string& dir, std::filesystem::file_type type) {
    std::vector<std::string> out;
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      if (it->symlink_status().type() == type) out.push_back(it->path().string());
    }
    return out;
  }
  std::string VmState(const std::string& uuid) const { return f.state_dir() + "/vms/" + uuid; }
  std::string VmRun(const std::string& uuid) const { return f.run_dir() + "/vms/" + uuid; }

  VtmdFixture f;
  std::map<std::string, std::string> uid_;
  std::map<std::string, pid_t> instance_pid_;
};

TEST_F(IsolationTest, OneVmsUidCannotReadOrConnectToAnotherVmsStateSocketsOrKeys) {
  using std::filesystem::file_type;
  // Positive control: A's uid reads its own vTPM state and connects to its own swtpm.
  auto own_files = Entries(VmState(kUuidA) + "/tpm", file_type::regular);
  ASSERT_FALSE(own_files.empty()) << "no swtpm state file under " << VmState(kUuidA);
  auto own_read = RunAs(kUuidA, {"cat", own_files[0]});
  EXPECT_EQ(own_read.exit_code, 0) << "the probe cannot read A's own state: " << own_read.output;
  auto own_ctrl = ConnectAs(kUuidA, VmRun(kUuidA) + "/swtpm-ctrl.sock");
  EXPECT_EQ(own_ctrl.exit_code, 0) << "the probe cannot reach A's own swtpm: " << own_ctrl.output;

  // B's state and logs: neither readable nor listable.
  auto b_files = Entries(VmState(kUuidB), file_type::regular);
  ASSERT_GE(b_files.size(), 2u) << "expected B's swtpm state and logs";
  for (const auto& path : b_files) {
    auto read = RunAs(kUuidA, {"cat", path});
    EXPECT_NE(read.exit_code, 0) << "A read " << path << ": " << read.output;
    EXPECT_NE(read.output.find("Permission denied"), std::string::npos) << path << ": " << read.output;
  }
  for (const char* sub : {"/tpm", "/log"}) {
    auto list = RunAs(kUuidA, {"ls", VmState(kUuidB) + sub});
    EXPECT_NE(list.exit_code, 0) << "A listed B's " << sub << ": " << list.output;
  }

  // B's sockets: QEMU's tpm.sock and swtpm's control socket.
  auto b_sockets = Entries(VmRun(kUuidB), file_type::socket);
  ASSERT_GE(b_sockets.size(), 2u) << "expected tpm.sock and swtpm-ctrl.sock of B";
  for (const auto& socket : b_sockets) {
    auto connect = ConnectAs(kUuidA, socket);
    EXPECT_NE(connect.exit_code, 0) << "A connected to " << socket << ": " << connect.output;
    EXPECT_NE(connect.output.find("Permission denied"), std::string::npos) << socket << ": " << connect.output;
  }

  // The root-only manager channels of both VMs (A's own included) and vtmd's API (no group).
  auto manager_sockets = Entries(f.run_dir() + "/manager", file_type::socket);
  ASSERT_GE(manager_sockets.size(), 2u) << "expected a manager socket per running VM";
  manager_sockets.push_back(f.socket());
  for (const auto& socket : manager_sockets) {
    auto connect = ConnectAs(kUuidA, socket);
    EXPECT_NE(connect.exit_code, 0) << "A connected to " << socket << ": " << connect.output;
  }

  // vtmd's own secrets: the sealed master key, the registry with the wrapped VM keys, the
  // host identity (AK and CA key blobs).
  std::vector<std::string> secrets = {f.state_dir() + "/master-key.sealed", f.state_dir() + "/registry.db"};
  for (const auto& path : Entries(f.state_dir() + "/host-identity", file_type::regular)) secrets.push_back(path);
  ASSERT_GE(secrets.size(), 3u);
  for (const auto& path : secrets) {
    ASSERT_TRUE(PathExists(path)) << path;
    auto read = RunAs(kUuidA, {"cat", path});
    EXPECT_NE(read.exit_code, 0) << "A read " << path << ": " << read.output;
  }

  // Nor can A's uid signal B's processes (kill -0 asks the kernel's permission check only).
  auto signal = RunAs(kUuidA, {"kill", "-0", std::to_string(instance_pid_[kUuidB])});
  EXPECT_NE(signal.exit_code, 0) << "A may signal B's vtm-instance: " << signal.output;
}

// "Max core file size" soft and hard limits from /proc/<pid>/limits; "" if unreadable.
std::string CoreLimit(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/limits");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Max core file size", 0) == 0) {
      std::istringstream fields(line.substr(18));
      std::string soft, hard;
      fields >> soft >> hard;
      return soft + " " + hard;
    }
  }
  return "";
}

// A process that is not dumpable (PR_SET_DUMPABLE 0) has its /proc entries owned by root, even
// when it runs under another uid: the kernel's own, observable, sign of the flag.
bool ProcEntriesOwnedByRoot(pid_t pid) {
  struct stat st {};
  return stat(("/proc/" + std::to_string(pid) + "/status").c_str(), &st) == 0 && st.st_uid == 0;
}

TEST_F(IsolationTest, ProcessesHoldingKeysGiveNoCoreDumps) {
  auto swtpms = FindProcesses({kSwtpmProcess, VmState(kUuidA)});
  ASSERT_EQ(swtpms.size(), 1u);
  const std::map<std::string, pid_t> holders = {
      {"vtmd", f.vtmd_pid()}, {"vtm-instance", instance_pid_[kUuidA]}, {"swtpm", swtpms[0]}};
  for (const auto& [name, pid] : holders) {
    // A hard limit of 0: the process cannot raise it, and every child inherits it.
    EXPECT_EQ(CoreLimit(pid), "0 0") << name << " (pid " << pid << ") may write a core dump with its keys";
  }
  // vtm-instance, which runs as the VM's uid, is also not dumpable: no core, and no ptrace or
  // /proc/<pid>/mem for other processes of its uid (swtpm, which exec resets to dumpable).
  ASSERT_NE(ProcessUid(instance_pid_[kUuidA]), 0);
  EXPECT_TRUE(ProcEntriesOwnedByRoot(instance_pid_[kUuidA])) << "vtm-instance is dumpable";
  auto mem = RunAs(kUuidA, {"cat", "/proc/" + std::to_string(instance_pid_[kUuidA]) + "/environ"});
  EXPECT_NE(mem.exit_code, 0) << "the VM's uid reads vtm-instance's /proc: " << mem.output;
}

// Tokens shaped like a 32-byte key as text: 64 hex digits, or 44 base64 characters ending in
// '=', each a whole word (not part of a longer run).
std::vector<std::string> KeyShapedTokens(const std::string& text) {
  std::vector<std::string> out;
  auto is_hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
  auto is_b64 = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '+' || c == '/' || c == '='; };
  for (auto [is_word, length] : {std::pair<bool (*)(char), size_t>{+is_hex, 64}, {+is_b64, 44}}) {
    for (size_t i = 0; i < text.size();) {
      if (!is_word(text[i])) {
        ++i;
        continue;
      }
      size_t j = i;
      while (j < text.size() && is_word(text[j])) ++j;
      std::string word = text.substr(i, j - i);
      if (word.size() == length && (length == 64 || (word.back() == '=' && word.find('=') == 43))) out.push_back(word);
      i = j;
    }
  }
  return out;
}

// argv of a process as words.
std::vector<std::string> Argv(pid_t pid) {
  std::vector<std::string> out;
  auto text = ReadFile("/proc/" + std::to_string(pid) + "/cmdline");
  if (!text.ok()) return out;
  std::istringstream in(*text);
  std::string word;
  while (std::getline(in, word, '\0')) out.push_back(word);
  return out;
}

// During a run that creates, starts, stops and deletes vTPMs and attests the host: no secret
// in any argv, environment, log or plaintext file of the processes the test started, and the
// vTPM state at rest is encrypted. The one secret the test itself knows, the host's owner
// password, must appear nowhere; the VM keys it cannot know are looked for by their shape
// (32 bytes as hex or base64) and by how they reach swtpm (only through fd=N).
TEST(SecretScanTest, NoKeyMaterialInArgvEnvironmentLogsOrFiles) {
  VtmdFixture f;
  const std::string password = "owner-pw-a61c0e42d9";
  auto changed = RunCommand({"env", "TPM2TOOLS_TCTI=" + f.host_tcti(), "tpm2_changeauth", "-c", "owner", password});
  ASSERT_EQ(changed.exit_code, 0) << changed.output;
  const std::string secrets = f.state_dir() + "-secrets";
  ASSERT_TRUE(MakeDir(secrets, 0700).ok());
  ASSERT_TRUE(WriteFileAtomic(secrets + "/owner-auth", password, 0600).ok());
  ASSERT_TRUE(f.StartVtmd({"--owner-auth-file", secrets + "/owner-auth"})) << f.VtmdLog();

  std::map<std::string, std::string> proc_text;  // "<what> <pid>/<file>" -> content
  auto snapshot = [&](const std::string& what, pid_t pid) {
    for (const char* file : {"cmdline", "environ"}) {
      auto text = ReadFile("/proc/" + std::to_string(pid) + "/" + file);
      ASSERT_TRUE(text.ok()) << what << " " << pid << " " << file;
      proc_text[what + " " + std::to_string(pid) + "/" + file] = *text;
    }
  };
  snapshot("vtmd", f.vtmd_pid());
  for (const char* uuid : {kUuidA, kUuidB}) {
    ASSERT_EQ(f.Vtmctl({"create", "--uuid", uuid}).exit_code, 0);
    auto started = f.Vtmctl({"start", uuid});
    ASSERT_EQ(started.exit_code, 0) << started.output;
    snapshot("vtm-instance", static_cast<pid_t>(std::stol(Field(started.output, "instance pid"))));
    auto swtpms = FindProcesses({kSwtpmProcess, f.state_dir() + "/vms/" + uuid});
    ASSERT_EQ(swtpms.size(), 1u);
    snapshot("swtpm", swtpms[0]);
    // Keys reach swtpm through pipes: both key options name an fd, never a file or a value.
    auto argv = Argv(swtpms[0]);
    int key_options = 0;
    for (size_t i = 0; i + 1 < argv.size(); ++i) {
      if (argv[i] == "--key" || argv[i] == "--migration-key") {
        ++key_options;
        EXPECT_EQ(argv[i + 1].rfind("fd=", 0), 0u) << argv[i] << " " << argv[i + 1];
      }
    }
    EXPECT_EQ(key_options, 2);
  }
  auto attested = f.Vtmctl({"attest", "host", "--nonce", "00112233445566778899aabbccddeeff", "--output",
                            f.state_dir() + "-evidence"});
  EXPECT_EQ(attested.exit_code, 0) << attested.output;
  ASSERT_EQ(f.Vtmctl({"stop", kUuidA}).exit_code, 0);
  ASSERT_EQ(f.Vtmctl({"delete", kUuidA}).exit_code, 0);
  ASSERT_EQ(f.Vtmctl({"stop", kUuidB}).exit_code, 0);

  for (const auto& [where, text] : proc_text) {
    EXPECT_EQ(text.find(password), std::string::npos) << "owner password in " << where;
    for (const char* marker : {"pwdfile=", "passphrase", "PASSWORD", "SECRET"}) {
      EXPECT_EQ(text.find(marker), std::string::npos) << marker << " in " << where;
    }
    auto tokens = KeyShapedTokens(text);
    EXPECT_TRUE(tokens.empty()) << "key-shaped value in " << where << ": " << tokens[0];
  }

  // Logs (vtmd's and every VM's) and every other file vtmd wrote: the password nowhere; the
  // logs and other text free of key-shaped values.
  int logs = 0, state_blobs = 0;
  std::vector<std::string> files = {f.state_dir() + "/../vtmd.log"};
  for (const auto& dir : {f.state_dir(), f.run_dir()}) {
    for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
      if (e.is_regular_file()) files.push_back(e.path().string());
    }
  }
  for (const auto& path : files) {
    auto content = ReadFile(path);
    ASSERT_TRUE(content.ok()) << path;
    EXPECT_EQ(content->find(password), std::string::npos) << "owner password in " << path;
    const auto name = std::filesystem::path(path).filename().string();
    if (name.size() > 4 && name.substr(name.size() - 4) == ".log") {
      ++logs;
      auto tokens = KeyShapedTokens(*content);
      EXPECT_TRUE(tokens.empty()) << "key-shaped value in " << path << ": " << tokens[0];
    }
    if (name == "tpm2-00.permall") {
      ++state_blobs;
      ASSERT_GE(content->size(), 10u);
      // swtpm's blob header: version(1) min_version(1) hdrsize(2) flags(2); ENCRYPTED (0x1)
      // and 256BIT_KEY (0x8).
      const unsigned flags = (static_cast<uint8_t>((*content)[4]) << 8) | static_cast<uint8_t>((*content)[5]);
      EXPECT_EQ(flags & 0x9u, 0x9u) << path << " is not encrypted with a 256-bit key: flags 0x" << std::hex << flags;
    }
  }
  EXPECT_GE(logs, 3) << "expected vtmd.log and VM B's logs";
  EXPECT_EQ(state_blobs, 1) << "expected VM B's swtpm state (A's was deleted)";
}

// All QEMUs under libvirt share one uid, so the permissions above cannot keep VM A's QEMU off
// VM B's tpm.sock. With --qemu-peer-check require, vtmd's instances accept only a client in the
// VM's own cgroup partition (libvirt <partition>/machine/vtm<uuid hex>): stand-in processes
// placed by the test in A's partition and in B's connect to B's socket while no QEMU is attached.
TEST(QemuPeerCheckTest, WithRequireAnotherVmsQemuIsRefusedOnTpmSockAndThisVmsServed) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (cgroups)";
  TestCgroups cgroups;
  if (!cgroups.usable()) GTEST_SKIP() << "no cgroup hierarchy this test may create cgroups in";
  const std::string theirs = cgroups.Make(instance::VmCgroupPartition(kUuidA) + ".partition");
  const std::string ours = cgroups.Make(instance::VmCgroupPartition(kUuidB) + ".partition");
  ASSERT_FALSE(theirs.empty() || ours.empty());

  VtmdFixture f;
  ASSERT_TRUE(f.StartVtmd({"--qemu-peer-check", "require"})) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kUuidB}).exit_code, 0);
  auto started = f.Vtmctl({"start", kUuidB});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  const std::string sock = f.run_dir() + "/vms/" + kUuidB + "/tpm.sock";
  // 0: the vTPM answered GET_CAPABILITY; 3: the relay hung up without an answer (before the
  // request was written, EPIPE, or after it: which one depends on timing).
  auto get_capability = [&] {
    auto c = ConnectUnix(sock);
    if (!c.ok()) return 5;
    const uint8_t request[4] = {0, 0, 0, 1};
    uint8_t answer[8];
    if (!WriteAll(c->get(), request, sizeof request).ok()) return 3;
    return ReadAll(c->get(), answer, sizeof answer).ok() ? 0 : 3;
  };

  ChildOutcome other_vm = RunInCgroup(theirs, get_capability);
  EXPECT_EQ(other_vm.exit_code, 3) << "0: VM A's QEMU reached VM B's vTPM";
  ChildOutcome own = RunInCgroup(ours, get_capability);
  EXPECT_EQ(own.exit_code, 0);

  auto log = ReadFile(f.state_dir() + "/vms/" + kUuidB + "/log/instance.log");
  ASSERT_TRUE(log.ok());
  EXPECT_NE(log->find("QEMU peer check require"), std::string::npos) << *log;
  EXPECT_NE(log->find("refused a client on tpm.sock: pid " + std::to_string(other_vm.pid) +
                      " uid 0 is in cgroup partition " + instance::VmCgroupPartition(kUuidA)),
            std::string::npos)
      << *log;
  EXPECT_NE(log->find("pid " + std::to_string(own.pid) + " uid 0 is in this VM's cgroup partition"), std::string::npos)
      << *log;
}

}  // namespace
}  // namespace vtm::testing
