// The e2e test guest itself: boots under QEMU TCG against a plain swtpm, sees its TPM,
// reads the PCRs the firmware (SeaBIOS) and the kernel (IMA) extend, and keeps an NV index
// across a VM restart (a new swtpm process on the same state directory).
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include "qemu_guest.h"
#include "test_env.h"
#include "vtm/subprocess.h"

namespace vtm::testing {
namespace {

constexpr char kNvIndex[] = "0x1500016";
// 32 bytes each, printable so they survive the serial console.
constexpr char kNvValue1[] = "vtm-guest-smoke-first-value-0001";
constexpr char kNvValue2[] = "vtm-guest-smoke-second-value-002";
static_assert(sizeof kNvValue1 - 1 == 32 && sizeof kNvValue2 - 1 == 32);

const std::string kZeroPcr(64, '0');

// The value printed between "NV<tag>=[" and "]".
std::string Tagged(const std::string& text, const std::string& tag) {
  std::string open = tag + "=[";
  size_t p = text.find(open);
  if (p == std::string::npos) return "<missing " + tag + ">";
  p += open.size();
  size_t e = text.find(']', p);
  return e == std::string::npos ? "<unterminated " + tag + ">" : text.substr(p, e - p);
}

class GuestSmokeTest : public GuestImageTest {
 protected:
  void SetUp() override {
    GuestImageTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    ASSERT_LT(CtrlSocket().size(), 100u) << "socket path too long; set a shorter TMPDIR";
    ASSERT_EQ(mkdir(StateDir().c_str(), 0700), 0);
  }

  std::string StateDir() const { return dir_.path() + "/state"; }
  std::string CtrlSocket() const { return dir_.path() + "/swtpm.sock"; }

