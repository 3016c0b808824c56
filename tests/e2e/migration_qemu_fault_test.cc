// Faults in a live migration of a real QEMU guest (TCG) between the two rig vtmds, swept over
// the protocol's steps: the guest writes a random value into an NV index and extends PCR 16,
// then the migration runs as migration/vtm-live-migrate runs it (prepare, send, the destination
// QEMU started with -incoming and -S on the incoming vTPM, QMP migrate, both QEMUs reporting
// completed, `commit --activate-only`, QMP cont on the destination, `commit`), and at one step a
// process is SIGKILLed by its pid. The steps: after prepare; after send (the destination QEMU
// attached to the incoming vTPM); in the middle of QEMU's stream (QEMU's pause-before-switchover
// capability: the RAM sent, the source guest stopped, the device state with the vTPM's blobs not
// yet); after the state reached the destination (both QEMUs said completed); after `commit
// --activate-only` and cont; after `commit`. The victims: the source QEMU, the destination QEMU
// and the destination vtm-instance (16 pairs: neither of the destination's exists after
// prepare). Then the orchestrator's recovery as docs/migration.md says: commit if the
// destination QEMU lives and says its migration completed (abort if that commit is refused with
// nothing changed), else abort, cancel the source QEMU's migration and continue it; repeat
// commit once committing or activated; the QEMU on the side the VM left is quit. Then:
// - the migration is settled, the same on both hosts, and the VM is on the host the docs promise
//   (docs/migration.md, "What a failure leaves"), registered there only;
// - it is `running` with exactly one vtm-instance, the recorded one (`failed` with none where the
//   victim was that instance), no vtm-instance or swtpm of it that its host does not own, no
//   state directory on the other host, the same EK;
// - nothing of the vTPM's state was lost: where the guest lived on (its QEMU and vTPM both
//   alive), it reads the NV value and PCR 16 as it left them; otherwise a fresh QEMU boots
//   against the vTPM where it is (after `vtmctl start` if it was left failed) and reads the NV
//   value (PCRs reset with a boot, as they should).
//
// Why not all six victims of migration_live_fault_test: there a fake QEMU speaks QEMU's
// tpm-emulator protocol, and the source vtm-instance and both vtmds are killed too. How vtm
// recovers from a dead vtmd or a dead source instance depends on vtm's records and instances,
// not on what QEMU does, and that sweep covers it (with the vtmds' crash points inside each
// step). What a fake cannot show is how a real QEMU behaves when it or its peer dies (its stream
// failing, an incoming QEMU losing its vTPM, a cancelled or completed migration continued on the
// source): that is what this test kills. The fake's "mid-transfer" point (the permanent blob
// loaded, not the volatile one) lies inside QEMU's post_load and cannot be hit reliably with a
// real process; the pre-switchover pause is the real stream's mid-point here.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <regex>
#include <thread>

#include "migration_rig.h"
#include "qemu_guest.h"
#include "test_env.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/net.h"
#include "vtm/secret.h"
#include "vtm/unique_fd.h"

