// Re-sealing the master key before a planned firmware update (`vtmctl host reseal`), against
// a real vtmd and a simulated host TPM: the update is played by rebooting the host TPM (PCRs
// reset) and extending a PCR of the master key's selection to a new value.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/host_tpm.h"
#include "test_env.h"
#include "vtmd_fixture.h"

namespace vtm::testing {
namespace {

constexpr const char* kUuid = "0b6a6a52-5c1e-4f0e-9d36-7f1c2a3b4c5d";
// The simulated host TPM has no resource manager and three object slots; in the default `tpm`
// CA residency vtmd keeps two keys loaded (AK, CA key) and TPM2_Create under the storage key
// needs two more (see CaKeyInTheTpmWithoutResourceManagerLeavesNoRoomAndSaysSo).
const std::vector<std::string> kArgs = {"--ca-residency", "sealed"};

class ResealTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (HasFailure()) std::cerr << "---- vtmd log ----\n" << f.VtmdLog();
  }

  std::string sealed() const { return f.state_dir() + "/master-key.sealed"; }
  std::string prepared() const { return sealed() + ".prepared"; }

  // The value of one sha256 PCR of the host TPM (vtmd stopped or not: one command).
  std::string Pcr(int pcr) {
    auto tpm = HostTpm::Open(f.host_tcti());
    EXPECT_TRUE(tpm.ok()) << tpm.error().ToString();
    if (!tpm.ok()) return "";
    auto values = (*tpm)->ReadPcrs(PcrSelection{"sha256", {pcr}});
    EXPECT_TRUE(values.ok()) << values.error().ToString();
    return values.ok() ? values->digests[pcr] : "";
  }

  // What the firmware update does to the PCR: one measurement of the new firmware.
  void MeasureNewFirmware(int pcr, const std::string& digest) {
    auto ext = RunCommand({"env", "TPM2TOOLS_TCTI=" + f.host_tcti(), "tpm2_pcrextend",
                           std::to_string(pcr) + ":sha256=" + HexEncode(digest)});
    ASSERT_EQ(ext.exit_code, 0) << ext.output;
  }

  VtmdFixture f;
};

// The value PCR `pcr` holds after a reboot (all zeros for PCRs 0-15) and one extend of digest.
std::string AfterRebootAndExtend(const std::string& digest) { return Sha256(std::string(32, '\0') + digest); }

