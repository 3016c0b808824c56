// vtmd against a simulated host TPM, driven through the real vtmctl: the lifecycle, the
// errors an operator sees, restart behaviour and the host-PCR policy on the master key.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <grp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

#include "instance_channel.h"
#include "vtm/fs.h"
#include "vtm/net.h"
#include "vtm/subprocess.h"
#include "vtmd_fixture.h"

namespace vtm::testing {
namespace {

constexpr const char* kUuid = "6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb";

class VtmdTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog(); }
  void TearDown() override {
    if (HasFailure()) std::cerr << "---- vtmd log ----\n" << f.VtmdLog();
  }
  VtmdFixture f;
};

TEST_F(VtmdTest, CreateStartStopDeleteList) {
  auto created = f.Vtmctl({"create", "--uuid", kUuid, "--name", "web1"});
  ASSERT_EQ(created.exit_code, 0) << created.output;
  EXPECT_EQ(Field(created.output, "state"), "provisioned");
  EXPECT_EQ(Field(created.output, "name"), "web1");

  auto started = f.Vtmctl({"start", "web1"});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  EXPECT_EQ(Field(started.output, "state"), "running");
  std::string socket = Field(started.output, "tpm socket");
  EXPECT_TRUE(PathExists(socket)) << socket;
  pid_t instance = static_cast<pid_t>(std::stol(Field(started.output, "instance pid")));
  EXPECT_TRUE(ProcessAlive(instance));
  // swtpm runs for this VM as the VM's own unprivileged uid, with its state encrypted.
  long uid = std::stol(Field(started.output, "instance uid"));
  EXPECT_GE(uid, 61000);
  auto swtpms = FindProcesses({kSwtpmProcess, f.state_dir() + "/vms/" + kUuid});
  ASSERT_EQ(swtpms.size(), 1u);
  EXPECT_EQ(ProcessUid(swtpms[0]), uid);
  auto cmdline = ReadFile("/proc/" + std::to_string(swtpms[0]) + "/cmdline");
  ASSERT_TRUE(cmdline.ok());
  EXPECT_NE(cmdline->find("--key"), std::string::npos);
  EXPECT_NE(cmdline->find("fd="), std::string::npos);  // key by fd, never in argv

  auto list = f.Vtmctl({"list"});
  ASSERT_EQ(list.exit_code, 0);
  EXPECT_NE(list.output.find(kUuid), std::string::npos);
  EXPECT_NE(list.output.find("running"), std::string::npos);

  auto json = f.Vtmctl({"--json", "show", kUuid});
  ASSERT_EQ(json.exit_code, 0);
  EXPECT_NE(json.output.find("\"state\": \"VM_STATE_RUNNING\""), std::string::npos) << json.output;

  auto stopped = f.Vtmctl({"stop", kUuid});
  ASSERT_EQ(stopped.exit_code, 0) << stopped.output;
  EXPECT_EQ(Field(stopped.output, "state"), "stopped");
  EXPECT_FALSE(ProcessAlive(instance));
  EXPECT_TRUE(FindProcesses({kSwtpmProcess, f.state_dir() + "/vms/" + kUuid}).empty());

  auto deleted = f.Vtmctl({"delete", "web1"});
  ASSERT_EQ(deleted.exit_code, 0) << deleted.output;
  EXPECT_FALSE(PathExists(f.state_dir() + "/vms/" + kUuid));
  auto gone = f.Vtmctl({"show", kUuid});
  EXPECT_EQ(gone.exit_code, 3) << gone.output;
  auto empty = f.Vtmctl({"list"});
  EXPECT_EQ(empty.output.find(kUuid), std::string::npos);
}