  // A plain swtpm as QEMU expects it: control channel only, no startup flags (QEMU sends INIT).
  Subprocess StartSwtpm() {
    ::unlink(CtrlSocket().c_str());
    SpawnOptions so;
    so.output_file = dir_.path() + "/swtpm.log";
    so.parent_death_signal = SIGKILL;
    auto p = Subprocess::Spawn({"swtpm", "socket", "--tpm2", "--tpmstate", "dir=" + StateDir(), "--ctrl",
                                "type=unixio,path=" + CtrlSocket()},
                               so);
    if (!p.ok()) {
      ADD_FAILURE() << "starting swtpm: " << p.error().ToString();
      return Subprocess();
    }
    for (int i = 0; i < 500 && !PathExists(CtrlSocket()); ++i) {
      if (!p->running()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_TRUE(PathExists(CtrlSocket())) << "swtpm did not create " << CtrlSocket() << "; log:\n"
                                          << RunCommand({"cat", dir_.path() + "/swtpm.log"}).output;
    return std::move(p).value();
  }

  GuestRun Boot(const std::string& script, const std::string& name) {
    GuestOptions o;
    o.tpm_socket = CtrlSocket();
    o.script = script;
    o.work_dir = dir_.path() + "/" + name;
    o.timeout = std::chrono::seconds(180);
    GuestRun run = RunGuest(o);
    std::cout << "[guest " << name << "] boot ok after " << run.seconds_to_boot << " s, QEMU exited after "
              << run.seconds_total << " s\n";
    return run;
  }

  static bool PathExists(const std::string& p) {
    struct stat st;
    return ::stat(p.c_str(), &st) == 0;
  }

  TempDir dir_;
};

TEST_F(GuestSmokeTest, TpmWorksAndNvSurvivesRestart) {
  const std::string first = std::string(R"(set -e
ls -l /dev/tpm*
echo "PCRS-BEGIN"
tpm2_pcrread sha256:0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,23
echo "PCRS-END"
echo "IMA-LOG-BEGIN"
cat /sys/kernel/security/ima/ascii_runtime_measurements
echo "IMA-LOG-END"
tpm2_nvdefine )") + kNvIndex + R"( -C o -s 32 -a "ownerread|ownerwrite|authread|authwrite"
printf '%s' ')" + kNvValue1 + R"(' > /tmp/nv.in
tpm2_nvwrite )" + kNvIndex + R"( -C o -i /tmp/nv.in
echo "NV1=[$(tpm2_nvread )" + kNvIndex + R"( -C o -s 32)]"
printf '%s' ')" + kNvValue2 + R"(' | tpm2_nvwrite )" + kNvIndex + R"( -C o -i -
echo "NV2=[$(tpm2_nvread )" + kNvIndex + R"( -C o -s 32)]"
)";
  GuestRun run1;
  {
    Subprocess swtpm = StartSwtpm();
    ASSERT_GT(swtpm.pid(), 0);
    run1 = Boot(first, "boot1");
    // swtpm 0.7.1 exits once QEMU closes the control channel; the destructor stops it otherwise.
  }
  ASSERT_TRUE(run1.booted) << run1.Describe();
  ASSERT_FALSE(run1.timed_out) << run1.Describe();
  ASSERT_EQ(run1.exit_code, 0) << run1.Describe();
  const std::string out1 = run1.ScriptOutput();
  std::cout << "[guest boot1] script output:\n" << out1;
  EXPECT_NE(out1.find("/dev/tpm0"), std::string::npos) << run1.Describe();
  EXPECT_NE(out1.find("/dev/tpmrm0"), std::string::npos) << run1.Describe();

  auto pcrs = GuestPcrs(out1);
  ASSERT_EQ(pcrs.size(), 18u) << run1.Describe();
  // Booted with -kernel (no OVMF): SeaBIOS measures into PCRs 0-7 (at least a separator
  // each), the kernel's IMA puts boot_aggregate into PCR 10. Nothing else is extended.
  for (int i = 0; i <= 7; ++i) EXPECT_NE(pcrs[i], kZeroPcr) << "PCR " << i << "\n" << run1.Describe();
  EXPECT_NE(pcrs[10], kZeroPcr) << "IMA did not extend PCR 10\n" << run1.Describe();
  for (int i : {8, 9, 11, 12, 13, 14, 15, 16, 23}) {
    EXPECT_EQ(pcrs[i], kZeroPcr) << "PCR " << i << "\n" << run1.Describe();
  }
  EXPECT_NE(out1.find("boot_aggregate"), std::string::npos) << "IMA log lacks boot_aggregate\n"
                                                            << run1.Describe();
  EXPECT_EQ(Tagged(out1, "NV1"), kNvValue1) << run1.Describe();
  EXPECT_EQ(Tagged(out1, "NV2"), kNvValue2) << run1.Describe();

  // VM restart: a new swtpm on the same state, a new QEMU.
  const std::string second = std::string(R"(set -e
tpm2_pcrread sha256:10
echo "NV=[$(tpm2_nvread )") + kNvIndex + R"( -C o -s 32)]"
)";
  GuestRun run2;
  {
    Subprocess swtpm = StartSwtpm();
    ASSERT_GT(swtpm.pid(), 0);
    run2 = Boot(second, "boot2");
  }
  ASSERT_TRUE(run2.booted) << run2.Describe();
  ASSERT_EQ(run2.exit_code, 0) << run2.Describe();
  const std::string out2 = run2.ScriptOutput();
  EXPECT_EQ(Tagged(out2, "NV"), kNvValue2) << run2.Describe();
  // The boot is deterministic: same firmware events, and IMA (policy tcb) measures nothing
  // from the initramfs (tmpfs is excluded), so PCR 10 holds only boot_aggregate again.
  auto pcrs2 = GuestPcrs(out2);
  EXPECT_EQ(pcrs2[10], pcrs[10]) << run2.Describe();
}

TEST_F(GuestSmokeTest, TimeoutKillsQemuAndKeepsConsole) {
  Subprocess swtpm = StartSwtpm();
  ASSERT_GT(swtpm.pid(), 0);
  GuestOptions o;
  o.tpm_socket = CtrlSocket();
  o.script = "echo sleeping-forever\nsleep 100000\n";
  o.timeout = std::chrono::seconds(20);
  GuestRun run = RunGuest(o);
  EXPECT_TRUE(run.timed_out) << run.Describe();
  EXPECT_TRUE(run.booted) << run.Describe();
  EXPECT_EQ(run.exit_code, -1) << run.Describe();
  EXPECT_NE(run.console.find("sleeping-forever"), std::string::npos) << run.Describe();
  EXPECT_LT(run.seconds_total, 60) << run.Describe();
}

}  // namespace
}  // namespace vtm::testing