TEST_F(ResealTest, PreparedCopyIsAdoptedAfterTheUpdateAndTheVmStillWorks) {
  ASSERT_TRUE(f.StartVtmd(kArgs)) << f.VtmdLog();  // default --host-pcrs sha256:0-7
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kUuid, "--name", "web1"}).exit_code, 0);
  auto before = ReadFile(sealed());
  ASSERT_TRUE(before.ok());

  const std::string firmware = Sha256("firmware v2");
  const std::string expected = AfterRebootAndExtend(firmware);
  auto reseal = f.Vtmctl({"host", "reseal", "--pcr", "7=" + HexEncode(expected)});
  ASSERT_EQ(reseal.exit_code, 0) << reseal.output;
  EXPECT_NE(reseal.output.find("re-sealed the master key for a planned change of host PCRs sha256:0,1,2,3,4,5,6,7"),
            std::string::npos)
      << reseal.output;
  EXPECT_NE(reseal.output.find(HexEncode(expected) + "  (new)"), std::string::npos) << reseal.output;
  EXPECT_NE(reseal.output.find(prepared()), std::string::npos) << reseal.output;
  // --json: the same, as the API message; a second reseal replaces the first prepared copy.
  auto json = f.Vtmctl({"--json", "host", "reseal", "--pcr=7=" + HexEncode(expected)});
  ASSERT_EQ(json.exit_code, 0) << json.output;
  EXPECT_NE(json.output.find("\"prepared_file\": \"" + prepared() + "\""), std::string::npos) << json.output;
  EXPECT_NE(json.output.find("\"digest_hex\": \"" + HexEncode(expected) + "\""), std::string::npos) << json.output;
  const size_t changed = json.output.find("\"changed\": [");
  ASSERT_NE(changed, std::string::npos) << json.output;
  std::string list = json.output.substr(changed + 12, json.output.find(']', changed) - changed - 12);
  std::erase_if(list, [](char c) { return c == ' ' || c == '\n'; });
  EXPECT_EQ(list, "7") << "only PCR 7 changes: " << json.output;

  // The current copy is untouched, the prepared one is root's alone and holds no key in clear.
  auto after = ReadFile(sealed());
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(*after, *before);
  struct stat st {};
  ASSERT_EQ(stat(prepared().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto prepared_bytes = ReadFile(prepared());
  ASSERT_TRUE(prepared_bytes.ok());
  auto parsed = SealedObject::Parse(*prepared_bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  EXPECT_EQ(parsed->pcrs_at_seal.digests[7], expected);
  EXPECT_EQ(parsed->pcrs_at_seal.digests[0], std::string(32, '\0'));

  // Until the update, the current copy stays in use: a restart changes nothing.
  f.StopVtmd();
  ASSERT_TRUE(f.StartVtmd(kArgs)) << f.VtmdLog();
  EXPECT_TRUE(PathExists(prepared()));
  EXPECT_NE(f.VtmdLog().find("the current copy still unseals and stays in use"), std::string::npos);

  // The firmware update: the host reboots and PCR 7 measures the new firmware.
  f.StopVtmd();
  ASSERT_TRUE(f.RebootHostTpm());
  ASSERT_NO_FATAL_FAILURE(MeasureNewFirmware(7, firmware));
  ASSERT_EQ(Pcr(7), expected);

  ASSERT_TRUE(f.StartVtmd(kArgs)) << f.VtmdLog();
  EXPECT_NE(f.VtmdLog().find("adopted the re-sealed copy"), std::string::npos) << f.VtmdLog();
  EXPECT_FALSE(PathExists(prepared()));
  auto promoted = ReadFile(sealed());
  ASSERT_TRUE(promoted.ok());
  EXPECT_EQ(*promoted, *prepared_bytes);

  // The same master key: the VM's wrapped state key opens, its vTPM starts.
  auto started = f.Vtmctl({"start", "web1"});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  EXPECT_EQ(Field(started.output, "state"), "running");
  auto shown = f.Vtmctl({"show", kUuid});
  ASSERT_EQ(shown.exit_code, 0) << shown.output;
  EXPECT_EQ(Field(shown.output, "name"), "web1");
  ASSERT_EQ(f.Vtmctl({"stop", "web1"}).exit_code, 0);

  // And the promoted copy is the master key's ordinary sealed copy from now on.
  f.StopVtmd();
  ASSERT_TRUE(f.StartVtmd(kArgs)) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"start", "web1"}).exit_code, 0);
}

TEST_F(ResealTest, AnUpdateToOtherValuesThanPreparedIsRefusedNamingBothCopies) {
  ASSERT_TRUE(f.StartVtmd(kArgs)) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kUuid}).exit_code, 0);
  const std::string expected = AfterRebootAndExtend(Sha256("firmware v2"));
  ASSERT_EQ(f.Vtmctl({"host", "reseal", "--pcr", "7=" + HexEncode(expected)}).exit_code, 0);
  f.StopVtmd();

  // The host boots something else than announced.
  ASSERT_TRUE(f.RebootHostTpm());
  ASSERT_NO_FATAL_FAILURE(MeasureNewFirmware(7, Sha256("firmware v3")));
  auto refused = f.RunVtmdExpectingExit(kArgs);
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("neither its copy nor the re-sealed one unseals"), std::string::npos) << refused.output;
  EXPECT_NE(refused.output.find(sealed() + ": host PCR sha256:7 changed"), std::string::npos) << refused.output;
  EXPECT_NE(refused.output.find("Re-sealed copy " + prepared()), std::string::npos) << refused.output;
  EXPECT_NE(refused.output.find("vtmctl host reseal"), std::string::npos) << refused.output;
  // Nothing was thrown away: both copies stay for a boot into either state.
  EXPECT_TRUE(PathExists(sealed()));
  EXPECT_TRUE(PathExists(prepared()));

  // Booting the announced firmware after all: vtmd starts on the prepared copy.
  ASSERT_TRUE(f.RebootHostTpm());
  ASSERT_NO_FATAL_FAILURE(MeasureNewFirmware(7, Sha256("firmware v2")));
  ASSERT_TRUE(f.StartVtmd(kArgs)) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"start", kUuid}).exit_code, 0);
}

