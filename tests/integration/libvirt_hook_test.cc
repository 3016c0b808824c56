// `vtmctl libvirt` against a real vtmd, fed as libvirtd feeds its qemu hook (domain XML on
// stdin, name/op/sub-op/extra as arguments): prepare creates and starts the vTPM, release
// stops it, restore/migrate rewrite paths, unmarked domains are left alone, and orphans are
// found and deleted only when their domain is gone. The e2e test runs the same hook under a
// real libvirtd.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>

#include "peer_check.h"
#include "vtm/fs.h"
#include "vtmd_fixture.h"

namespace vtm::testing {
namespace {

constexpr const char* kUuid = "6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb";
constexpr const char* kOther = "00000000-0000-4000-8000-0000000000aa";

std::string Domain(const std::string& uuid, const std::string& extra) {
  return "<domain type='qemu'><name>web1</name><uuid>" + uuid + "</uuid><memory unit='KiB'>131072</memory>" + extra +
         "</domain>";
}

class LibvirtHookTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(WriteFileAtomic(qemu_conf_, "#user = \"libvirt-qemu\"\nuser = \"root\"\n", 0644).ok());
    ASSERT_TRUE(f.StartVtmd({"--qemu-user", "root"})) << f.VtmdLog();
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "---- vtmd log ----\n" << f.VtmdLog();
  }
  CommandResult Hook(const std::string& op, const std::string& sub, const std::string& xml) {
    return RunCommand({BuildPath("vtm-manager/vtmctl"), "--socket", f.socket(), "libvirt", "hook", "--qemu-conf",
                       qemu_conf_, "web1", op, sub, "-"},
                      xml);
  }
  // The domain as `vtmctl libvirt patch` makes it from a plain one.
  std::string Patched(const std::string& uuid, const std::vector<std::string>& opts = {}) {
    TempDir d;
    const std::string in = d.path() + "/in.xml";
    EXPECT_TRUE(WriteFileAtomic(in, Domain(uuid, "<devices><tpm model='tpm-tis'><backend type='emulator'/></tpm></devices>"), 0600).ok());
    std::vector<std::string> argv = {BuildPath("vtm-manager/vtmctl"), "--socket", f.socket(), "libvirt", "patch", in};
    argv.insert(argv.end(), opts.begin(), opts.end());
    auto r = RunCommand(argv);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.output;
  }
  TempDir conf_dir_;
  std::string qemu_conf_ = conf_dir_.path() + "/qemu.conf";
  VtmdFixture f;
};

TEST_F(LibvirtHookTest, PrepareCreatesAndStartsReleaseStopsStateStays) {
  const std::string xml = Patched(kUuid, {"--service", "shop"});
  EXPECT_NE(xml.find(f.run_dir() + "/vms/" + kUuid + "/tpm.sock"), std::string::npos) << xml;
  // Only on request: the cgroup partition the vTPM recognizes this domain's QEMU by
  // (vtm-instance's peer check), which must exist before the domain starts.
  EXPECT_EQ(xml.find("<partition>"), std::string::npos) << xml;
  const std::string in_partition = Patched(kUuid, {"--service", "shop", "--cgroup-partition"});
  EXPECT_NE(in_partition.find("<resource><partition>/machine/" + instance::VmCgroupPartition(kUuid) +
                              "</partition></resource>"),
            std::string::npos)
      << in_partition;
  EXPECT_EQ(Hook("prepare", "begin", in_partition).output.find("cgroup partition"), std::string::npos);

  auto prepared = Hook("prepare", "begin", xml);
  ASSERT_EQ(prepared.exit_code, 0) << prepared.output;
  EXPECT_NE(prepared.output.find("cgroup partition"), std::string::npos) << prepared.output;
  auto shown = f.Vtmctl({"show", kUuid});
  EXPECT_EQ(Field(shown.output, "state"), "running") << shown.output;
  EXPECT_EQ(Field(shown.output, "name"), "web1");
  EXPECT_EQ(Field(shown.output, "service"), "shop");
  EXPECT_TRUE(PathExists(Field(shown.output, "tpm socket")));
  // Again (libvirt retries a failed start): same instance, no error.
  auto again = Hook("prepare", "begin", xml);
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(Field(f.Vtmctl({"show", kUuid}).output, "instance pid"), Field(shown.output, "instance pid"));
  // Hooks the vTPM does not care about do nothing.
  EXPECT_EQ(Hook("start", "begin", xml).exit_code, 0);
  EXPECT_EQ(Hook("stopped", "end", xml).exit_code, 0);
  EXPECT_EQ(Field(f.Vtmctl({"show", kUuid}).output, "state"), "running");

  auto released = Hook("release", "end", xml);
  EXPECT_EQ(released.exit_code, 0) << released.output;
  EXPECT_EQ(Field(f.Vtmctl({"show", kUuid}).output, "state"), "stopped");
  EXPECT_TRUE(PathExists(f.state_dir() + "/vms/" + kUuid + "/tpm"));
  // Released twice (libvirt does so after a failed start): still fine.
  EXPECT_EQ(Hook("release", "end", xml).exit_code, 0);
}