TEST_F(VtmdTest, WrongRequestsGiveClearErrorsAndChangeNothing) {
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kUuid, "--name", "web1"}).exit_code, 0);
  ASSERT_EQ(f.Vtmctl({"start", kUuid}).exit_code, 0);
  auto before = f.Vtmctl({"show", kUuid});

  // Idempotent for scripts and hooks: a second start succeeds, says so and changes nothing.
  auto second = f.Vtmctl({"start", kUuid});
  EXPECT_EQ(second.exit_code, 0) << second.output;
  EXPECT_NE(second.output.find("already running"), std::string::npos) << second.output;

  auto unknown = f.Vtmctl({"start", "00000000-0000-4000-8000-000000000000"});
  EXPECT_EQ(unknown.exit_code, 3) << unknown.output;
  EXPECT_NE(unknown.output.find("no vTPM for VM"), std::string::npos) << unknown.output;

  auto del = f.Vtmctl({"delete", kUuid});
  EXPECT_EQ(del.exit_code, 4) << del.output;
  EXPECT_NE(del.output.find("stop it first"), std::string::npos) << del.output;

  auto dup = f.Vtmctl({"create", "--uuid", kUuid});
  EXPECT_EQ(dup.exit_code, 4) << dup.output;
  auto bad = f.Vtmctl({"create", "--uuid", "nope"});
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  auto usage = f.Vtmctl({"frobnicate"});
  EXPECT_EQ(usage.exit_code, 2);

  // Nothing changed: same state, same generation, same instance.
  auto after = f.Vtmctl({"show", kUuid});
  EXPECT_EQ(Field(after.output, "state"), "running");
  EXPECT_EQ(Field(after.output, "generation"), Field(before.output, "generation"));
  EXPECT_EQ(Field(after.output, "instance pid"), Field(before.output, "instance pid"));
  EXPECT_TRUE(PathExists(f.state_dir() + "/vms/" + kUuid + "/tpm"));
}

TEST_F(VtmdTest, RestartKeepsRegistryAndAdoptsRunningInstances) {
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kUuid, "--name", "web1"}).exit_code, 0);
  ASSERT_EQ(f.Vtmctl({"create", "--name", "idle"}).exit_code, 0);
  auto started = f.Vtmctl({"start", kUuid});
  ASSERT_EQ(started.exit_code, 0);
  std::string pid = Field(started.output, "instance pid");

  int st = f.StopVtmd();
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << DescribeWaitStatus(st) << f.VtmdLog();
  // The VM keeps its vTPM while vtmd is down.
  EXPECT_TRUE(ProcessAlive(static_cast<pid_t>(std::stol(pid))));

  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  auto shown = f.Vtmctl({"show", kUuid});
  ASSERT_EQ(shown.exit_code, 0) << shown.output;
  EXPECT_EQ(Field(shown.output, "state"), "running");
  EXPECT_EQ(Field(shown.output, "instance pid"), pid);
  auto idle = f.Vtmctl({"show", "idle"});
  EXPECT_EQ(Field(idle.output, "state"), "provisioned");
  // The adopted instance can be stopped by the new vtmd.
  auto stopped = f.Vtmctl({"stop", kUuid});
  ASSERT_EQ(stopped.exit_code, 0) << stopped.output;
  EXPECT_FALSE(ProcessAlive(static_cast<pid_t>(std::stol(pid))));
}

TEST_F(VtmdTest, InstanceCrashIsRecordedAndVmCanStartAgain) {
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kUuid}).exit_code, 0);
  auto started = f.Vtmctl({"start", kUuid});
  ASSERT_EQ(started.exit_code, 0);
  pid_t pid = static_cast<pid_t>(std::stol(Field(started.output, "instance pid")));
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  std::string state;
  for (int i = 0; i < 100 && state != "failed"; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    state = Field(f.Vtmctl({"show", kUuid}).output, "state");
  }
  EXPECT_EQ(state, "failed");
  EXPECT_NE(f.Vtmctl({"show", kUuid}).output.find("unexpectedly"), std::string::npos);
  for (pid_t p : FindProcesses({kSwtpmProcess, f.state_dir() + "/vms/" + kUuid})) kill(p, SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto again = f.Vtmctl({"start", kUuid});
  EXPECT_EQ(again.exit_code, 0) << again.output << f.VtmdLog();
}

// Counts the lines of text that contain needle.
int CountLines(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos + 1)) ++n;
  return n;
}

