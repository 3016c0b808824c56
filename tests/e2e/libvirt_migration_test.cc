// Live migration of a libvirt domain with its vTPM between two real libvirtds on one machine
// (private ones, see libvirtd_fixture.h), each with vtm's qemu hook and its own vtmd (the
// migration rig's two hosts: fleet CA, destination policy, simulated host TPMs), driven by
// `vtm-live-migrate virsh`: the sealed migration moves the vTPM, `virsh migrate --live` moves
// QEMU. The guest writes a random NV value and extends a PCR, then waits on its second serial
// port while two migrations fail (the destination QEMU cannot listen on its migration port;
// the stream stalls and --timeout cancels it): each time the tool aborts, the source domain
// and its vTPM carry on, the destination keeps nothing. A third, with --persistent, succeeds;
// the guest, running on the destination, reads the same NV value and PCR. Afterwards one
// vtm-instance serves the VM (the destination's), the source holds a tombstone and no domain,
// and neither a start there nor a `virsh migrate` back by hand gets past the hook; the domain
// boots again on the destination from the definition the migration left, on the same vTPM.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <memory>
#include <thread>

#include "libvirtd_fixture.h"
#include "migration_rig.h"
#include "qemu_guest.h"
#include "test_env.h"
#include "test_processes.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/secret.h"

namespace vtm::testing {
namespace {

// Distinct host UUIDs: libvirt refuses to migrate a domain to the host it runs on.
constexpr const char* kSourceHostUuid = "5a1e0000-0000-4000-8000-00000000000a";
constexpr const char* kDestinationHostUuid = "5a1e0000-0000-4000-8000-00000000000b";

// A random UUID per run, so that runs at once (and leftovers) never count each other's
// vtm-instances.
std::string RandomUuid() {
  auto rnd = RandomSecret(16);
  if (!rnd.ok()) return "";
  std::string b = AsString(*rnd);
  b[6] = static_cast<char>((b[6] & 0x0f) | 0x40);
  b[8] = static_cast<char>((b[8] & 0x3f) | 0x80);
  const std::string h = HexEncode(b);
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) + "-" + h.substr(20);
}

// A TCP port held by listening sockets while it lives. kEverywhere: on every IPv4 and IPv6
// address, so QEMU cannot listen there. kIpv4Loopback: on 127.0.0.1 only, which never reads:
// libvirt has the destination QEMU listen on [::], QEMU, finding the IPv4 side of the port
// taken, listens on IPv6 alone, and the source QEMU's connection to 127.0.0.1 lands here and
// stalls once the socket buffers are full (on a host without IPv6, QEMU cannot listen at all).
class TakenPort {
 public:
  enum Where { kEverywhere, kIpv4Loopback };
  explicit TakenPort(Where where) {
    for (int attempt = 0; attempt < 10 && port_ == 0; ++attempt) {
      Close();
      v4_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in a4{};
      a4.sin_family = AF_INET;
      a4.sin_addr.s_addr = htonl(where == kEverywhere ? INADDR_ANY : INADDR_LOOPBACK);
      socklen_t len = sizeof(a4);
      if (v4_ < 0 || bind(v4_, reinterpret_cast<sockaddr*>(&a4), sizeof(a4)) != 0 || listen(v4_, 1) != 0 ||
          getsockname(v4_, reinterpret_cast<sockaddr*>(&a4), &len) != 0) {
        continue;
      }
      if (where == kIpv4Loopback) {
        port_ = ntohs(a4.sin_port);
        break;
      }
      v6_ = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (v6_ < 0) {  // no IPv6 here: libvirt has QEMU listen on 0.0.0.0
        port_ = ntohs(a4.sin_port);
        break;
      }
      const int on = 1;
      sockaddr_in6 a6{};
      a6.sin6_family = AF_INET6;
      a6.sin6_addr = in6addr_any;
      a6.sin6_port = a4.sin_port;
      if (setsockopt(v6_, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on)) == 0 &&
          bind(v6_, reinterpret_cast<sockaddr*>(&a6), sizeof(a6)) == 0 && listen(v6_, 1) == 0) {
        port_ = ntohs(a4.sin_port);
      }
    }
  }
  ~TakenPort() { Close(); }
  TakenPort(const TakenPort&) = delete;
  TakenPort& operator=(const TakenPort&) = delete;
  int port() const { return port_; }