namespace vtm::testing {
namespace {

using std::chrono::seconds;

enum class Step { kPrepared, kSent, kPreSwitchover, kStateMoved, kActivated, kCommitted };
enum class Victim { kSourceQemu, kDestinationQemu, kDestinationInstance };
constexpr Step kSteps[] = {Step::kPrepared,   Step::kSent,      Step::kPreSwitchover,
                           Step::kStateMoved, Step::kActivated, Step::kCommitted};
constexpr Victim kVictims[] = {Victim::kSourceQemu, Victim::kDestinationQemu, Victim::kDestinationInstance};

const char* StepName(Step s) {
  switch (s) {
    case Step::kPrepared:
      return "after prepare";
    case Step::kSent:
      return "after send";
    case Step::kPreSwitchover:
      return "in QEMU's stream before the switchover";
    case Step::kStateMoved:
      return "after the state reached the destination";
    case Step::kActivated:
      return "after commit --activate-only";
    case Step::kCommitted:
      return "after commit";
  }
  return "?";
}
const char* VictimName(Victim v) {
  switch (v) {
    case Victim::kSourceQemu:
      return "source QEMU";
    case Victim::kDestinationQemu:
      return "destination QEMU";
    case Victim::kDestinationInstance:
      return "destination vtm-instance";
  }
  return "?";
}

// The destination's QEMU and instance appear with send.
bool Exists(Step s, Victim v) { return s != Step::kPrepared || v == Victim::kSourceQemu; }

std::string Quoted(const std::string& json, const std::string& key) {
  std::smatch m;
  return std::regex_search(json, m, std::regex("\"" + key + "\": \"([^\"]*)\"")) ? m[1].str() : std::string();
}

// One QMP command over a fresh connection (QEMU's monitor serves one client at a time): the
// reply line, or "" if QEMU is unreachable or answered with an error.
std::string QmpCommand(const std::string& socket, const std::string& command) {
  auto fd = ConnectUnix(socket);
  if (!fd.ok()) return "";
  timeval tv{30, 0};
  setsockopt(fd->get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd->get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  std::string buffer;
  auto read_line = [&]() -> std::string {
    for (;;) {
      const size_t end = buffer.find('\n');
      if (end != std::string::npos) {
        std::string line = buffer.substr(0, end);
        buffer.erase(0, end + 1);
        return line;
      }
      char chunk[4096];
      const ssize_t n = read(fd->get(), chunk, sizeof chunk);
      if (n <= 0) return "";
      buffer.append(chunk, static_cast<size_t>(n));
    }
  };
  if (read_line().empty()) return "";  // the greeting
  const std::string request = "{\"execute\": \"qmp_capabilities\"}\n" + command + "\n";
  if (!WriteAll(fd->get(), request.data(), request.size()).ok()) return "";
  for (int replies = 0;;) {
    const std::string line = read_line();
    if (line.empty()) return "";
    if (line.find("\"return\"") == std::string::npos && line.find("\"error\"") == std::string::npos) continue;
    if (++replies < 2) continue;
    return line.find("\"error\"") == std::string::npos ? line : "";
  }
}

// A real QEMU running the test guest (RunGuest, in a thread) with QMP, a second serial port the
// guest takes its cue from, and a pid file: the test kills it by that pid. Destroying it kills
// QEMU if it still runs.
class GuestQemu {
 public:
  GuestQemu(const std::string& dir, const std::string& tpm_socket, const std::string& script,
            const std::vector<std::string>& extra_args = {})
      : dir_(dir) {
    std::filesystem::create_directories(dir);
    GuestOptions o;
    o.tpm_socket = tpm_socket;
    o.script = script;
    o.work_dir = dir;
    o.timeout = seconds(300);
    o.extra_qemu_args = {"-pidfile", dir + "/qemu.pid",
                         "-qmp",     "unix:" + dir + "/qmp.sock,server=on,wait=off",
                         "-chardev", "socket,id=ctl,path=" + dir + "/ctl.sock,server=on,wait=off",
                         "-serial",  "chardev:ctl"};
    o.extra_qemu_args.insert(o.extra_qemu_args.end(), extra_args.begin(), extra_args.end());
    thread_ = std::thread([this, o] { run_ = RunGuest(o); });
    // QEMU writes its pid file and opens its monitor before it runs the guest.
    for (int i = 0; i < 400 && (pid_ <= 0 || Qmp("{\"execute\": \"query-status\"}").empty()); ++i) {
      if (pid_ <= 0) {
        auto pid = ReadFile(dir + "/qemu.pid");
        if (pid.ok()) pid_ = static_cast<pid_t>(std::strtol(pid->c_str(), nullptr, 10));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ~GuestQemu() {
    Kill();
    Join();
  }
  GuestQemu(const GuestQemu&) = delete;
  GuestQemu& operator=(const GuestQemu&) = delete;

  // Checked by command line, so a pid reused after QEMU was reaped is not taken for it.
  bool Alive() const {
    if (pid_ <= 0 || !ProcessRunning(pid_)) return false;
    auto cmdline = ReadFile("/proc/" + std::to_string(pid_) + "/cmdline");
    return cmdline.ok() && cmdline->find(dir_ + "/qemu.pid") != std::string::npos;
  }
  bool Kill() { return Alive() && KillAndWait(pid_); }
  std::string Qmp(const std::string& command) const { return QmpCommand(dir_ + "/qmp.sock", command); }
  // query-migrate's status ("" if QEMU does not answer).
  std::string MigrationStatus() const {
    std::smatch m;
    const std::string reply = Qmp("{\"execute\": \"query-migrate\"}");
    return std::regex_search(reply, m, std::regex("\"status\": \"([a-z-]+)\"")) ? m[1].str() : std::string();
  }
  // Waits until query-migrate says status; false on failed/cancelled, QEMU gone, or timeout.
  bool WaitForMigration(const std::string& status, seconds timeout) const {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      const std::string now = MigrationStatus();
      if (now == status) return true;
      if (now == "failed" || now == "cancelled" || !Alive()) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  std::string Console() const {
    auto text = ReadFile(dir_ + "/console.log");
    return text.ok() ? *text : "";
  }
  bool WaitForConsole(const std::string& text, seconds timeout) const {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      const bool alive = Alive();
      if (Console().find(text) != std::string::npos) return true;
      if (!alive) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }
  // The guest script's cue: a line on its second serial port.
  bool Cue() const { return SendToSocket(dir_ + "/ctl.sock", "go\n"); }
  const GuestRun& Join() {
    if (thread_.joinable()) thread_.join();
    return run_;
  }

 private:
  std::string dir_;
  pid_t pid_ = 0;
  GuestRun run_;
  std::thread thread_;
};

class MigrationQemuFaultTest : public GuestImageTest {
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

  void RunCase(Step step, Victim victim, int n);

  MigrationRig rig;
};

void MigrationQemuFaultTest::RunCase(Step step, Victim victim, int n) {
  const std::string what = std::string(VictimName(victim)) + " killed " + StepName(step);
  SCOPED_TRACE(what);
  const auto began = std::chrono::steady_clock::now();
  VtmdFixture& a = rig.a;
  VtmdFixture& b = rig.b;
  const std::string name = "qf" + std::to_string(n);
  ASSERT_EQ(a.Vtmctl({"create", "--name", name}).exit_code, 0);
  auto started = a.Vtmctl({"start", name});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  const std::string uuid = Field(started.output, "uuid");
  const std::string ek = a.CertificatePublicKeyPem(name, "ek-ecc");

  // The guest writes its value and extends PCR 16, then waits for its cue.
  auto rnd = RandomSecret(16);
  ASSERT_TRUE(rnd.ok());
  const std::string secret = "VTM-FAULT-" + HexEncode(AsString(*rnd));
  const std::string read_back = "echo NVREAD=$(tpm2_nvread 0x1500016 -C o -s " + std::to_string(secret.size()) +
                                ")\n"
                                "tpm2_pcrread sha256:16\n";
  const std::string script =
      "set -e\n"
      "tpm2_nvdefine 0x1500016 -C o -s 64 -a 'ownerread|ownerwrite|authread|authwrite'\n"
      "printf '%s' '" +
      secret +
      "' > /tmp/v\n"
      "tpm2_nvwrite 0x1500016 -C o -i /tmp/v\n"
      "tpm2_pcrextend 16:sha256=" +
      HexEncode(Sha256(secret)) +
      "\n"
      "tpm2_pcrread sha256:16\n"
      "echo VTM-MIGRATE-READY\n"
      "read -r go < /dev/ttyS1\n"
      "echo VTM-MIGRATED\n" +
      read_back;
  const std::string src_dir = rig.P("qemu-" + std::to_string(n) + "-a");
  const std::string dst_dir = rig.P("qemu-" + std::to_string(n) + "-b");
  auto src = std::make_unique<GuestQemu>(src_dir, Field(started.output, "tpm socket"), script);
  ASSERT_TRUE(src->WaitForConsole("VTM-MIGRATE-READY", seconds(240))) << src->Join().Describe();
  const std::string pcr16 = GuestPcrs(src->Console())[16];
  ASSERT_EQ(pcr16.size(), 64u) << src->Console();

  std::unique_ptr<GuestQemu> dst;
  std::string id;
  auto fault_now = [&](Step at) {
    if (at != step) return false;
    switch (victim) {
      case Victim::kSourceQemu:
        EXPECT_TRUE(src->Kill());
        break;
      case Victim::kDestinationQemu:
        EXPECT_TRUE(dst->Kill());
        break;
      case Victim::kDestinationInstance:
        EXPECT_TRUE(KillAndWait(RecordedInstancePid(b, uuid)));
        break;
    }
    return true;
  };
  // The protocol as vtm-live-migrate drives it, up to the fault.
  [&] {
    auto prepared = a.Vtmctl({"--json", "migrate", "prepare", name, "--to", rig.destination});
    ASSERT_EQ(prepared.exit_code, 0) << prepared.output;
    id = Quoted(prepared.output, "id");
    if (fault_now(Step::kPrepared)) return;
    auto sent = a.Vtmctl({"--json", "migrate", "send", id});
    ASSERT_EQ(sent.exit_code, 0) << sent.output;
    dst = std::make_unique<GuestQemu>(dst_dir, Quoted(sent.output, "destination_tpm_socket"), script,
                                      std::vector<std::string>{"-incoming", "unix:" + dst_dir + "/migrate.sock", "-S"});
    ASSERT_TRUE(dst->Alive()) << dst->Join().Describe();
    if (fault_now(Step::kSent)) return;
    ASSERT_NE(src->Qmp("{\"execute\": \"migrate-set-capabilities\", \"arguments\": {\"capabilities\": "
                       "[{\"capability\": \"pause-before-switchover\", \"state\": true}]}}"),
              "");
    ASSERT_NE(src->Qmp("{\"execute\": \"migrate\", \"arguments\": {\"uri\": \"unix:" + dst_dir + "/migrate.sock\"}}"),
              "");
    ASSERT_TRUE(src->WaitForMigration("pre-switchover", seconds(120))) << src->MigrationStatus();
    if (fault_now(Step::kPreSwitchover)) return;
    ASSERT_NE(src->Qmp("{\"execute\": \"migrate-continue\", \"arguments\": {\"state\": \"pre-switchover\"}}"), "");
    ASSERT_TRUE(src->WaitForMigration("completed", seconds(60))) << src->MigrationStatus();
    ASSERT_TRUE(dst->WaitForMigration("completed", seconds(60))) << dst->MigrationStatus();
    if (fault_now(Step::kStateMoved)) return;
    auto activated = a.Vtmctl({"migrate", "commit", id, "--activate-only"});
    ASSERT_EQ(activated.exit_code, 0) << activated.output;
    ASSERT_NE(dst->Qmp("{\"execute\": \"cont\"}"), "");
    if (fault_now(Step::kActivated)) return;
    auto committed = a.Vtmctl({"migrate", "commit", id});
    ASSERT_EQ(committed.exit_code, 0) << committed.output;
    fault_now(Step::kCommitted);
  }();
  if (HasFatalFailure()) return;

  // The orchestrator's recovery. QEMU's migration completed if the destination QEMU lives and
  // says so; else vtm-live-migrate aborts and continues the source.
  const bool qemu_completed = dst && dst->Alive() && dst->MigrationStatus() == "completed";
  auto [recorded_id, state] = LastMigrationOf(a, uuid);
  EXPECT_EQ(recorded_id, id);
  if (state == "sent" && qemu_completed) {
    auto committed = a.Vtmctl({"migrate", "commit", id, "--activate-only"});
    state = LastMigrationOf(a, uuid).second;
    if (committed.exit_code == 0) {
      EXPECT_NE(dst->Qmp("{\"execute\": \"cont\"}"), "");
    } else {
      EXPECT_EQ(state, "sent") << "a refused commit changed something: " << committed.output;
    }
  }
  if (state == "prepared" || state == "sent") {
    auto aborted = a.Vtmctl({"migrate", "abort", id});
    EXPECT_EQ(aborted.exit_code, 0) << aborted.output;
    if (src->Alive()) {
      // A migration still under way (paused before the switchover) is cancelled; a completed one
      // left the source paused: either way the guest continues there.
      (void)src->Qmp("{\"execute\": \"migrate_cancel\"}");
      for (int i = 0; i < 250; ++i) {
        const std::string s = src->MigrationStatus();
        if (s != "active" && s != "pre-switchover" && s != "device" && s != "cancelling") break;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      EXPECT_NE(src->Qmp("{\"execute\": \"cont\"}"), "");
    }
    if (dst) dst->Kill();
  } else if (state == "committing" || state == "activated") {
    auto committed = a.Vtmctl({"migrate", "commit", id});
    EXPECT_EQ(committed.exit_code, 0) << committed.output;
  }
  if (LastMigrationOf(a, uuid).second == "committed") src->Kill();  // paused in postmigrate: quit

  // Settled, the same on both sides, and where the docs say.
  const bool expect_destination =
      step >= Step::kActivated || (step == Step::kStateMoved && victim == Victim::kSourceQemu);
  const std::string source_state = LastMigrationOf(a, uuid).second;
  EXPECT_EQ(source_state, expect_destination ? "committed" : "aborted");
  EXPECT_EQ(LastMigrationOf(b, uuid).second, source_state);
  auto on_a = a.Vtmctl({"show", uuid});
  auto on_b = b.Vtmctl({"show", uuid});
  ASSERT_NE(on_a.exit_code == 0, on_b.exit_code == 0) << "source: " << on_a.output << "\ndestination: " << on_b.output;
  const bool there = on_b.exit_code == 0;
  EXPECT_EQ(there, expect_destination);
  VtmdFixture& holder = there ? b : a;
  VtmdFixture& other = there ? a : b;
  const std::string vm_state = Field((there ? on_b : on_a).output, "state");
  EXPECT_EQ(vm_state, there && victim == Victim::kDestinationInstance ? "failed" : "running");
  const pid_t recorded = vm_state == "running" ? RecordedInstancePid(holder, uuid) : 0;
  size_t instances = 0;
  const std::string problems = VmProcessProblems(uuid, holder, recorded, &instances, {"qemu-system-x86_64"});
  EXPECT_TRUE(problems.empty()) << problems;
  EXPECT_EQ(instances, vm_state == "running" ? 1u : 0u);
  EXPECT_FALSE(PathExists(other.state_dir() + "/vms/" + uuid));
  EXPECT_EQ(holder.CertificatePublicKeyPem(uuid, "ek-ecc"), ek);

  // Nothing of the state was lost. The guest lives on where its QEMU and its vTPM both survived.
  GuestQemu* guest = there ? dst.get() : src.get();
  const bool expect_guest = there ? victim == Victim::kSourceQemu : victim != Victim::kSourceQemu;
  if (guest != nullptr && (!guest->Alive() || vm_state != "running")) {
    guest->Kill();  // its vTPM is gone: the guest cannot go on
    guest = nullptr;
  }
  EXPECT_EQ(guest != nullptr, expect_guest);
  std::string how;
  if (guest != nullptr) {
    EXPECT_TRUE(guest->Cue());
    EXPECT_TRUE(guest->WaitForConsole("VTM-GUEST: exit", seconds(120)));
    const GuestRun& run = guest->Join();
    EXPECT_EQ(run.exit_code, 0) << run.Describe();
    EXPECT_NE(run.console.find("VTM-MIGRATED\nNVREAD=" + secret + "\n"), std::string::npos) << run.Describe();
    EXPECT_EQ(GuestPcrs(run.console)[16], pcr16) << run.Describe();
    how = "the guest read its NV value and PCR 16 on";
  } else {
    if (vm_state != "running") {
      auto restarted = holder.Vtmctl({"start", uuid});
      ASSERT_EQ(restarted.exit_code, 0) << restarted.output;
    }
    GuestOptions fresh;
    fresh.tpm_socket = Field(holder.Vtmctl({"show", uuid}).output, "tpm socket");
    fresh.script = read_back;
    fresh.work_dir = rig.P("qemu-" + std::to_string(n) + "-fresh");
    const GuestRun run = RunGuest(fresh);
    EXPECT_EQ(run.exit_code, 0) << run.Describe();
    EXPECT_NE(run.console.find("NVREAD=" + secret + "\n"), std::string::npos) << run.Describe();
    how = "a fresh QEMU read the NV value on";
  }
  src.reset();
  dst.reset();
  auto stopped = holder.Vtmctl({"stop", "--force", uuid});
  EXPECT_EQ(stopped.exit_code, 0) << stopped.output;
  std::cerr << "  " << what << ": migration " << source_state << ", VM " << vm_state << " on the "
            << (there ? "destination" : "source") << ", " << how << " it ("
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count() << " s)\n";
}

TEST_F(MigrationQemuFaultTest, EveryQemuVictimAtEveryStep) {
  int n = 0;
  for (Step step : kSteps) {
    for (Victim victim : kVictims) {
      if (!Exists(step, victim)) {
        std::cerr << "  " << VictimName(victim) << " " << StepName(step) << ": no such process at this step\n";
        continue;
      }
      RunCase(step, victim, n++);
      if (HasFatalFailure()) return;
    }
  }
  EXPECT_EQ(n, 16);
}

}  // namespace
}  // namespace vtm::testing