// Runs the same vtmctl command twice at once; returns both results.
std::pair<CommandResult, CommandResult> Twice(VtmdFixture& f, const std::vector<std::string>& args) {
  CommandResult a, b;
  std::thread other([&] { b = f.Vtmctl(args); });
  a = f.Vtmctl(args);
  other.join();
  return {a, b};
}

// Of two concurrent operations on one VM exactly one owns the transition; the other gets a
// clean refusal (exit 4, or 3 once the winner's delete is complete) and nothing happens twice.
TEST_F(VtmdTest, ConcurrentOperationsOnOneVmHaveExactlyOneWinner) {
  constexpr int kRounds = 4;
  for (int i = 0; i < kRounds; ++i) {
    std::string name = "race" + std::to_string(i);
    auto created = f.Vtmctl({"create", "--name", name});
    ASSERT_EQ(created.exit_code, 0) << created.output;
    std::string uuid = Field(created.output, "uuid");

    // start and stop are idempotent: the loser is refused (4) or, if it came second, finds
    // the work done (0 with a note); the work itself happens once.
    auto [s1, s2] = Twice(f, {"start", name});
    EXPECT_EQ((s1.exit_code == 0 && s1.output.find("already running") == std::string::npos) +
                  (s2.exit_code == 0 && s2.output.find("already running") == std::string::npos),
              1)
        << s1.output << "\n" << s2.output;
    for (const auto* r : {&s1, &s2}) {
      if (r->exit_code != 0) {
        EXPECT_EQ(r->exit_code, 4) << r->output;
      }
    }
    EXPECT_EQ(FindProcesses({"vtm-instance", uuid}).size(), 1u);
    EXPECT_EQ(CountLines(f.VtmdLog(), "started vTPM for VM " + uuid), 1) << f.VtmdLog();

    auto [t1, t2] = Twice(f, {"stop", name});
    EXPECT_EQ((t1.exit_code == 0 && t1.output.find("was not running") == std::string::npos) +
                  (t2.exit_code == 0 && t2.output.find("was not running") == std::string::npos),
              1)
        << t1.output << "\n" << t2.output;
    for (const auto* r : {&t1, &t2}) {
      if (r->exit_code != 0) {
        EXPECT_EQ(r->exit_code, 4) << r->output;
      }
    }
    EXPECT_EQ(CountLines(f.VtmdLog(), "stopped vTPM for VM " + uuid), 1) << f.VtmdLog();
    EXPECT_EQ(Field(f.Vtmctl({"show", name}).output, "state"), "stopped");

    auto [d1, d2] = Twice(f, {"delete", name});
    EXPECT_EQ((d1.exit_code == 0) + (d2.exit_code == 0), 1) << d1.output << "\n" << d2.output;
    for (const auto* r : {&d1, &d2}) {
      if (r->exit_code != 0) {
        EXPECT_TRUE(r->exit_code == 4 || r->exit_code == 3) << r->output;
        EXPECT_TRUE(r->output.find(uuid) != std::string::npos || r->output.find(name) != std::string::npos)
            << "the refusal names the VM: " << r->output;
      }
    }
    EXPECT_EQ(CountLines(f.VtmdLog(), "deleted vTPM for VM " + uuid), 1) << f.VtmdLog();
    EXPECT_EQ(f.Vtmctl({"show", name}).exit_code, 3);
  }
}

TEST_F(VtmdTest, NonRootCallersAreRefusedUnlessInTheGroup) {
  // uid 65534 without the group: refused with a message saying who may use vtmd.
  auto denied = f.VtmctlAs({"--reuid=65534", "--regid=65534", "--clear-groups"}, {"list"});
  EXPECT_EQ(denied.exit_code, 5) << denied.output;
  EXPECT_NE(denied.output.find("permission denied"), std::string::npos) << denied.output;
}

