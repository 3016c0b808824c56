// vtmd killed by SIGKILL (kill -9, the OOM killer, a power cut of the daemon alone): nothing it
// started for itself keeps running, and the next vtmd starts without help.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "vtm/fs.h"
#include "test_processes.h"
#include "vtm/subprocess.h"
#include "vtmd_fixture.h"

namespace vtm::testing {
namespace {

// Polls until no process matches needles; returns the ones still there after timeout.
std::vector<pid_t> WaitUntilGone(const std::vector<std::string>& needles,
                                 std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::vector<pid_t> left = FindProcesses(needles);
  while (!left.empty() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    left = FindProcesses(needles);
  }
  return left;
}

class VtmdKillTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (HasFailure()) std::cerr << "---- vtmd log ----\n" << f.VtmdLog();
  }
  VtmdFixture f;
};

// Defect: after kill -9 of vtmd on its own simulated host TPM, that swtpm kept running and
// held its state lock, so every later vtmd start failed ("Could not lock access to lockfile").
TEST_F(VtmdKillTest, SimulatedHostTpmEndsWithVtmdAndVtmdStartsAgain) {
  const std::vector<std::string> simulated = {"--host-tpm", "simulated"};
  ASSERT_TRUE(f.StartVtmd(simulated)) << f.VtmdLog();
  auto created = f.Vtmctl({"create", "--name", "survivor"});
  ASSERT_EQ(created.exit_code, 0) << created.output;
  const std::vector<std::string> host_swtpm = {kSwtpmProcess, "dir=" + f.state_dir() + "/simulated-host-tpm"};
  ASSERT_EQ(FindProcesses(host_swtpm).size(), 1u);

  ASSERT_EQ(kill(f.vtmd_pid(), SIGKILL), 0);
  int st = f.WaitVtmdExit();
  ASSERT_TRUE(WIFSIGNALED(st)) << DescribeWaitStatus(st);
  EXPECT_TRUE(WaitUntilGone(host_swtpm).empty()) << "the simulated host TPM outlived vtmd";

  ASSERT_TRUE(f.StartVtmd(simulated)) << f.VtmdLog();
  auto shown = f.Vtmctl({"show", "survivor"});
  EXPECT_EQ(shown.exit_code, 0) << shown.output;
  EXPECT_EQ(Field(shown.output, "state"), "provisioned");
  EXPECT_EQ(FindProcesses(host_swtpm).size(), 1u);
}

// A simulated host TPM left running by an owner that could not end it (here: one started
// with the same record but outside vtmd, as an older vtmd would have left it) is found by the
// record vtmd keeps and ended, so the state lock is free again.
TEST_F(VtmdKillTest, StaleSimulatedHostTpmRecordedByAnEarlierVtmdIsEnded) {
  const std::string dir = f.state_dir() + "/simulated-host-tpm";
  ASSERT_TRUE(MakeDir(f.state_dir(), 0711).ok());
  ASSERT_TRUE(MakeDir(dir, 0700).ok());
  SpawnOptions opts;
  opts.output_file = dir + "/stale.log";
  // Its owner is gone: no child of this test.
  pid_t stale = SpawnOrphan({"swtpm", "socket", "--tpm2", "--tpmstate", "dir=" + dir, "--server",
                             "type=unixio,path=" + dir + "/stale-data.sock", "--ctrl",
                             "type=unixio,path=" + dir + "/stale-ctrl.sock", "--flags", "not-need-init,startup-clear"},
                            opts);
  ASSERT_GT(stale, 0);
  // It holds the lock once it runs; give it the moment it needs.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_TRUE(ProcessAlive(stale)) << *ReadFile(dir + "/stale.log");
  ASSERT_TRUE(RecordProcess(dir + "/swtpm.process", stale).ok());

  ASSERT_TRUE(f.StartVtmd({"--host-tpm", "simulated"})) << f.VtmdLog();
  EXPECT_FALSE(ProcessAlive(stale));
  EXPECT_NE(f.VtmdLog().find("that its owner left running"), std::string::npos) << f.VtmdLog();
  EXPECT_EQ(f.Vtmctl({"list"}).exit_code, 0);
}

