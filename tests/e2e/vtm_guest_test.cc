// End to end with a real QEMU guest on a vTPM managed by vtmd: the guest sees its TPM and
// the measurements of firmware and IMA; a value written into an NV index survives a stop and
// start of the vTPM through vtmctl; and nothing under the VM's state directory holds that
// value in plain text, while swtpm's state header carries the encrypted flag.
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>

#include "qemu_guest.h"
#include "test_env.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/secret.h"
#include "vtmd_fixture.h"

namespace vtm::testing {
namespace {

constexpr const char* kUuid = "0d6f3b1e-7c2a-4b8e-9f10-2233445566aa";

// swtpm's state blob header: version(1) min_version(1) hdrsize(2) flags(2) totlen(4), big
// endian (seen here: 02 01 000a 0009 ... with --key aes-256-cbc, 02 01 000a 0000 without).
constexpr uint16_t kBlobFlagEncrypted = 0x1;
constexpr uint16_t kBlobFlag256BitKey = 0x8;

class VtmGuestTest : public GuestImageTest {};

TEST_F(VtmGuestTest, GuestUsesVtpmAndNvSurvivesRestartEncryptedAtRest) {
  VtmdFixture f;
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kUuid, "--name", "guest1"}).exit_code, 0);
  auto started = f.Vtmctl({"start", "guest1"});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  std::string socket = Field(started.output, "tpm socket");

  // A marker the guest stores in NV; random so no other file can hold it by chance.
  auto rnd = RandomSecret(16);
  ASSERT_TRUE(rnd.ok());
  const std::string secret = "VTM-NV-" + HexEncode(AsString(*rnd));

  GuestOptions o;
  o.tpm_socket = socket;
  o.script =
      "set -e\n"
      "ls /dev/tpm0 /dev/tpmrm0\n"
      "tpm2_pcrread sha256:0,10\n"
      "tpm2_nvdefine 0x1500016 -C o -s 64 -a 'ownerread|ownerwrite|authread|authwrite'\n"
      "printf '%s' '" + secret + "' > /tmp/v\n"
      "tpm2_nvwrite 0x1500016 -C o -i /tmp/v\n"
      "echo NVREAD=$(tpm2_nvread 0x1500016 -C o -s " + std::to_string(secret.size()) + ")\n";
  GuestRun first = RunGuest(o);
  ASSERT_TRUE(first.booted) << first.Describe();
  ASSERT_EQ(first.exit_code, 0) << first.Describe();
  std::string out = first.ScriptOutput();
  EXPECT_NE(out.find("/dev/tpm0"), std::string::npos) << out;
  EXPECT_NE(out.find("NVREAD=" + secret), std::string::npos) << out;
  // Firmware extended PCR 0 and IMA extended PCR 10: neither is all zeros any more.
  const std::string zeros(64, '0');
  auto pcrs = GuestPcrs(out);
  ASSERT_EQ(pcrs.count(0), 1u) << out;
  ASSERT_EQ(pcrs.count(10), 1u) << out;
  EXPECT_NE(pcrs[0], zeros) << out;
  EXPECT_NE(pcrs[10], zeros) << out;

  // Stop and start the vTPM through vtmctl; the guest reads the value back.
  auto stopped = f.Vtmctl({"stop", "guest1"});
  ASSERT_EQ(stopped.exit_code, 0) << stopped.output;
  auto again = f.Vtmctl({"start", "guest1"});
  ASSERT_EQ(again.exit_code, 0) << again.output << f.VtmdLog();
  o.script = "echo NVREAD=$(tpm2_nvread 0x1500016 -C o -s " + std::to_string(secret.size()) + ")\n";
  GuestRun second = RunGuest(o);
  ASSERT_TRUE(second.booted) << second.Describe();
  ASSERT_EQ(second.exit_code, 0) << second.Describe();
  EXPECT_NE(second.ScriptOutput().find("NVREAD=" + secret), std::string::npos) << second.Describe();
  ASSERT_EQ(f.Vtmctl({"stop", "guest1"}).exit_code, 0);

  // At rest: no file under the VM's directory (nor anywhere in vtmd's state) holds the value,
  // and the TPM state blob is marked encrypted.
  int blobs = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(f.state_dir())) {
    if (!e.is_regular_file()) continue;
    auto content = ReadFile(e.path().string());
    ASSERT_TRUE(content.ok()) << e.path();
    EXPECT_EQ(content->find(secret), std::string::npos) << "plaintext NV value in " << e.path();
    if (e.path().filename() == "tpm2-00.permall") {
      ++blobs;
      ASSERT_GE(content->size(), 10u);
      uint16_t flags = static_cast<uint16_t>((static_cast<uint8_t>((*content)[4]) << 8) |
                                             static_cast<uint8_t>((*content)[5]));
      EXPECT_TRUE(flags & kBlobFlagEncrypted) << "swtpm state header flags 0x" << std::hex << flags;
      EXPECT_TRUE(flags & kBlobFlag256BitKey) << "swtpm state header flags 0x" << std::hex << flags;
    }
  }
  EXPECT_EQ(blobs, 1) << "expected exactly one swtpm permanent-state file";
}

}  // namespace
}  // namespace vtm::testing
