// The tpm.sock peer policy (peer_check.h) on the facts the kernel reports for libvirt's layouts.
#include "peer_check.h"

#include <gtest/gtest.h>

namespace vtm::instance {
namespace {

constexpr const char* kVm = "6F1C2B7E-0d7a-4c55-9a40-3f0b8c1d2e11";
constexpr const char* kOther = "11111111-2222-3333-4444-555555555555";
using Kind = PeerVerdict::Kind;

PeerFacts Facts(std::string cgroups, std::string label = "", std::string cmdline_uuid = "") {
  PeerFacts f;
  f.pid = 4242;
  f.uid = 64055;
  f.cgroups = std::move(cgroups);
  f.lsm_label = std::move(label);
  f.cmdline_uuid = std::move(cmdline_uuid);
  return f;
}

TEST(PeerCheckTest, PartitionNameIsTheUuidsHexDigits) {
  EXPECT_EQ(VmCgroupPartition(kVm), "vtm6f1c2b7e0d7a4c559a403f0b8c1d2e11");
}

TEST(PeerCheckTest, ThisVmsPartitionIsAcceptedUnderSystemdAndWithout) {
  for (const char* cg : {"0::/machine.slice/machine-vtm6f1c2b7e0d7a4c559a403f0b8c1d2e11.slice/"
                         "machine-qemu\\x2d3\\x2dvmb.scope/libvirt/emulator\n",
                         "4:memory:/machine/vtm6f1c2b7e0d7a4c559a403f0b8c1d2e11.partition/qemu-3-vmb.libvirt-qemu\n"
                         "0::/\n"}) {
    for (auto mode : {PeerCheckMode::kWarn, PeerCheckMode::kRequire}) {
      auto v = DecidePeer(Facts(cg), kVm, mode);
      EXPECT_EQ(v.kind, Kind::kAccept) << cg << ": " << v.reason;
    }
  }
}

TEST(PeerCheckTest, AnotherVmsPartitionIsRefusedEvenInWarnModeAndWithAForgedUuid) {
  auto v = DecidePeer(Facts("0::/machine.slice/machine-vtm11111111222233334444555555555555.slice/x.scope\n", "", kVm),
                      kVm, PeerCheckMode::kWarn);
  EXPECT_EQ(v.kind, Kind::kRefuse);
  EXPECT_NE(v.reason.find("pid 4242"), std::string::npos) << v.reason;
  EXPECT_NE(v.reason.find("vtm111111112222"), std::string::npos) << v.reason;
}

TEST(PeerCheckTest, AppArmorProfileDecides) {
  std::string ours = std::string("libvirt-") + kVm + " (enforce)";
  EXPECT_EQ(DecidePeer(Facts("0::/\n", ours), kVm, PeerCheckMode::kRequire).kind, Kind::kAccept);
  std::string theirs = std::string("libvirt-") + kOther + " (enforce)";
  EXPECT_EQ(DecidePeer(Facts("0::/\n", theirs, kVm), kVm, PeerCheckMode::kWarn).kind, Kind::kRefuse);
}

TEST(PeerCheckTest, UnprovenPeerDependsOnTheMode) {
  auto plain = Facts("0::/machine.slice/machine-qemu\\x2d3\\x2dvmb.scope/libvirt/emulator\n");
  EXPECT_EQ(DecidePeer(plain, kVm, PeerCheckMode::kWarn).kind, Kind::kAcceptUnproven);
  auto v = DecidePeer(plain, kVm, PeerCheckMode::kRequire);
  EXPECT_EQ(v.kind, Kind::kRefuse);
  EXPECT_NE(v.reason.find("<partition>/machine/vtm6f1c2b7e"), std::string::npos) << v.reason;
  EXPECT_EQ(DecidePeer(plain, kVm, PeerCheckMode::kOff).kind, Kind::kAccept);
}

TEST(PeerCheckTest, CommandLineUuidOnlyEverRefuses) {
  // A QEMU can rewrite its argv: a matching -uuid proves nothing, another one shows a
  // misconfigured <tpm>.
  EXPECT_EQ(DecidePeer(Facts("0::/\n", "", kVm), kVm, PeerCheckMode::kRequire).kind, Kind::kRefuse);
  EXPECT_EQ(DecidePeer(Facts("0::/\n", "", kOther), kVm, PeerCheckMode::kWarn).kind, Kind::kRefuse);
}

TEST(PeerCheckTest, PeerThatExitedOrIsUnknownIsRefused) {
  auto gone = Facts("0::/machine/vtm6f1c2b7e0d7a4c559a403f0b8c1d2e11.partition\n");
  gone.exited = true;
  EXPECT_EQ(DecidePeer(gone, kVm, PeerCheckMode::kWarn).kind, Kind::kRefuse);
  PeerFacts unknown;
  EXPECT_EQ(DecidePeer(unknown, kVm, PeerCheckMode::kWarn).kind, Kind::kRefuse);
}

TEST(PeerCheckTest, ModesParse) {
  EXPECT_EQ(*ParsePeerCheckMode("require"), PeerCheckMode::kRequire);
  EXPECT_FALSE(ParsePeerCheckMode("strict").ok());
}

}  // namespace
}  // namespace vtm::instance
