// Measured launch against a real vtmd and an swtpm host TPM, checked with tpm2_pcrread (a tool
// we did not write): the measurement log replays to the PCR; vtmd's start and each instance
// launch are in it with the right digests and vTPM names; the log stays consistent over
// restarts and a SIGKILL; an entry written ahead but never extended (vtmd killed between the
// two) is dropped on restart; a foreign tpm2_pcrextend shows as a log that does not replay; a
// log from another boot is set aside.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <fstream>

#include "attestation.pb.h"
#include "measurement_log.h"
#include "vtm/digest.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/subprocess.h"
#include "vtmd_fixture.h"

namespace vtm::testing {
namespace {

constexpr const char* kUuid = "6f1d2c3b-4a59-4e68-9a7b-8c9d0e1f2a3b";
constexpr int kPcr = 13;

class MeasuredLaunchTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (HasFailure()) std::cerr << "---- vtmd log ----\n" << f.VtmdLog();
  }
  std::string LogPath() const { return f.state_dir() + "/measurement-log.pb"; }
  attest::MeasurementLog ReadLog() {
    auto bytes = ReadFile(LogPath());
    EXPECT_TRUE(bytes.ok()) << bytes.error().ToString();
    auto log = ParseMeasurementLog(bytes.ok() ? *bytes : "");
    EXPECT_TRUE(log.ok()) << log.error().ToString();
    return log.ok() ? *log : attest::MeasurementLog();
  }
  // The PCR as tpm2_pcrread reads it (vtmd must be stopped: the simulated TPM serves one client).
  std::string PcrFromTool() {
    std::string out = dir.path() + "/pcr.bin";
    auto r = RunCommand({"env", "TPM2TOOLS_TCTI=" + f.host_tcti(), "tpm2_pcrread", "sha256:" + std::to_string(kPcr),
                         "-o", out});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    auto bytes = ReadFile(out);
    return bytes.ok() ? *bytes : std::string();
  }
  std::string HostOutput() {
    auto r = f.Vtmctl({"host"});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.output;
  }
  VtmdFixture f;
  TempDir dir;
};

TEST_F(MeasuredLaunchTest, LogReplaysToThePcrAndNamesWhatRan) {
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kUuid}).exit_code, 0);
  auto started = f.Vtmctl({"start", kUuid});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  EXPECT_NE(HostOutput().find("log consistent"), std::string::npos) << HostOutput();
  f.StopVtmd();

  attest::MeasurementLog log = ReadLog();
  ASSERT_EQ(log.events_size(), 2);
  EXPECT_EQ(log.pcr(), static_cast<uint32_t>(kPcr));
  EXPECT_EQ(log.boot_id(), CurrentBootId().value());
  EXPECT_EQ(ReplayMeasurements(log), PcrFromTool());

  attest::VtmdStart start;
  ASSERT_EQ(log.events(0).type(), attest::MEASUREMENT_TYPE_VTMD_START);
  ASSERT_TRUE(start.ParseFromString(log.events(0).event_data()));
  EXPECT_EQ(start.vtmd_sha256(), Sha256OfFile(BuildPath("vtm-manager/vtmd")).value());

  attest::InstanceLaunch launch;
  ASSERT_EQ(log.events(1).type(), attest::MEASUREMENT_TYPE_INSTANCE_LAUNCH);
  ASSERT_TRUE(launch.ParseFromString(log.events(1).event_data()));
  EXPECT_EQ(launch.vm_uuid(), kUuid);
  EXPECT_EQ(launch.swtpm_sha256(), Sha256OfFile(FindProgram("swtpm")).value());
  EXPECT_EQ(launch.vtm_instance_sha256(), Sha256OfFile(BuildPath("vtm-instance/vtm-instance")).value());
  EXPECT_EQ(launch.launch_config_sha256().size(), 32u);
  // TPM names: nameAlg sha256 (0x000b) || 32 bytes.
  for (const std::string* name : {&launch.ek_name(), &launch.ak_name(), &launch.ek_rsa_name()}) {
    ASSERT_EQ(name->size(), 34u);
    EXPECT_EQ(name->substr(0, 2), std::string("\x00\x0b", 2));
  }
  EXPECT_NE(launch.ek_name(), launch.ak_name());
}