TEST_F(LibvirtHookTest, DomainsWithoutTheMarkerAreLeftAlone) {
  auto plain = Hook("prepare", "begin", Domain(kUuid, "<devices><tpm model='tpm-crb'><backend type='emulator'/></tpm></devices>"));
  EXPECT_EQ(plain.exit_code, 0) << plain.output;
  EXPECT_TRUE(plain.output.empty()) << plain.output;
  auto foreign_socket = Hook("prepare", "begin", Domain(kUuid,
      "<devices><tpm model='tpm-crb'><backend type='external'><source type='unix' path='/srv/other/tpm.sock'/></backend></tpm></devices>"));
  EXPECT_EQ(foreign_socket.exit_code, 0) << foreign_socket.output;
  auto restore = Hook("restore", "begin", Domain(kUuid, ""));
  EXPECT_EQ(restore.exit_code, 0);
  EXPECT_TRUE(restore.output.empty()) << restore.output;
  EXPECT_EQ(f.Vtmctl({"show", kUuid}).exit_code, 3);  // nothing was created
  // Not even a broken document stops an unrelated domain.
  EXPECT_EQ(Hook("prepare", "begin", "<domain>").exit_code, 0);
}

TEST_F(LibvirtHookTest, OptInByExternalSocketInVtmdsRunDir) {
  const std::string xml = Domain(kUuid, "<devices><tpm model='tpm-crb'><backend type='external'><source type='unix' "
                                        "mode='connect' path='" + f.run_dir() + "/vms/" + kUuid +
                                        "/tpm.sock'/></backend></tpm></devices>");
  auto prepared = Hook("prepare", "begin", xml);
  ASSERT_EQ(prepared.exit_code, 0) << prepared.output;
  EXPECT_EQ(Field(f.Vtmctl({"show", kUuid}).output, "state"), "running");
  // Not patched, so not in its own cgroup partition: started, with a warning that says how.
  EXPECT_NE(prepared.output.find("is not placed in cgroup partition /machine/" + instance::VmCgroupPartition(kUuid)),
            std::string::npos)
      << prepared.output;
  EXPECT_NE(prepared.output.find("vtmctl libvirt patch"), std::string::npos) << prepared.output;
}

TEST_F(LibvirtHookTest, FailuresSayWhatToDo) {
  // Marker without create permission and no vTPM.
  auto no_create = Hook("prepare", "begin", Patched(kUuid, {"--no-create"}));
  EXPECT_EQ(no_create.exit_code, 1);
  EXPECT_NE(no_create.output.find("vtmctl create --uuid " + std::string(kUuid)), std::string::npos) << no_create.output;
  // The <tpm> points somewhere else than the vTPM's socket.
  auto wrong = Hook("prepare", "begin", Domain(kUuid,
      "<metadata><vtm:vtpm xmlns:vtm='https://vtm.example/ns/1'/></metadata><devices><tpm model='tpm-crb'>"
      "<backend type='external'><source type='unix' path='/tmp/elsewhere.sock'/></backend></tpm></devices>"));
  EXPECT_EQ(wrong.exit_code, 1);
  EXPECT_NE(wrong.output.find("vtmctl libvirt patch"), std::string::npos) << wrong.output;
  // libvirt runs QEMU as someone who could not open the socket.
  ASSERT_TRUE(WriteFileAtomic(qemu_conf_, "user = \"nobody\"\n", 0644).ok());
  auto denied = Hook("prepare", "begin", Patched(kUuid));
  EXPECT_EQ(denied.exit_code, 1);
  EXPECT_NE(denied.output.find("Permission denied"), std::string::npos) << denied.output;
  EXPECT_NE(denied.output.find("qemu-user = nobody"), std::string::npos) << denied.output;
  // An incoming migration of a domain whose vTPM is not here is refused before QEMU starts.
  auto migrate = Hook("migrate", "begin", Patched(kOther));
  EXPECT_EQ(migrate.exit_code, 1);
  EXPECT_NE(migrate.output.find("not on this host"), std::string::npos) << migrate.output;
}

TEST_F(LibvirtHookTest, RestoreRewritesTheSocketPathOnlyWhereItDiffers) {
  const std::string ours = Patched(kUuid);
  auto same = Hook("restore", "begin", ours);
  EXPECT_EQ(same.exit_code, 0) << same.output;
  EXPECT_TRUE(same.output.empty()) << same.output;
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kUuid}).exit_code, 0);
  // Saved on a host whose vtmd used another run dir.
  std::string theirs = ours;
  const std::string path = f.run_dir() + "/vms/";
  theirs.replace(theirs.find(path), path.size(), "/run/vtm/vms/");
  auto rewritten = Hook("restore", "begin", theirs);
  EXPECT_EQ(rewritten.exit_code, 0) << rewritten.output;
  EXPECT_NE(rewritten.output.find(f.run_dir() + "/vms/" + kUuid + "/tpm.sock"), std::string::npos) << rewritten.output;
  EXPECT_NE(rewritten.output.find("<domain"), std::string::npos);
}