TEST(VtmdGroupTest, GroupMembersAreServedOthersRefusedByPeerCredentials) {
  VtmdFixture f;
  // The socket is group-accessible; the daemon itself checks SO_PEERCRED.
  // "daemon" (gid 1) exists on every Debian system (base-passwd).
  ASSERT_TRUE(f.StartVtmd({"--group", "daemon"})) << f.VtmdLog();
  auto member = f.VtmctlAs({"--reuid=65534", "--regid=65534", "--groups=daemon"}, {"list"});
  EXPECT_EQ(member.exit_code, 0) << member.output;
  auto other = f.VtmctlAs({"--reuid=65534", "--regid=65534", "--clear-groups"}, {"list"});
  EXPECT_EQ(other.exit_code, 5) << other.output;
  // Even if the socket's mode let everyone in (a misconfiguration), vtmd itself refuses by the
  // caller's kernel-reported credentials.
  ASSERT_EQ(chmod(f.socket().c_str(), 0666), 0);
  auto past_the_socket = f.VtmctlAs({"--reuid=65534", "--regid=65534", "--clear-groups"}, {"list"});
  EXPECT_EQ(past_the_socket.exit_code, 5) << past_the_socket.output;
  EXPECT_NE(past_the_socket.output.find("uid 65534 may not use vtmd"), std::string::npos) << past_the_socket.output;
}

TEST(VtmdHostPcrTest, ChangedHostPcrMakesVtmdRefuseToStart) {
  VtmdFixture f;
  ASSERT_TRUE(f.StartVtmd({"--host-pcrs", "sha256:0,7"})) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kUuid}).exit_code, 0);
  f.StopVtmd();

  // A PCR outside the policy may change.
  auto ext16 = RunCommand({"env", "TPM2TOOLS_TCTI=" + f.host_tcti(), "tpm2_pcrextend",
                           "16:sha256=" + std::string(64, 'a')});
  ASSERT_EQ(ext16.exit_code, 0) << ext16.output;
  ASSERT_TRUE(f.StartVtmd({"--host-pcrs", "sha256:0,7"})) << f.VtmdLog();
  f.StopVtmd();

  // PCR 7 (secure boot policy) changes: vtmd refuses and names the PCR.
  auto ext7 = RunCommand({"env", "TPM2TOOLS_TCTI=" + f.host_tcti(), "tpm2_pcrextend",
                          "7:sha256=" + std::string(64, 'b')});
  ASSERT_EQ(ext7.exit_code, 0) << ext7.output;
  auto refused = f.RunVtmdExpectingExit({"--host-pcrs", "sha256:0,7"});
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("sha256:7"), std::string::npos) << refused.output;
  EXPECT_EQ(refused.output.find("sha256:0 "), std::string::npos) << refused.output;
  // The registry is untouched.
  EXPECT_TRUE(PathExists(f.state_dir() + "/registry.db"));
}

// Connection threads are joined at shutdown: a client that keeps an idle connection open
// neither keeps vtmd from stopping nor is left to a thread that outlives the registry.
TEST(VtmdShutdownTest, IdleConnectionsAreEndedAndJoinedAtShutdown) {
  VtmdFixture f;
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  auto idle = ConnectUnix(f.socket());
  ASSERT_TRUE(idle.ok());
  ASSERT_EQ(f.Vtmctl({"list"}).exit_code, 0);  // served while the idle connection waits
  auto begin = std::chrono::steady_clock::now();
  int st = f.StopVtmd();
  auto took = std::chrono::steady_clock::now() - begin;
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << DescribeWaitStatus(st) << f.VtmdLog();
  // Well below the 300 s a silent client may otherwise hold its connection.
  EXPECT_LT(took, std::chrono::seconds(15));
  EXPECT_NE(f.VtmdLog().find("vtmd stopped"), std::string::npos) << f.VtmdLog();
  // The idle client sees its connection end (end-of-file), not a hang.
  char byte;
  EXPECT_EQ(read(idle->get(), &byte, 1), 0);
}

