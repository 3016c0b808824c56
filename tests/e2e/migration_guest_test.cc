// Live migration of a running QEMU guest with its vTPM between two vtmds on one machine (two
// simulated host TPMs, loopback), driven by the reference script migration/vtm-live-migrate
// over QMP: the guest writes a random value into an NV index and extends PCR 16, then waits on
// its second serial port; the vTPM moves (destination attested, keys sealed to its import key,
// state inside QEMU's own stream), and the guest, now running on the destination QEMU, reads
// the same NV value and PCR 16. Afterwards the source holds no state, keys or instance of the
// VM (a tombstone only), the destination runs the one instance, and the VM's new certificates
// verify under the destination's host CA and the fleet CA.
#include <gtest/gtest.h>

#include <filesystem>
#include <regex>
#include <thread>

#include "migration_rig.h"
#include "qemu_guest.h"
#include "test_env.h"
#include "test_processes.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/secret.h"

namespace vtm::testing {
namespace {

bool WaitForText(const std::string& file, const std::string& text, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto content = ReadFile(file);
    if (content.ok() && content->find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return false;
}

class MigrationGuestTest : public GuestImageTest {
 protected:
  void SetUp() override {
    GuestImageTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    std::string error;
    ASSERT_TRUE(rig.SetUp(&error)) << error;
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << rig.Logs();
  }
  CommandResult Script(std::vector<std::string> args) {
    std::vector<std::string> argv = {BuildPath("sbin/vtm-live-migrate"), "--vtmctl",
                                     BuildPath("vtm-manager/vtmctl"), "--socket", rig.a.socket()};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv);
  }
  MigrationRig rig;
};

TEST_F(MigrationGuestTest, LiveMigrationKeepsNvPcrsAndIdentityWithOneActiveInstance) {
  VtmdFixture& a = rig.a;
  VtmdFixture& b = rig.b;
  ASSERT_EQ(a.Vtmctl({"create", "--name", "live1", "--service", "web"}).exit_code, 0);
  auto started = a.Vtmctl({"start", "live1"});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  const std::string uuid = Field(started.output, "uuid");
  const std::string ik_before = a.CertificatePublicKeyPem("live1", "ik");

  auto rnd = RandomSecret(16);
  ASSERT_TRUE(rnd.ok());
  const std::string secret = "VTM-MIG-" + HexEncode(AsString(*rnd));
  const std::string extend = Sha256(secret);
  const std::string script =
      "set -e\n"
      "tpm2_nvdefine 0x1500016 -C o -s 64 -a 'ownerread|ownerwrite|authread|authwrite'\n"
      "printf '%s' '" + secret + "' > /tmp/v\n"
      "tpm2_nvwrite 0x1500016 -C o -i /tmp/v\n"
      "tpm2_pcrextend 16:sha256=" + HexEncode(extend) + "\n"
      "tpm2_pcrread sha256:16\n"
      "echo VTM-MIGRATE-READY\n"
      "read -r go < /dev/ttyS1\n"
      "echo VTM-MIGRATED\n"
      "echo NVREAD=$(tpm2_nvread 0x1500016 -C o -s " + std::to_string(secret.size()) + ")\n"
      "tpm2_pcrread sha256:16\n";

  const std::string src_dir = rig.P("qemu-a"), dst_dir = rig.P("qemu-b");
  auto qemu_options = [&](const std::string& dir, const std::string& tpm_socket) {
    GuestOptions o;
    o.tpm_socket = tpm_socket;
    o.script = script;
    o.work_dir = dir;
    o.timeout = std::chrono::seconds(400);
    o.extra_qemu_args = {"-qmp", "unix:" + dir + "/qmp.sock,server=on,wait=off", "-chardev",
                         "socket,id=ctl,path=" + dir + "/ctl.sock,server=on,wait=off", "-serial", "chardev:ctl"};
    return o;
  };
  std::filesystem::create_directories(src_dir);
  std::filesystem::create_directories(dst_dir);
  GuestRun src_run, dst_run;
  std::thread src([&] { src_run = RunGuest(qemu_options(src_dir, Field(started.output, "tpm socket"))); });
  std::thread dst;
  auto join = [&] {
    // Whatever happened, no QEMU outlives the test.
    std::string reply;
    (void)SendToSocket(src_dir + "/qmp.sock", "{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n", &reply);
    src.join();
    if (dst.joinable()) {
      (void)SendToSocket(dst_dir + "/qmp.sock", "{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n", &reply);
      dst.join();
    }
  };
  if (!WaitForText(src_dir + "/console.log", "VTM-MIGRATE-READY", std::chrono::seconds(240))) {
    join();
    FAIL() << "the source guest never got ready: " << src_run.Describe();
  }
  const std::string pre = *ReadFile(src_dir + "/console.log");

  auto begun = Script({"start", "live1", "--to", rig.destination});
  std::smatch m;
  if (begun.exit_code != 0 ||
      !std::regex_search(begun.output, m, std::regex("\"migration_id\": \"(mig-[0-9a-f]+)\", "
                                                     "\"destination_tpm_socket\": \"([^\"]+)\""))) {
    join();
    FAIL() << "vtm-live-migrate start: " << begun.output;
  }
  const std::string id = m[1].str(), dst_socket = m[2].str();
  EXPECT_EQ(Field(b.Vtmctl({"show", uuid}).output, "state"), "incoming");
  GuestOptions dst_options = qemu_options(dst_dir, dst_socket);
  dst_options.extra_qemu_args.insert(dst_options.extra_qemu_args.end(),
                                     {"-incoming", "unix:" + dst_dir + "/migrate.sock", "-S"});
  dst = std::thread([&] { dst_run = RunGuest(dst_options); });
  for (int i = 0; i < 100 && !PathExists(dst_dir + "/qmp.sock"); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));

