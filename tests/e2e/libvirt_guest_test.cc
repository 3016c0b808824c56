// End to end with a real libvirtd (private, see libvirtd_fixture.h) running QEMU as
// libvirt-qemu, vtm's qemu hook and vtmd: a TCG domain marked for a vTPM gets it created and
// started by `virsh start` (the guest sees its TPM and the EK certificate vtmd issued, and a
// plain `vtmctl stop` is refused while QEMU is attached); `virsh destroy` stops the vTPM; the
// next `virsh start` finds the same vTPM state (an NV index written in the first boot);
// `virsh save`/`restore` and `virsh managedsave`/`start` keep even its volatile state (a PCR
// extended before the save); after `virsh undefine` the orphan is found and deleted, while a
// domain without the marker is never touched, not even when a vTPM exists for its UUID.
#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/stat.h>

#include <filesystem>
#include <iostream>
#include <thread>

#include "libvirtd_fixture.h"
#include "peer_check.h"
#include "qemu_guest.h"
#include "test_cgroups.h"
#include "test_env.h"
#include "test_processes.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/secret.h"
#include "vtm/x509.h"
#include "vtmd_fixture.h"

namespace vtm::testing {
namespace {

constexpr const char* kUuid = "3b0c5f7e-1d2a-4c6b-8e9f-0a1b2c3d4e5f";
constexpr const char* kPlainUuid = "3b0c5f7e-1d2a-4c6b-8e9f-0a1b2c3d4eff";

class LibvirtGuestTest : public GuestImageTest {
 protected:
  void TearDown() override {
    if (HasFailure() && libvirtd_) {
      std::cerr << "---- libvirtd log (tail) ----\n"
                << libvirtd_->LogTail() << "---- QEMU log of web1 ----\n"
                << libvirtd_->DomainLog("web1") << "---- vtmd log ----\n"
                << f_.VtmdLog();
    }
  }

  // A TCG domain booting the test guest with `script` as /vtm-test.sh; its first serial port
  // is the console (a file), its second a socket the test writes to (the guest's /dev/ttyS1).
  std::string DomainXml(const std::string& name, const std::string& uuid, const std::string& script) {
    const std::string g = libvirtd_->guest_dir();
    const std::string initrd = g + "/initrd-" + name + "-" + std::to_string(++boots_) + ".img";
    std::string error;
    EXPECT_TRUE(MakeScriptInitrd(GuestDir() + "/initrd.img", script, initrd, &error)) << error;
    chmod(initrd.c_str(), 0644);
    return "<domain type='qemu'><name>" + name + "</name><uuid>" + uuid +
           "</uuid><memory unit='MiB'>256</memory><vcpu>1</vcpu>"
           "<os><type arch='x86_64' machine='q35'>hvm</type><kernel>" +
           g + "/vmlinuz</kernel><initrd>" + initrd +
           "</initrd><cmdline>console=ttyS0 quiet panic=-1 ima_policy=tcb</cmdline></os>"
           "<features><acpi/></features><on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot>"
           "<on_crash>destroy</on_crash><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
           "<serial type='file'><source path='" +
           Console(name) +
           "' append='on'/><target port='0'/></serial>"
           "<serial type='unix'><source mode='bind' path='" +
           Control(name) +
           "'/><target port='1'/></serial>"
           "<memballoon model='none'/></devices></domain>\n";
  }
  std::string Console(const std::string& name) const { return libvirtd_->guest_dir() + "/console-" + name + ".log"; }
  std::string Control(const std::string& name) const { return libvirtd_->guest_dir() + "/ctl-" + name + ".sock"; }

  // The domain XML marked and wired to its vTPM, as an operator makes it.
  std::string Patched(const std::string& xml, const std::vector<std::string>& options = {}) {
    std::vector<std::string> argv = {BuildPath("vtm-manager/vtmctl"), "--socket", f_.socket(), "libvirt", "patch", "-"};
    argv.insert(argv.end(), options.begin(), options.end());
    auto patched = RunCommand(argv, xml);
    EXPECT_EQ(patched.exit_code, 0) << patched.output;
    return patched.output;
  }

  CommandResult Define(const std::string& xml) {
    const std::string path = libvirtd_->dir() + "/define.xml";
    EXPECT_TRUE(WriteFileAtomic(path, xml, 0644).ok());
    return libvirtd_->Virsh({"define", path});
  }