// A host TPM whose owner hierarchy has a password: vtmd refuses without it, saying how to give
// it; works with it from a root-only file or a systemd credential; refuses a file others can
// read; and the password appears in no argv or environment of vtmd.
TEST(VtmdOwnerAuthTest, OwnerPasswordFromFileOrCredentialNeverArgvOrEnvironment) {
  VtmdFixture f;
  const std::string password = "owner-pw-7f3a9c";
  auto changed = RunCommand({"env", "TPM2TOOLS_TCTI=" + f.host_tcti(), "tpm2_changeauth", "-c", "owner", password});
  ASSERT_EQ(changed.exit_code, 0) << changed.output;

  auto refused = f.RunVtmdExpectingExit();
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("--owner-auth-file"), std::string::npos) << refused.output;

  const std::string dir = f.state_dir() + "-secrets";
  ASSERT_TRUE(MakeDir(dir, 0700).ok());
  const std::string file = dir + "/owner-auth";
  ASSERT_TRUE(WriteFileAtomic(file, password + "\n", 0644).ok());
  auto loose = f.RunVtmdExpectingExit({"--owner-auth-file", file});
  EXPECT_NE(loose.exit_code, 0);
  EXPECT_NE(loose.output.find("chmod 600"), std::string::npos) << loose.output;

  ASSERT_EQ(chmod(file.c_str(), 0600), 0);
  ASSERT_TRUE(f.StartVtmd({"--owner-auth-file", file})) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"create", "--name", "vm"}).exit_code, 0);
  for (const char* what : {"cmdline", "environ"}) {
    auto text = ReadFile("/proc/" + std::to_string(f.vtmd_pid()) + "/" + what);
    ASSERT_TRUE(text.ok());
    EXPECT_EQ(text->find(password), std::string::npos) << what;
  }
  EXPECT_EQ(f.VtmdLog().find(password), std::string::npos);
  f.StopVtmd();

  // The systemd credential (LoadCredential=vtm-owner-auth:...).
  ASSERT_TRUE(WriteFileAtomic(dir + "/vtm-owner-auth", password, 0400).ok());
  f.SetVtmdEnvironment({"CREDENTIALS_DIRECTORY=" + dir});
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  EXPECT_EQ(f.Vtmctl({"show", "vm"}).exit_code, 0);
}

// Waits (up to 2 s) until the instance of kUuid reports a QEMU attached on its manager channel.
bool WaitUntilAttached(const VtmdFixture& f) {
  const std::string channel = f.run_dir() + "/manager/" + kUuid + ".sock";
  for (int i = 0; i < 100; ++i) {
    auto status = InstanceStatus(channel);
    if (status.ok() && status->qemu_attached()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

TEST_F(VtmdTest, StopIsIdempotentAndRefusedWhileQemuIsAttached) {
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kUuid}).exit_code, 0);
  auto idle = f.Vtmctl({"stop", kUuid});
  EXPECT_EQ(idle.exit_code, 0) << idle.output;
  EXPECT_NE(idle.output.find("was not running"), std::string::npos) << idle.output;
  EXPECT_EQ(Field(idle.output, "state"), "provisioned");

  auto started = f.Vtmctl({"start", kUuid});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  const std::string socket = Field(started.output, "tpm socket");
  pid_t instance = static_cast<pid_t>(std::stol(Field(started.output, "instance pid")));
  // A client on tpm.sock, as QEMU's tpm-emulator backend is; the instance accepts it.
  auto qemu = ConnectUnix(socket);
  ASSERT_TRUE(qemu.ok()) << qemu.error().message();
  ASSERT_TRUE(WaitUntilAttached(f));

  auto refused = f.Vtmctl({"stop", kUuid});
  EXPECT_EQ(refused.exit_code, 4) << refused.output;
  EXPECT_NE(refused.output.find("QEMU is attached"), std::string::npos) << refused.output;
  EXPECT_NE(refused.output.find("--force"), std::string::npos) << refused.output;
  EXPECT_TRUE(ProcessAlive(instance));
  EXPECT_EQ(Field(f.Vtmctl({"show", kUuid}).output, "state"), "running");

  // Once QEMU is gone, stop goes through.
  qemu->reset();
  auto stopped = f.Vtmctl({"stop", kUuid});
  EXPECT_EQ(stopped.exit_code, 0) << stopped.output;
  EXPECT_FALSE(ProcessAlive(instance));

  // --force stops under a connected client.
  auto again = f.Vtmctl({"start", kUuid});
  ASSERT_EQ(again.exit_code, 0) << again.output;
  auto second_qemu = ConnectUnix(socket);
  ASSERT_TRUE(second_qemu.ok());
  ASSERT_TRUE(WaitUntilAttached(f));
  auto forced = f.Vtmctl({"stop", "--force", kUuid});
  EXPECT_EQ(forced.exit_code, 0) << forced.output;
  EXPECT_EQ(Field(forced.output, "state"), "stopped");
}