TEST_F(LibvirtHookTest, NoHangAndAClearMessageWhenVtmdIsDown) {
  const std::string xml = Patched(kUuid);
  f.StopVtmd();
  auto t0 = std::chrono::steady_clock::now();
  auto down = Hook("prepare", "begin", xml);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(20));
  EXPECT_EQ(down.exit_code, 1);
  EXPECT_NE(down.output.find("is vtmd running"), std::string::npos) << down.output;
  // A domain that is not ours starts regardless.
  EXPECT_EQ(Hook("prepare", "begin", Domain(kUuid, "")).exit_code, 0);
}

TEST_F(LibvirtHookTest, OrphansAreFoundAndOnlyTheyAreDeleted) {
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kUuid, "--name", "kept"}).exit_code, 0);
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kOther, "--name", "orphan"}).exit_code, 0);
  const std::string vtmctl = BuildPath("vtm-manager/vtmctl");
  const std::string defined = std::string(kUuid) + "\n\n";
  auto listed = RunCommand({vtmctl, "--socket", f.socket(), "libvirt", "orphans", "--defined", "-"}, defined);
  ASSERT_EQ(listed.exit_code, 0) << listed.output;
  EXPECT_NE(listed.output.find(kOther), std::string::npos) << listed.output;
  EXPECT_EQ(listed.output.find(kUuid), std::string::npos) << listed.output;
  EXPECT_EQ(f.Vtmctl({"show", kOther}).exit_code, 0);  // listing deletes nothing

  // What a failed virsh prints must not make every vTPM an orphan.
  auto garbage = RunCommand({vtmctl, "--socket", f.socket(), "libvirt", "orphans", "--defined", "-", "--delete"},
                            "error: failed to connect to the hypervisor\n");
  EXPECT_EQ(garbage.exit_code, 2) << garbage.output;
  auto empty = RunCommand({vtmctl, "--socket", f.socket(), "libvirt", "orphans", "--defined", "-", "--delete"}, "");
  EXPECT_EQ(empty.exit_code, 2) << empty.output;
  EXPECT_NE(empty.output.find("--none-defined"), std::string::npos) << empty.output;
  EXPECT_EQ(f.Vtmctl({"show", kOther}).exit_code, 0);

  // A running vTPM without a domain is reported, not deleted.
  ASSERT_EQ(f.Vtmctl({"start", kOther}).exit_code, 0);
  auto running = RunCommand({vtmctl, "--socket", f.socket(), "libvirt", "orphans", "--defined", "-", "--delete"}, defined);
  EXPECT_EQ(running.exit_code, 4) << running.output;
  EXPECT_EQ(f.Vtmctl({"show", kOther}).exit_code, 0);
  ASSERT_EQ(f.Vtmctl({"stop", kOther}).exit_code, 0);

  auto deleted = RunCommand({vtmctl, "--socket", f.socket(), "libvirt", "orphans", "--defined", "-", "--delete"}, defined);
  EXPECT_EQ(deleted.exit_code, 0) << deleted.output;
  EXPECT_NE(deleted.output.find("deleted " + std::string(kOther)), std::string::npos) << deleted.output;
  EXPECT_EQ(f.Vtmctl({"show", kOther}).exit_code, 3);
  EXPECT_EQ(f.Vtmctl({"show", kUuid}).exit_code, 0);
}

TEST_F(LibvirtHookTest, HelpersPrintTheXmlAndTheQemuUser) {
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kUuid, "--service", "shop"}).exit_code, 0);
  auto xml = f.Vtmctl({"libvirt", "xml", kUuid, "--model", "tpm-tis"});
  ASSERT_EQ(xml.exit_code, 0) << xml.output;
  EXPECT_NE(xml.output.find("<tpm model='tpm-tis'>"), std::string::npos) << xml.output;
  EXPECT_NE(xml.output.find(f.run_dir() + "/vms/" + kUuid + "/tpm.sock"), std::string::npos);
  EXPECT_NE(xml.output.find("service='shop'"), std::string::npos);
  auto user = f.Vtmctl({"libvirt", "qemu-user", "--qemu-conf", qemu_conf_});
  ASSERT_EQ(user.exit_code, 0) << user.output;
  EXPECT_EQ(user.output.substr(0, 5), "root\t") << user.output;
  EXPECT_EQ(f.Vtmctl({"libvirt", "frob"}).exit_code, 2);
}

}  // namespace
}  // namespace vtm::testing