 private:
  void Close() {
    if (v4_ >= 0) close(v4_);
    if (v6_ >= 0) close(v6_);
    v4_ = v6_ = -1;
  }
  int v4_ = -1, v6_ = -1;
  int port_ = 0;
};

std::string Trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

class LibvirtMigrationTest : public GuestImageTest {
 protected:
  void SetUp() override {
    GuestImageTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    std::string error;
    ASSERT_TRUE(rig_.SetUp(&error)) << error;
    source_ = std::make_unique<PrivateLibvirtd>(kSourceHostUuid);
    destination_ = std::make_unique<PrivateLibvirtd>(kDestinationHostUuid);
    // The hook as the install rules write it, each pointing at its host's vtmd.
    for (auto [libvirtd, vtmd] : {std::pair{source_.get(), &rig_.a}, std::pair{destination_.get(), &rig_.b}}) {
      libvirtd->InstallHook("#!/bin/sh\nexec " + BuildPath("vtm-manager/vtmctl") + " --socket " + vtmd->socket() +
                            " libvirt hook --qemu-conf " + libvirtd->qemu_conf() + " \"$@\"\n");
      ASSERT_TRUE(libvirtd->Start()) << libvirtd->Log();
    }
    std::filesystem::copy_file(GuestDir() + "/vmlinuz", source_->guest_dir() + "/vmlinuz");
  }

  void TearDown() override {
    if (HasFailure() && source_ && destination_) {
      std::cerr << "---- source libvirtd log (tail) ----\n"
                << source_->LogTail() << "---- source QEMU log ----\n"
                << source_->DomainLog("web1") << "---- destination libvirtd log (tail) ----\n"
                << destination_->LogTail() << "---- destination QEMU log ----\n"
                << destination_->DomainLog("web1") << rig_.Logs();
      for (const auto& [name, f] : {std::pair{"source", &rig_.a}, std::pair{"destination", &rig_.b}}) {
        for (const char* log : {"instance.log", "swtpm.log"}) {
          auto text = ReadFile(f->state_dir() + "/vms/" + uuid_ + "/log/" + log);
          if (text.ok()) std::cerr << "---- " << name << " " << log << " ----\n" << *text;
        }
      }
    }
    // libvirtds first (their release hooks still reach the vtmds), then the rig.
    destination_.reset();
    source_.reset();
  }

  // A TCG domain booting the test guest with `script` as /vtm-test.sh (kernel and initrd in
  // the source's guest dir, which both hosts see); its console (a file) and the control
  // socket the test writes to (the guest's /dev/ttyS1) lie in `libvirtd`'s guest dir. Marked
  // and wired to the source vTPM's socket, as `vtmctl libvirt patch` makes it.
  std::string DomainXml(const PrivateLibvirtd& libvirtd, const std::string& initrd) {
    const std::string kernel = source_->guest_dir() + "/vmlinuz";
    const std::string xml =
        "<domain type='qemu'><name>web1</name><uuid>" + uuid_ +
        "</uuid><memory unit='MiB'>256</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='q35'>hvm</type><kernel>" +
        kernel + "</kernel><initrd>" + initrd +
        "</initrd><cmdline>console=ttyS0 quiet panic=-1 ima_policy=tcb</cmdline></os>"
        "<features><acpi/></features><on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot>"
        "<on_crash>destroy</on_crash><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
        "<serial type='file'><source path='" +
        Console(libvirtd) +
        "' append='on'/><target port='0'/></serial>"
        "<serial type='unix'><source mode='bind' path='" +
        Control(libvirtd) +
        "'/><target port='1'/></serial>"
        "<memballoon model='none'/></devices></domain>\n";
    auto patched = RunCommand(
        {BuildPath("vtm-manager/vtmctl"), "--socket", rig_.a.socket(), "libvirt", "patch", "-", "--service", "shop"},
        xml);
    EXPECT_EQ(patched.exit_code, 0) << patched.output;
    return patched.output;
  }
  static std::string Console(const PrivateLibvirtd& l) { return l.guest_dir() + "/console-web1.log"; }
  static std::string Control(const PrivateLibvirtd& l) { return l.guest_dir() + "/ctl-web1.sock"; }

  static std::string ConsoleText(const PrivateLibvirtd& l) { return ReadConsoleFile(Console(l)); }
  static std::string WaitForMarker(const PrivateLibvirtd& l, const std::string& key, std::chrono::seconds timeout) {
    return WaitForConsoleMarker(Console(l), key, timeout);
  }