// True if a process running as uid/gid can connect to the unix socket at path.
bool ConnectsAs(uid_t uid, gid_t gid, const std::string& path) {
  pid_t child = fork();
  if (child == 0) {
    if (setgroups(0, nullptr) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0) _exit(2);
    _exit(ConnectUnix(path).ok() ? 0 : 1);
  }
  int status = 0;
  waitpid(child, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

TEST(VtmdQemuUserTest, DefaultFollowsLibvirtsQemuConf) {
  VtmdFixture f;
  TempDir conf_dir;
  const std::string conf = conf_dir.path() + "/qemu.conf";
  // "nobody" stands in for libvirt-qemu: any account other than root and the instance's.
  ASSERT_TRUE(WriteFileAtomic(conf, "# libvirt\nuser = \"nobody\"\n", 0644).ok());
  ASSERT_TRUE(f.StartVtmd({"--libvirt-qemu-conf", conf})) << f.VtmdLog();
  EXPECT_NE(f.VtmdLog().find("QEMU user: nobody"), std::string::npos) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kUuid}).exit_code, 0);
  auto started = f.Vtmctl({"start", kUuid});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  struct stat st;
  ASSERT_EQ(stat(Field(started.output, "tpm socket").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 65534u);
  EXPECT_TRUE(ConnectsAs(65534, 65534, Field(started.output, "tpm socket")));
  // An explicit --qemu-user that contradicts libvirt is used, with a warning naming both.
  f.Vtmctl({"stop", kUuid});
  f.StopVtmd();
  ASSERT_TRUE(f.StartVtmd({"--libvirt-qemu-conf", conf, "--qemu-user", "root"})) << f.VtmdLog();
  EXPECT_NE(f.VtmdLog().find("differs from the user libvirt runs QEMU as, nobody"), std::string::npos) << f.VtmdLog();
}

TEST(VtmdQemuUserTest, AdoptionGivesSocketsToTheNewQemuUser) {
  VtmdFixture f;
  ASSERT_TRUE(f.StartVtmd({"--qemu-user", "root"})) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kUuid}).exit_code, 0);
  auto started = f.Vtmctl({"start", kUuid});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  const std::string socket = Field(started.output, "tpm socket");
  EXPECT_FALSE(ConnectsAs(65534, 65534, socket));  // root's socket

  f.StopVtmd();
  ASSERT_TRUE(f.StartVtmd({"--qemu-user", "nobody"})) << f.VtmdLog();
  auto shown = f.Vtmctl({"show", kUuid});
  EXPECT_EQ(Field(shown.output, "state"), "running");
  EXPECT_EQ(Field(shown.output, "instance pid"), Field(started.output, "instance pid"));  // adopted, not restarted
  struct stat st;
  ASSERT_EQ(stat(socket.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 65534u);
  EXPECT_TRUE(ConnectsAs(65534, 65534, socket));
  EXPECT_NE(f.VtmdLog().find("corrected to uid 65534"), std::string::npos) << f.VtmdLog();
}

TEST(VtmdStartupTest, SecondVtmdOnSameStateIsRefused) {
  VtmdFixture f;
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  auto second = f.RunVtmdExpectingExit({"--socket", f.run_dir() + "/other.sock"});
  EXPECT_NE(second.exit_code, 0);
  EXPECT_NE(second.output.find("another vtmd"), std::string::npos) << second.output;
}

}  // namespace
}  // namespace vtm::testing
