// The README's first command, `bash scripts/demo.sh`, run to its end on the build tree under
// test (its install-and-build step skipped: the suite built the tree). Each part the README
// promises shows in its output: the simulated host TPM's warning, the certificates verified by
// openssl, the guest's TPM, the verifier's TRUSTED, the cold migration committed and the IK kept
// on host B. Afterwards nothing the demo started runs any more.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <string>
#include <thread>

#include "test_env.h"
#include "test_processes.h"

namespace vtm::testing {
namespace {

TEST(DemoTest, TheReadmesDemoRunsToTheEndShowsEveryStepAndLeavesNothingRunning) {
  TempDir dir;
  ASSERT_EQ(chmod(dir.path().c_str(), 0711), 0);  // the vTPM instances' uids reach their sockets
  OrphanGuard guard(dir.path());
  const std::string demo = dir.path() + "/demo";
  // What a failed demo left running (the guard acts only when this test is killed).
  struct EndLeftovers {
    std::string demo;
    ~EndLeftovers() {
      for (int round = 0; round < 50 && !FindProcesses({demo}).empty(); ++round) {
        for (pid_t pid : FindProcesses({demo})) kill(pid, SIGKILL);
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
  } end_leftovers{demo};
  CommandResult run = RunCommand({"env", "VTM_DEMO_DIR=" + demo, std::string("VTM_DEMO_BUILD_DIR=") + VTM_BUILD_DIR,
                                  "VTM_DEMO_SKIP_SETUP=1", "bash", std::string(VTM_SOURCE_DIR) + "/scripts/demo.sh"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  for (const char* shown : {
           "USING A SIMULATED HOST TPM",     // the embedded default, labelled as such
           "guest: TPM devices: /dev/tpm0",  // the QEMU guest sees its vTPM
           "\nTRUSTED",                      // vtm-verify's deep appraisal
           "host-b: installed the fleet-CA-issued certificate for the host CA",
           "state:         committed",                       // the source's record of the migration
           "migrated from this host to host-b (127.0.0.1:",  // host A's tombstone
           "the IK is the same key as on host A",
           "demo: done.",
       }) {
    EXPECT_NE(run.output.find(shown), std::string::npos) << "missing: " << shown << "\n" << run.output;
  }
  EXPECT_NE(run.output.find("/demo/ik.pem: OK"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("/demo/ik-host-b.pem: OK"), std::string::npos) << run.output;
  EXPECT_TRUE(FindProcesses({demo}).empty()) << "the demo left processes running";
  EXPECT_FALSE(std::filesystem::exists(demo + "/fleet.key")) << "the demo's fleet CA key outlived its use";
}

}  // namespace
}  // namespace vtm::testing