TEST_F(ResealTest, WithoutResealAChangedPcrStopsVtmdWithAdvice) {
  ASSERT_TRUE(f.StartVtmd(kArgs)) << f.VtmdLog();
  f.StopVtmd();
  ASSERT_TRUE(f.RebootHostTpm());
  ASSERT_NO_FATAL_FAILURE(MeasureNewFirmware(7, Sha256("firmware v2")));
  auto refused = f.RunVtmdExpectingExit(kArgs);
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("vtmd refuses to start"), std::string::npos) << refused.output;
  EXPECT_NE(refused.output.find("host PCR sha256:7 changed since the master key was sealed"), std::string::npos)
      << refused.output;
  EXPECT_NE(refused.output.find("`vtmctl host reseal`"), std::string::npos) << refused.output;
  EXPECT_FALSE(PathExists(prepared()));
}

TEST_F(ResealTest, BadInputIsRefusedClearly) {
  ASSERT_TRUE(f.StartVtmd({"--host-pcrs", "sha256:0,7", "--group", "daemon", "--ca-residency", "sealed"}))
      << f.VtmdLog();
  const std::string good = std::string(64, 'a');
  struct Case {
    std::vector<std::string> args;
    int exit_code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{}, 2, "name the expected value of each PCR"},
      {{"--pcr", "9=" + good}, 2, "PCR 9 is not one the master key is sealed to (sha256:0,7"},
      {{"--pcr", "7=" + std::string(40, 'a')}, 2, "has 20 bytes (40 hex digits); a sha256 PCR holds 32 (64 hex digits)"},
      {{"--pcr", "7=" + std::string(63, 'a')}, 2, "the value is not hex"},
      {{"--pcr", "7=xyz"}, 2, "the value is not hex"},
      {{"--pcr", "24=" + good}, 2, "N a PCR index from 0 to 23"},
      {{"--pcr", "seven=" + good}, 2, "N a PCR index from 0 to 23"},
      {{"--pcr", "7=" + good, "--pcr", "7=" + good}, 2, "PCR 7 is given more than once"},
      {{"--pcr", "7"}, 2, "expected N=HEX"},
      {{"7=" + good}, 2, "unexpected argument"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> argv = {"host", "reseal"};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    auto r = f.Vtmctl(argv);
    EXPECT_EQ(r.exit_code, c.exit_code) << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << "wanted \"" << c.message << "\" in: " << r.output;
  }
  EXPECT_FALSE(PathExists(prepared()));
  // A member of vtmd's group may use vtmd, but only root decides which host state unseals the
  // master key.
  auto member = f.VtmctlAs({"--reuid=65534", "--regid=65534", "--groups=daemon"},
                           {"host", "reseal", "--pcr", "7=" + good});
  EXPECT_EQ(member.exit_code, 5) << member.output;
  EXPECT_NE(member.output.find("re-sealing the master key is for root only; uid 65534 may not"), std::string::npos)
      << member.output;
  EXPECT_FALSE(PathExists(prepared()));
  // A PCR of the selection given its current value is accepted (nothing changes, nothing new).
  auto same = f.Vtmctl({"host", "reseal", "--pcr", "0=" + std::string(64, '0')});
  EXPECT_EQ(same.exit_code, 0) << same.output;
  EXPECT_EQ(same.output.find("(new)"), std::string::npos) << same.output;
}

// The limit behind kArgs, pinned: refused with the reason and the way out, nothing written.
TEST_F(ResealTest, CaKeyInTheTpmWithoutResourceManagerLeavesNoRoomAndSaysSo) {
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();  // ca-residency tpm
  auto r = f.Vtmctl({"host", "reseal", "--pcr", "7=" + std::string(64, 'a')});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("out of memory for object contexts"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("reach it through one (/dev/tpmrm0)"), std::string::npos) << r.output;
  EXPECT_FALSE(PathExists(prepared()));
  // vtmd carries on.
  EXPECT_EQ(f.Vtmctl({"create", "--uuid", kUuid}).exit_code, 0);
}

}  // namespace
}  // namespace vtm::testing