// Defect: a vtmd killed while it provisioned a vTPM left that vTPM's provisioning swtpm
// running (its state directory then removed by the undo at restart).
TEST_F(VtmdKillTest, ProvisioningSwtpmEndsWithVtmdKilledMidCreate) {
  f.SetVtmdEnvironment({"VTM_CRASH_AT=create.provision-ak-activated"});
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  auto created = f.Vtmctl({"create", "--name", "half"});
  EXPECT_NE(created.exit_code, 0) << created.output;
  int st = f.WaitVtmdExit();
  ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << DescribeWaitStatus(st);
  EXPECT_TRUE(WaitUntilGone({kSwtpmProcess, f.state_dir() + "/vms/"}).empty())
      << "the provisioning swtpm outlived vtmd";

  f.SetVtmdEnvironment({});
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  EXPECT_NE(f.VtmdLog().find("undoing the interrupted creation"), std::string::npos) << f.VtmdLog();
  EXPECT_EQ(f.Vtmctl({"show", "half"}).exit_code, 3);
  auto list = f.Vtmctl({"list"});
  EXPECT_EQ(list.output.find("half"), std::string::npos) << list.output;
  // The undo removed the VM's directory, and the create can be repeated.
  std::vector<std::string> left;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(f.state_dir() + "/vms", ec)) left.push_back(e.path());
  EXPECT_TRUE(left.empty()) << left.front();
  EXPECT_EQ(f.Vtmctl({"create", "--name", "half"}).exit_code, 0);
}

// vtm-instance killed by SIGKILL: its swtpm ends with it, so the VM can start again without
// anyone finding and killing that swtpm by hand.
TEST_F(VtmdKillTest, InstanceSwtpmEndsWithItsInstance) {
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  auto created = f.Vtmctl({"create", "--name", "vm"});
  ASSERT_EQ(created.exit_code, 0) << created.output;
  std::string uuid = Field(created.output, "uuid");
  auto started = f.Vtmctl({"start", "vm"});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  pid_t instance = static_cast<pid_t>(std::stol(Field(started.output, "instance pid")));
  const std::vector<std::string> swtpm = {kSwtpmProcess, f.state_dir() + "/vms/" + uuid};
  ASSERT_EQ(FindProcesses(swtpm).size(), 1u);
  ASSERT_EQ(kill(instance, SIGKILL), 0);
  EXPECT_TRUE(WaitUntilGone(swtpm).empty()) << "the instance's swtpm outlived it";
  std::string state;
  for (int i = 0; i < 100 && state != "failed"; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    state = Field(f.Vtmctl({"show", "vm"}).output, "state");
  }
  EXPECT_EQ(state, "failed");
  auto again = f.Vtmctl({"start", "vm"});
  EXPECT_EQ(again.exit_code, 0) << again.output;
}

// What ctest's timeout does to a test: SIGKILL, so no destructor runs. Here the test (a child
// of this one) is killed alone, not its process tree, and after a vtmd restart, so the
// running instance is no descendant of it any more: nothing it started may keep running, and
// its directory goes too.
TEST(VtmdFixtureTest, TestKilledMidwayLeavesNoProcessAndNoDirectory) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t test = fork();
  ASSERT_GE(test, 0);
  if (test == 0) {
    close(fds[0]);
    std::string report = "failed";
    {
      VtmdFixture f;
      if (f.StartVtmd() && f.Vtmctl({"create", "--name", "vm"}).exit_code == 0 &&
          f.Vtmctl({"start", "vm"}).exit_code == 0) {
        f.StopVtmd();
        if (f.StartVtmd()) report = std::filesystem::path(f.state_dir()).parent_path().string();
      }
      (void)!write(fds[1], report.data(), report.size());
      close(fds[1]);
      pause();  // until killed, as a test hanging until its timeout
    }
    _exit(0);
  }
  close(fds[1]);
  std::string dir;
  char buf[512];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) dir.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  ASSERT_NE(dir, "failed");
  ASSERT_FALSE(dir.empty());
  // vtmd, the host TPM's swtpm, the instance (adopted by the second vtmd) and its swtpm.
  ASSERT_GE(FindProcesses({dir}).size(), 4u);
  ASSERT_FALSE(FindProcesses({"vtm-instance", dir}).empty());

  ASSERT_EQ(kill(test, SIGKILL), 0);
  int st = 0;
  ASSERT_EQ(waitpid(test, &st, 0), test);
  EXPECT_TRUE(WaitUntilGone({dir}).empty()) << "processes of the killed test outlived it";
  for (int i = 0; i < 100 && PathExists(dir); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(PathExists(dir));
}

}  // namespace
}  // namespace vtm::testing