  static std::string DomainState(PrivateLibvirtd& l) { return Trimmed(l.Virsh({"domstate", "web1"}).output); }
  static std::string RunningDomains(PrivateLibvirtd& l) { return Trimmed(l.Virsh({"list", "--uuid"}).output); }
  static std::string VtpmState(VtmdFixture& f, const std::string& vm) {
    return Field(f.Vtmctl({"show", vm}).output, "state");
  }
  // vtm-instances of this VM: all of them, and those of one vtmd (its run dir among their
  // arguments).
  size_t Instances() const { return FindProcesses({"vtm-instance", uuid_}).size(); }
  size_t Instances(const VtmdFixture& f) const { return FindProcesses({"vtm-instance", uuid_, f.run_dir()}).size(); }

  CommandResult Migrate(const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {BuildPath("sbin/vtm-live-migrate"),
                                     "--vtmctl",
                                     BuildPath("vtm-manager/vtmctl"),
                                     "--socket",
                                     rig_.a.socket(),
                                     "virsh",
                                     "web1",
                                     "--to",
                                     rig_.destination,
                                     "--source-uri",
                                     source_->uri(),
                                     "--destination-uri",
                                     destination_->uri(),
                                     "--xml",
                                     destination_xml_};
    argv.insert(argv.end(), extra.begin(), extra.end());
    // Bounded, so a wedged migration fails the test instead of hanging it.
    argv.insert(argv.begin(), {"timeout", "--kill-after=5", "120"});
    return RunCommand(argv);
  }

  MigrationRig rig_;  // declared first: outlives the libvirtds, whose hooks call its vtmds
  std::unique_ptr<PrivateLibvirtd> source_, destination_;
  std::string uuid_ = RandomUuid();
  std::string destination_xml_;
};