  // Commit before QEMU's migration completed is refused and changes nothing.
  auto early = a.Vtmctl({"migrate", "commit", id});
  EXPECT_EQ(early.exit_code, 4) << early.output;
  EXPECT_NE(early.output.find("has not received the state yet"), std::string::npos) << early.output;

  auto finished = Script({"finish", id, "--source-qmp", src_dir + "/qmp.sock", "--destination-qmp",
                          dst_dir + "/qmp.sock", "--uri", "unix:" + dst_dir + "/migrate.sock"});
  std::cerr << finished.output;
  if (finished.exit_code != 0) {
    join();
    auto file = [](const std::string& path) { return ReadFile(path).ok() ? *ReadFile(path) : "(none)"; };
    FAIL() << "vtm-live-migrate finish: " << finished.output << "\nsource qemu: " << file(src_dir + "/qemu.log")
           << "\ndestination qemu: " << file(dst_dir + "/qemu.log") << "\ndestination instance: "
           << file(b.state_dir() + "/vms/" + uuid + "/log/instance.log") << "\ndestination swtpm: "
           << file(b.state_dir() + "/vms/" + uuid + "/log/swtpm.log") << "\nsource instance: "
           << file(a.state_dir() + "/vms/" + uuid + "/log/instance.log") << "\nsource swtpm: "
           << file(a.state_dir() + "/vms/" + uuid + "/log/swtpm.log");
  }
  // The commit went over vtmd's API socket (the Python bindings built from proto/vtm.proto),
  // not the slower vtmctl fallback, which the script takes (and logs) when they cannot load.
  EXPECT_NE(finished.output.find("commit armed on vtmd's API socket"), std::string::npos) << finished.output;
  // The guest, on the destination now, reads its vTPM.
  EXPECT_TRUE(SendToSocket(dst_dir + "/ctl.sock", "go\n"));
  EXPECT_TRUE(WaitForText(dst_dir + "/console.log", "VTM-GUEST: exit", std::chrono::seconds(120)));
  join();
  EXPECT_EQ(dst_run.exit_code, 0) << dst_run.Describe();
  EXPECT_NE(dst_run.console.find("VTM-MIGRATED"), std::string::npos) << dst_run.Describe();
  EXPECT_NE(dst_run.console.find("NVREAD=" + secret), std::string::npos) << dst_run.Describe();
  auto pcr_before = GuestPcrs(pre);
  auto pcr_after = GuestPcrs(dst_run.console);
  ASSERT_EQ(pcr_before.count(16), 1u) << pre;
  ASSERT_EQ(pcr_after.count(16), 1u) << dst_run.console;
  EXPECT_EQ(pcr_after[16], pcr_before[16]);
  EXPECT_NE(pcr_before[16], std::string(64, '0'));

  // Exactly one instance of the vTPM, on the destination; nothing of it left on the source.
  EXPECT_EQ(FindProcesses({"vtm-instance", uuid}).size(), 1u);
  auto gone = a.Vtmctl({"show", uuid});
  EXPECT_EQ(gone.exit_code, 3) << gone.output;
  EXPECT_NE(gone.output.find("migrated from this host to host-b"), std::string::npos) << gone.output;
  EXPECT_FALSE(PathExists(a.state_dir() + "/vms/" + uuid));
  EXPECT_EQ(Field(b.Vtmctl({"show", uuid}).output, "state"), "running");
  // Same IK, now certified by host-b's CA under the fleet CA.
  EXPECT_EQ(b.CertificatePublicKeyPem(uuid, "ik"), ik_before);
  ASSERT_TRUE(WriteFileAtomic(rig.P("ik-b.pem"), b.Vtmctl({"certs", uuid, "--kind", "ik"}).output, 0644).ok());
  auto verified = RunCommand({"openssl", "verify", "-CAfile", rig.P("fleet.pem"), "-untrusted", rig.P("b-ca.pem"),
                              rig.P("ik-b.pem")});
  EXPECT_EQ(verified.exit_code, 0) << verified.output;
  ASSERT_EQ(b.Vtmctl({"stop", "--force", uuid}).exit_code, 0);
}

}  // namespace
}  // namespace vtm::testing