  std::string ConsoleText(const std::string& name) const { return ReadConsoleFile(Console(name)); }

  std::string WaitForMarker(const std::string& name, const std::string& key, std::chrono::seconds timeout) {
    return WaitForConsoleMarker(Console(name), key, timeout);
  }

  std::string DomainState(const std::string& name) {
    auto r = libvirtd_->Virsh({"domstate", name});
    std::string s = r.output;
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
  }
  std::string WaitForDomainState(const std::string& name, const std::string& want, std::chrono::seconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string state;
    while ((state = DomainState(name)) != want && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return state;
  }

  std::string VtpmState(const std::string& vm) { return Field(f_.Vtmctl({"show", vm}).output, "state"); }
  // The release hook runs after the domain is gone from libvirt's view, so give it a moment.
  std::string WaitForVtpmState(const std::string& vm, const std::string& want) {
    std::string state;
    for (int i = 0; i < 150 && (state = VtpmState(vm)) != want; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return state;
  }
  // This test's instances only (vtmd names its run dir in their arguments).
  size_t Instances(const std::string& uuid) const { return FindProcesses({"vtm-instance", uuid, f_.run_dir()}).size(); }

  VtmdFixture f_;  // declared first: outlives libvirtd, whose release hooks still call it
  std::unique_ptr<PrivateLibvirtd> libvirtd_;
  int boots_ = 0;
};

TEST_F(LibvirtGuestTest, VirshDrivesTheVtpmThroughTheHook) {
  const auto t0 = std::chrono::steady_clock::now();
  libvirtd_ = std::make_unique<PrivateLibvirtd>();
  // vtmd follows libvirt's QEMU user, as it does with Debian's stock qemu.conf.
  ASSERT_TRUE(f_.StartVtmd({"--libvirt-qemu-conf", libvirtd_->qemu_conf()})) << f_.VtmdLog();
  EXPECT_NE(f_.VtmdLog().find("QEMU user: libvirt-qemu"), std::string::npos) << f_.VtmdLog();
  // The hook as the install rules write it, with this test's vtmd socket and libvirt config.
  libvirtd_->InstallHook("#!/bin/sh\nexec " + BuildPath("vtm-manager/vtmctl") + " --socket " + f_.socket() +
                         " libvirt hook --qemu-conf " + libvirtd_->qemu_conf() + " \"$@\"\n");
  ASSERT_TRUE(libvirtd_->Start()) << libvirtd_->Log();
  std::filesystem::copy_file(GuestDir() + "/vmlinuz", libvirtd_->guest_dir() + "/vmlinuz",
                             std::filesystem::copy_options::overwrite_existing);

  auto rnd = RandomSecret(16);
  ASSERT_TRUE(rnd.ok());
  const std::string secret = "VTM-NV-" + HexEncode(AsString(*rnd));
  const std::string read_nv = "tpm2_nvread 0x1500016 -C o -s " + std::to_string(secret.size());
  const std::string hex = "hex() { od -An -tx1 -v $1 | tr -d ' \\n'; }\n";

  // define (marked by `vtmctl libvirt patch`) + start: the hook creates and starts the vTPM.
  const std::string first_boot = hex +
                                 "ls /dev/tpm0 >/dev/null && echo HAS_TPM=yes\n"
                                 "tpm2_nvread 0x01C0000A -C o -o /tmp/ek.der && echo EKCERT=$(hex /tmp/ek.der)\n"
                                 "tpm2_nvdefine 0x1500016 -C o -s 64 -a 'ownerread|ownerwrite|authread|authwrite'\n"
                                 "printf '%s' '" +
                                 secret +
                                 "' > /tmp/v && tpm2_nvwrite 0x1500016 -C o -i /tmp/v && echo NVWRITTEN=yes\n"
                                 "sleep 600\n";
  auto defined = Define(Patched(DomainXml("web1", kUuid, first_boot), {"--service", "shop"}));
  ASSERT_EQ(defined.exit_code, 0) << defined.output;
  EXPECT_EQ(f_.Vtmctl({"show", kUuid}).exit_code, 3);  // defining alone creates nothing
  auto started = libvirtd_->Virsh({"start", "web1"});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  EXPECT_EQ(VtpmState(kUuid), "running");
  EXPECT_EQ(Instances(kUuid), 1u);
  // QEMU runs as libvirt-qemu, so it reached tpm.sock as that user.
  const std::vector<pid_t> qemu = FindProcesses({"qemu-system", "guest=web1", libvirtd_->guest_dir()});
  ASSERT_EQ(qemu.size(), 1u);
  const struct passwd* qemu_user = getpwnam("libvirt-qemu");
  ASSERT_NE(qemu_user, nullptr);
  EXPECT_EQ(ProcessUid(qemu[0]), static_cast<long>(qemu_user->pw_uid));
  ASSERT_EQ(WaitForMarker("web1", "NVWRITTEN", std::chrono::seconds(180)), "yes") << ConsoleText("web1");
  EXPECT_EQ(GuestMarker(ConsoleText("web1"), "HAS_TPM"), "yes");
  // The guest's EK certificate is the one vtmd issued for this vTPM.
  const std::string ek_der = HexToBytes(GuestMarker(ConsoleText("web1"), "EKCERT"));
  ASSERT_FALSE(ek_der.empty()) << ConsoleText("web1");
  EXPECT_EQ(ca::DerToPem(ek_der), f_.Vtmctl({"certs", kUuid, "--kind", "ek-ecc"}).output);
  // A QEMU is attached: a plain stop is refused, and the guest keeps its TPM.
  auto stop = f_.Vtmctl({"stop", kUuid});
  EXPECT_EQ(stop.exit_code, 4) << stop.output;
  EXPECT_EQ(VtpmState(kUuid), "running");
  const auto t_first = std::chrono::steady_clock::now();

  // destroy: the release hook stops the vTPM, its state stays.
  auto destroyed = libvirtd_->Virsh({"destroy", "web1"});
  ASSERT_EQ(destroyed.exit_code, 0) << destroyed.output;
  EXPECT_EQ(WaitForVtpmState(kUuid, "stopped"), "stopped");
  EXPECT_EQ(Instances(kUuid), 0u);

  // Without vtmd the hook stops the start at once, and virsh shows the operator why.
  f_.StopVtmd();
  const auto t_refused = std::chrono::steady_clock::now();
  auto refused = libvirtd_->Virsh({"start", "web1"});
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("is vtmd running?"), std::string::npos) << refused.output;
  EXPECT_NE(libvirtd_->Log().find("is vtmd running?"), std::string::npos) << libvirtd_->LogTail();
  EXPECT_LT(std::chrono::steady_clock::now() - t_refused, std::chrono::seconds(10));
  EXPECT_EQ(DomainState("web1"), "shut off");
  ASSERT_TRUE(f_.StartVtmd({"--libvirt-qemu-conf", libvirtd_->qemu_conf()})) << f_.VtmdLog();

  // start again (a new script): the same vTPM state; then save + restore and managedsave +
  // start while the guest waits on its second serial port, with a PCR extended that only the
  // saved state can bring back.
  const std::string pcr_value(64, 'a');
  const std::string second_boot = hex + "echo NVREAD=$(" + read_nv +
                                  ")\n"
                                  "tpm2_pcrextend 23:sha256=" +
                                  pcr_value +
                                  "\n"
                                  "tpm2_pcrread sha256:23 -o /tmp/p && echo PCR23A=$(hex /tmp/p)\n"
                                  "echo READY=yes\n"
                                  "read -r go < /dev/ttyS1\n"
                                  "tpm2_pcrread sha256:23 -o /tmp/p && echo PCR23B=$(hex /tmp/p)\n"
                                  "echo AFTER=$(" +
                                  read_nv + ")\n";
  auto redefined = Define(Patched(DomainXml("web1", kUuid, second_boot)));
  ASSERT_EQ(redefined.exit_code, 0) << redefined.output;
  ASSERT_TRUE(std::filesystem::remove(Console("web1")));
  auto again = libvirtd_->Virsh({"start", "web1"});
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(VtpmState(kUuid), "running");
  ASSERT_EQ(WaitForMarker("web1", "READY", std::chrono::seconds(180)), "yes") << ConsoleText("web1");
  EXPECT_EQ(GuestMarker(ConsoleText("web1"), "NVREAD"), secret) << ConsoleText("web1");
  const std::string pcr_before = GuestMarker(ConsoleText("web1"), "PCR23A");
  ASSERT_EQ(pcr_before.size(), 64u) << ConsoleText("web1");
  EXPECT_NE(pcr_before, std::string(64, '0'));
  const auto t_second = std::chrono::steady_clock::now();

  const std::string saved = libvirtd_->dir() + "/web1.save";
  auto save = libvirtd_->Virsh({"save", "web1", saved});
  ASSERT_EQ(save.exit_code, 0) << save.output;
  EXPECT_EQ(WaitForVtpmState(kUuid, "stopped"), "stopped");
  EXPECT_EQ(Instances(kUuid), 0u);
  // The guest was saved while it waited: it reads its TPM again only after the restore.
  ASSERT_EQ(ConsoleText("web1").find("AFTER="), std::string::npos) << ConsoleText("web1");
  auto restore = libvirtd_->Virsh({"restore", saved});
  ASSERT_EQ(restore.exit_code, 0) << restore.output;
  EXPECT_EQ(VtpmState(kUuid), "running");
  // The same through a managed save, as libvirt-guests does at a host's shutdown: the next
  // `virsh start` restores the domain.
  auto managed = libvirtd_->Virsh({"managedsave", "web1"});
  ASSERT_EQ(managed.exit_code, 0) << managed.output;
  EXPECT_EQ(WaitForVtpmState(kUuid, "stopped"), "stopped");
  auto resumed = libvirtd_->Virsh({"start", "web1"});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_EQ(VtpmState(kUuid), "running");
  ASSERT_TRUE(SendToSocket(Control("web1"), "go\n"));
  EXPECT_EQ(WaitForMarker("web1", "AFTER", std::chrono::seconds(120)), secret) << ConsoleText("web1");
  EXPECT_EQ(GuestMarker(ConsoleText("web1"), "PCR23B"), pcr_before) << ConsoleText("web1");
  // The guest powers off by itself; libvirt releases the domain and the hook stops the vTPM.
  EXPECT_EQ(WaitForDomainState("web1", "shut off", std::chrono::seconds(60)), "shut off");
  EXPECT_EQ(WaitForVtpmState(kUuid, "stopped"), "stopped");
  const auto t_saved = std::chrono::steady_clock::now();

  // A domain without the marker is left alone, also when a vTPM exists for its UUID: starting
  // it neither starts nor creates anything, and its end stops nothing.
  ASSERT_EQ(f_.Vtmctl({"create", "--uuid", kPlainUuid}).exit_code, 0);
  ASSERT_EQ(VtpmState(kPlainUuid), "provisioned");  // created, never started
  ASSERT_EQ(Define(DomainXml("plain", kPlainUuid, "true\n")).exit_code, 0);
  auto plain_start = libvirtd_->Virsh({"start", "plain"});
  ASSERT_EQ(plain_start.exit_code, 0) << plain_start.output;
  EXPECT_EQ(VtpmState(kPlainUuid), "provisioned");
  EXPECT_EQ(WaitForDomainState("plain", "shut off", std::chrono::seconds(120)), "shut off") << ConsoleText("plain");
  ASSERT_EQ(f_.Vtmctl({"start", kPlainUuid}).exit_code, 0);
  ASSERT_EQ(Define(DomainXml("plain", kPlainUuid, "sleep 600\n")).exit_code, 0);
  plain_start = libvirtd_->Virsh({"start", "plain"});
  ASSERT_EQ(plain_start.exit_code, 0) << plain_start.output;
  ASSERT_EQ(libvirtd_->Virsh({"destroy", "plain"}).exit_code, 0);
  std::this_thread::sleep_for(std::chrono::seconds(1));  // a release hook, if any, has run by now
  EXPECT_EQ(VtpmState(kPlainUuid), "running");
  EXPECT_EQ(libvirtd_->Log().find("vtm hook: domain plain"), std::string::npos) << libvirtd_->LogTail();
  ASSERT_EQ(f_.Vtmctl({"stop", kPlainUuid}).exit_code, 0);

  // undefine: the vTPM stays until the orphan cleanup deletes it; the vTPM of the (still
  // defined) unmarked domain is no orphan.
  auto undefined = libvirtd_->Virsh({"undefine", "web1"});
  ASSERT_EQ(undefined.exit_code, 0) << undefined.output;
  EXPECT_EQ(f_.Vtmctl({"show", kUuid}).exit_code, 0);
  auto uuids = libvirtd_->Virsh({"list", "--all", "--uuid"});
  ASSERT_EQ(uuids.exit_code, 0) << uuids.output;
  auto cleanup = RunCommand(
      {BuildPath("vtm-manager/vtmctl"), "--socket", f_.socket(), "libvirt", "orphans", "--defined", "-", "--delete"},
      uuids.output);
  EXPECT_EQ(cleanup.exit_code, 0) << cleanup.output;
  EXPECT_NE(cleanup.output.find("deleted " + std::string(kUuid)), std::string::npos) << cleanup.output;
  EXPECT_EQ(f_.Vtmctl({"show", kUuid}).exit_code, 3);
  EXPECT_EQ(f_.Vtmctl({"show", kPlainUuid}).exit_code, 0);

  using std::chrono::duration;
  std::cerr << "timings (s): first boot " << duration<double>(t_first - t0).count() << ", destroy + second boot "
            << duration<double>(t_second - t_first).count() << ", save/restore + managedsave/start + power-off "
            << duration<double>(t_saved - t_second).count() << ", unmarked domain + orphans "
            << duration<double>(std::chrono::steady_clock::now() - t_saved).count() << "\n";
}

// vtm-instance's peer check with real libvirt and QEMU, all QEMUs running as libvirt-qemu. A
// domain patched with --cgroup-partition asks libvirt for /machine/vtm<hex>; the fixture's
// libvirtd manages no cgroups (cgroup_controllers = [ ], no cgroup2 controllers here), and
// measured here, libvirt 9.0 then starts QEMU outside any partition ("At least one cgroup
// controller is required", ignored) once the partition exists (without it, the start fails on
// the missing /machine). vtmd with --qemu-peer-check require must refuse that QEMU: nothing
// proves it is this VM's, though it has the right uid and -uuid. QEMU then fails to start.
TEST_F(LibvirtGuestTest, WithRequireAQemuOutsideItsPartitionIsRefused) {
  TestCgroups machine("machine");
  const std::string partition = machine.Make(instance::VmCgroupPartition(kUuid) + ".partition");
  if (partition.empty()) GTEST_SKIP() << "cannot make the cgroup partition /machine/vtm<hex>.partition";
  libvirtd_ = std::make_unique<PrivateLibvirtd>();
  ASSERT_TRUE(f_.StartVtmd({"--libvirt-qemu-conf", libvirtd_->qemu_conf(), "--qemu-peer-check", "require"}))
      << f_.VtmdLog();
  libvirtd_->InstallHook("#!/bin/sh\nexec " + BuildPath("vtm-manager/vtmctl") + " --socket " + f_.socket() +
                         " libvirt hook --qemu-conf " + libvirtd_->qemu_conf() + " \"$@\"\n");
  ASSERT_TRUE(libvirtd_->Start()) << libvirtd_->Log();
  std::filesystem::copy_file(GuestDir() + "/vmlinuz", libvirtd_->guest_dir() + "/vmlinuz",
                             std::filesystem::copy_options::overwrite_existing);

  auto defined = Define(Patched(DomainXml("web1", kUuid, "sleep 600\n"), {"--cgroup-partition"}));
  ASSERT_EQ(defined.exit_code, 0) << defined.output;
  auto started = libvirtd_->Virsh({"start", "web1"});
  EXPECT_NE(started.exit_code, 0) << started.output;
  EXPECT_NE(started.output.find("tpm-emulator"), std::string::npos) << started.output;

  const struct passwd* qemu_user = getpwnam("libvirt-qemu");
  ASSERT_NE(qemu_user, nullptr);
  auto log = ReadFile(f_.state_dir() + "/vms/" + kUuid + "/log/instance.log");
  ASSERT_TRUE(log.ok());
  const size_t refused = log->find("refused a client on tpm.sock: pid ");
  ASSERT_NE(refused, std::string::npos) << *log;
  EXPECT_NE(log->find(" uid " + std::to_string(qemu_user->pw_uid) + " is neither in cgroup partition " +
                          instance::VmCgroupPartition(kUuid),
                      refused),
            std::string::npos)
      << *log;
  std::cerr << "instance.log: " << log->substr(refused, log->find('\n', refused) - refused) << "\n";
  libvirtd_->Stop();
}

}  // namespace
}  // namespace vtm::testing