TEST_F(LibvirtMigrationTest, VirshLiveMigrationMovesTheVtpmWithTheDomain) {
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(uuid_.size(), 36u);
  auto rnd = RandomSecret(16);
  ASSERT_TRUE(rnd.ok());
  const std::string secret = "VTM-LVM-" + HexEncode(AsString(*rnd));
  const std::string read_nv = "tpm2_nvread 0x1500016 -C o -s " + std::to_string(secret.size());
  const std::string script =
      "hex() { od -An -tx1 -v $1 | tr -d ' \\n'; }\n"
      // What the vTPM holds at boot: nothing at the first, the value at a later one.
      "echo BOOTNV=$(" +
      read_nv +
      " 2>/dev/null)\n"
      "tpm2_nvdefine 0x1500016 -C o -s 64 -a 'ownerread|ownerwrite|authread|authwrite'\n"
      "printf '%s' '" +
      secret +
      "' > /tmp/v && tpm2_nvwrite 0x1500016 -C o -i /tmp/v && echo NVWRITTEN=yes\n"
      "tpm2_pcrextend 23:sha256=" +
      HexEncode(Sha256(secret)) +
      "\n"
      "tpm2_pcrread sha256:23 -o /tmp/p && echo PCR23A=$(hex /tmp/p)\n"
      "echo READY=yes\n"
      "read -r go < /dev/ttyS1\n"
      "tpm2_pcrread sha256:23 -o /tmp/p && echo PCR23B=$(hex /tmp/p)\n"
      "echo AFTER=$(" +
      read_nv +
      ")\n"
      "sleep 600\n";
  const std::string initrd = source_->guest_dir() + "/initrd-web1.img";
  std::string error;
  ASSERT_TRUE(MakeScriptInitrd(GuestDir() + "/initrd.img", script, initrd, &error)) << error;
  chmod(initrd.c_str(), 0644);

  // define + start on the source: the hook creates and starts the vTPM on vtmd a.
  const std::string source_xml_path = source_->dir() + "/web1.xml";
  ASSERT_TRUE(WriteFileAtomic(source_xml_path, DomainXml(*source_, initrd), 0644).ok());
  // The destination's XML differs in the console and control socket (libvirt refuses files
  // the source QEMU still holds) and names the source's tpm.sock, as a copy of the source's
  // XML does: the destination's hook points it at the incoming vTPM.
  destination_xml_ = destination_->dir() + "/web1.xml";
  ASSERT_TRUE(WriteFileAtomic(destination_xml_, DomainXml(*destination_, initrd), 0644).ok());
  auto defined = source_->Virsh({"define", source_xml_path});
  ASSERT_EQ(defined.exit_code, 0) << defined.output;
  auto started = source_->Virsh({"start", "web1"});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  EXPECT_EQ(VtpmState(rig_.a, uuid_), "running");
  const std::string source_pid = Field(rig_.a.Vtmctl({"show", uuid_}).output, "instance pid");
  ASSERT_EQ(WaitForMarker(*source_, "READY", std::chrono::seconds(180)), "yes") << ConsoleText(*source_);
  EXPECT_EQ(GuestMarker(ConsoleText(*source_), "NVWRITTEN"), "yes") << ConsoleText(*source_);
  const std::string pcr_before = GuestMarker(ConsoleText(*source_), "PCR23A");
  ASSERT_EQ(pcr_before.size(), 64u) << ConsoleText(*source_);
  EXPECT_NE(pcr_before, std::string(64, '0'));
  const auto t_booted = std::chrono::steady_clock::now();

  // Migrations that fail: the tool aborts the vTPM's migration; the source domain runs on with
  // its vTPM (the same instance), the destination keeps neither domain nor vTPM.
  auto expect_rolled_back = [&](const CommandResult& failed) {
    std::cerr << failed.output;
    EXPECT_EQ(failed.exit_code, 1) << failed.output;
    EXPECT_NE(failed.output.find("aborting migration"), std::string::npos) << failed.output;
    EXPECT_EQ(DomainState(*source_), "running");
    EXPECT_EQ(VtpmState(rig_.a, uuid_), "running");
    EXPECT_EQ(Field(rig_.a.Vtmctl({"show", uuid_}).output, "instance pid"), source_pid);
    EXPECT_EQ(rig_.b.Vtmctl({"show", uuid_}).exit_code, 3);
    EXPECT_EQ(Trimmed(destination_->Virsh({"list", "--all", "--uuid"}).output), "");
    EXPECT_EQ(Instances(rig_.b), 0u);
    EXPECT_EQ(Instances(), 1u);
  };
  {
    // The destination QEMU cannot listen on its migration port: libvirt's prepare fails.
    TakenPort taken(TakenPort::kEverywhere);
    ASSERT_NE(taken.port(), 0);
    auto failed = Migrate({"--migrateuri", "tcp://127.0.0.1:" + std::to_string(taken.port())});
    EXPECT_NE(failed.output.find("Address already in use"), std::string::npos) << failed.output;
    expect_rolled_back(failed);
  }
  {
    // The stream stalls with the destination QEMU started (attached to the incoming vTPM):
    // the tool's --timeout cancels libvirt's migration.
    TakenPort stalled(TakenPort::kIpv4Loopback);
    ASSERT_NE(stalled.port(), 0);
    auto failed = Migrate({"--migrateuri", "tcp://127.0.0.1:" + std::to_string(stalled.port()), "--timeout", "5"});
    if (failed.output.find("Address already in use") == std::string::npos) {  // else: no IPv6 here
      EXPECT_NE(failed.output.find("cancelling it (virsh domjobabort)"), std::string::npos) << failed.output;
    }
    expect_rolled_back(failed);
  }
  const auto t_failed = std::chrono::steady_clock::now();

  // The migration: the guest waits on its serial port meanwhile.
  // The vtmctl way of arming the commit (the script's fallback), so both ways run end to end.
  auto migrated = Migrate({"--migrateuri", "tcp://127.0.0.1", "--persistent", "--commit-via", "vtmctl"});
  std::cerr << migrated.output;
  ASSERT_EQ(migrated.exit_code, 0) << migrated.output;
  EXPECT_NE(migrated.output.find("commit armed through vtmctl --on-stdin"), std::string::npos) << migrated.output;
  const auto t_migrated = std::chrono::steady_clock::now();
  EXPECT_EQ(DomainState(*destination_), "running");
  // --persistent: the domain is defined on the destination and undefined on the source.
  EXPECT_EQ(Trimmed(source_->Virsh({"list", "--all", "--uuid"}).output), "");
  // libvirt took the hook's XML over the one given with --xml: the destination QEMU connects
  // to the incoming (now active) vTPM's socket, not the source's.
  const std::string b_socket = rig_.b.run_dir() + "/vms/" + uuid_ + "/tpm.sock";
  auto live_xml = destination_->Virsh({"dumpxml", "web1"});
  EXPECT_NE(live_xml.output.find("path='" + b_socket + "'"), std::string::npos) << live_xml.output;
  EXPECT_EQ(live_xml.output.find(rig_.a.run_dir()), std::string::npos) << live_xml.output;
  EXPECT_NE(destination_->DomainLog("web1").find("path=" + b_socket), std::string::npos)
      << destination_->DomainLog("web1");
  // libvirt stores the persistent definition as given (the hook does not see it): the tool
  // pointed its <tpm> at the destination's vTPM too.
  auto inactive_xml = destination_->Virsh({"dumpxml", "--inactive", "web1"});
  EXPECT_NE(inactive_xml.output.find("path='" + b_socket + "'"), std::string::npos) << inactive_xml.output;
  EXPECT_EQ(inactive_xml.output.find(rig_.a.run_dir()), std::string::npos) << inactive_xml.output;

  // The guest, on the destination now, reads its vTPM again.
  ASSERT_TRUE(SendToSocket(Control(*destination_), "go\n"));
  EXPECT_EQ(WaitForMarker(*destination_, "AFTER", std::chrono::seconds(60)), secret) << ConsoleText(*destination_);
  EXPECT_EQ(GuestMarker(ConsoleText(*destination_), "PCR23B"), pcr_before) << ConsoleText(*destination_);
  EXPECT_EQ(ConsoleText(*source_).find("AFTER="), std::string::npos) << ConsoleText(*source_);

  // One vTPM instance, the destination's; the source holds a tombstone only.
  EXPECT_EQ(Instances(), 1u);
  EXPECT_EQ(Instances(rig_.b), 1u);
  EXPECT_EQ(VtpmState(rig_.b, uuid_), "running");
  auto gone = rig_.a.Vtmctl({"show", uuid_});
  EXPECT_EQ(gone.exit_code, 3) << gone.output;
  EXPECT_NE(gone.output.find("migrated from this host to host-b"), std::string::npos) << gone.output;
  EXPECT_FALSE(PathExists(rig_.a.state_dir() + "/vms/" + uuid_));
  // The domain defined on the source again (a stale definition, or an operator's mistake)
  // cannot start there: the source's vTPM is gone, and the hook does not make a new one beside
  // the vTPM that runs on the destination.
  auto redefined = source_->Virsh({"define", source_xml_path});
  ASSERT_EQ(redefined.exit_code, 0) << redefined.output;
  auto restarted = source_->Virsh({"start", "web1"});
  EXPECT_NE(restarted.exit_code, 0) << restarted.output;
  EXPECT_NE(restarted.output.find("migrated from this host to host-b"), std::string::npos) << restarted.output;
  EXPECT_EQ(RunningDomains(*source_), "");
  // Nor can a `virsh migrate` by hand bring it back without vtm's migration: the source's hook
  // refuses it, and the domain runs on at the destination.
  auto by_hand = destination_->Virsh({"migrate", "--live", "web1", source_->uri(), "--migrateuri", "tcp://127.0.0.1"});
  EXPECT_NE(by_hand.exit_code, 0) << by_hand.output;
  EXPECT_NE(by_hand.output.find("move the vTPM with vtm's migration first"), std::string::npos) << by_hand.output;
  EXPECT_EQ(DomainState(*destination_), "running");
  EXPECT_EQ(RunningDomains(*source_), "");

  // The domain ends on the destination: its hook stops the vTPM there.
  auto destroyed = destination_->Virsh({"destroy", "web1"});
  EXPECT_EQ(destroyed.exit_code, 0) << destroyed.output;
  std::string state;
  for (int i = 0; i < 50 && (state = VtpmState(rig_.b, uuid_)) != "stopped"; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(state, "stopped");
  EXPECT_EQ(Instances(), 0u);
  // The next start there, from the definition the migration left: the hook starts the
  // destination's vTPM, and the guest finds the value in NV.
  ASSERT_TRUE(std::filesystem::remove(Console(*destination_)));
  auto again = destination_->Virsh({"start", "web1"});
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(VtpmState(rig_.b, uuid_), "running");
  EXPECT_EQ(WaitForMarker(*destination_, "BOOTNV", std::chrono::seconds(120)), secret) << ConsoleText(*destination_);
  EXPECT_EQ(Instances(), 1u);

  using std::chrono::duration;
  std::cerr << "timings (s): set-up + boot " << duration<double>(t_booted - t0).count() << ", failed migration "
            << duration<double>(t_failed - t_booted).count() << ", migration "
            << duration<double>(t_migrated - t_failed).count() << ", after "
            << duration<double>(std::chrono::steady_clock::now() - t_migrated).count() << "\n";
}

}  // namespace
}  // namespace vtm::testing