TEST_F(MeasuredLaunchTest, RestartsAndSigkillKeepTheLogConsistent) {
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kUuid}).exit_code, 0);
  ASSERT_EQ(f.Vtmctl({"start", kUuid}).exit_code, 0);
  f.StopVtmd();
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"stop", kUuid}).exit_code, 0);
  ASSERT_EQ(f.Vtmctl({"start", kUuid}).exit_code, 0);
  kill(f.vtmd_pid(), SIGKILL);
  f.StopVtmd();  // reaps it
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  EXPECT_NE(HostOutput().find("log consistent"), std::string::npos) << HostOutput();
  f.StopVtmd();
  attest::MeasurementLog log = ReadLog();
  // start, launch, start, launch, start
  ASSERT_EQ(log.events_size(), 5);
  EXPECT_EQ(log.events(3).type(), attest::MEASUREMENT_TYPE_INSTANCE_LAUNCH);
  EXPECT_EQ(log.events(4).type(), attest::MEASUREMENT_TYPE_VTMD_START);
  EXPECT_EQ(ReplayMeasurements(log), PcrFromTool());
}

TEST_F(MeasuredLaunchTest, EntryWrittenAheadButNeverExtendedIsDroppedOnRestart) {
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  f.StopVtmd();
  // What vtmd leaves when it is killed after writing an entry and before extending it: the
  // log file has one more entry than the PCR.
  attest::MeasurementLog log = ReadLog();
  ASSERT_EQ(log.events_size(), 1);
  attest::InstanceLaunch never;
  never.set_vm_uuid(kUuid);
  auto* e = log.add_events();
  e->set_sequence(1);
  e->set_pcr(kPcr);
  e->set_type(attest::MEASUREMENT_TYPE_INSTANCE_LAUNCH);
  e->set_event_data(never.SerializeAsString());
  e->set_digest(Sha256Digest(e->event_data()));
  ASSERT_TRUE(WriteFileAtomic(LogPath(), log.SerializeAsString(), 0600).ok());

  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  EXPECT_NE(HostOutput().find("log consistent"), std::string::npos) << HostOutput();
  f.StopVtmd();
  EXPECT_NE(f.VtmdLog().find("never extended"), std::string::npos);
  log = ReadLog();
  ASSERT_EQ(log.events_size(), 2);  // the first start, the dropped entry gone, the new start
  EXPECT_EQ(log.events(1).type(), attest::MEASUREMENT_TYPE_VTMD_START);
  EXPECT_EQ(ReplayMeasurements(log), PcrFromTool());
}

TEST_F(MeasuredLaunchTest, ForeignExtendShowsAsALogThatDoesNotReplay) {
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  f.StopVtmd();
  auto r = RunCommand({"env", "TPM2TOOLS_TCTI=" + f.host_tcti(), "tpm2_pcrextend",
                       std::to_string(kPcr) + ":sha256=" + HexEncode(Sha256Digest("foreign"))});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  std::string host = HostOutput();
  EXPECT_NE(host.find("INCONSISTENT"), std::string::npos) << host;
  EXPECT_NE(host.find("extended or reset outside vtmd"), std::string::npos) << host;
  // A launch after it does not make the log consistent again.
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kUuid}).exit_code, 0);
  ASSERT_EQ(f.Vtmctl({"start", kUuid}).exit_code, 0);
  EXPECT_NE(HostOutput().find("INCONSISTENT"), std::string::npos);
  f.StopVtmd();
  EXPECT_NE(ReplayMeasurements(ReadLog()), PcrFromTool());
}

TEST_F(MeasuredLaunchTest, LogOfAnotherBootIsSetAsideAndAFilledPcrIsReported) {
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  f.StopVtmd();
  attest::MeasurementLog log = ReadLog();
  log.set_boot_id("00000000-0000-0000-0000-000000000000");
  ASSERT_TRUE(WriteFileAtomic(LogPath(), log.SerializeAsString(), 0600).ok());
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  // The PCR was not reset (no real reboot here), so the new log cannot replay and says why.
  std::string host = HostOutput();
  EXPECT_NE(host.find("INCONSISTENT"), std::string::npos) << host;
  EXPECT_NE(host.find("was not empty"), std::string::npos) << host;
  f.StopVtmd();
  EXPECT_NE(f.VtmdLog().find("starts over"), std::string::npos);
  EXPECT_TRUE(PathExists(LogPath() + ".previous"));
  EXPECT_EQ(ReadLog().boot_id(), CurrentBootId().value());
}

}  // namespace
}  // namespace vtm::testing
