// Faults in a live migration, swept: between the two rig vtmds, a running vTPM moves as QEMU
// moves it, with a fake QEMU on each side speaking QEMU's tpm-emulator control protocol (the
// source "QEMU" on the source instance's tpm.sock, the destination "QEMU" on the incoming
// instance's socket that `migrate send` returns; the state goes as QEMU carries it:
// GET_STATEBLOB on the source, STOP + SET_STATEBLOB + INIT on the destination). Before the move
// the guest writes a random value into an NV index through the source QEMU's data channel.
//
// At each step (after prepare, after send, in the middle of the state transfer (the
// permanent blob loaded, not the volatile one), after the state reached the destination,
// after `commit --activate-only`, after `commit`) one of six processes dies: the destination
// vtm-instance or the source vtm-instance (SIGKILL), the destination or the source fake QEMU
// (its sockets closed, as the kernel closes them when QEMU is killed), the destination or the
// source vtmd (SIGKILL between steps, then started again; migration_crash_test sweeps the
// crash points inside the steps of a cold migration). Every step × victim
// pair is enumerated; a pair whose victim does not exist at that step is listed as such. Then
// the orchestrator's recovery runs as docs/migration.md and migration/vtm-live-migrate do it:
// abort what QEMU did not finish (prepared, or sent with no complete QEMU migration); commit
// once QEMU's migration completed (and abort if that commit is refused with nothing changed);
// repeat commit once committing or activated. Then, each time:
// - the migration is settled (aborted or committed), the same on both hosts, and the VM is on
//   the host the docs promise: the source unless the state reached a destination that
//   survived it, the destination once activated;
// - it is registered on that host only (`vtmctl show`), `running` with one live vtm-instance
//   there, or `failed` with none if the victim was that host's instance (the docs: an instance
//   that ends unexpectedly leaves its VM failed; `vtmctl start` brings it back);
// - no vtm-instance or swtpm of the VM runs that the VM's host does not own (no orphan, none on
//   the other host), and the other host holds no state directory for it;
// - the vTPM state is not lost: after (re)starting it where it is, a fresh QEMU reads the NV
//   value back.
// A second test kills the vtmds at their crash points inside the steps (VTM_CRASH_AT,
// enumerated by a traced live migration), with the same recovery and checks.
// tests/e2e/migration_qemu_fault_test.cc kills real QEMU processes (and the destination
// instance) at the steps of a real guest's migration.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <random>
#include <regex>
#include <sstream>

#include "fake_qemu.h"
#include "migration_rig.h"
#include "test_processes.h"
#include "vtm/fs.h"
#include "vtm/subprocess.h"
#include "vtmd_fixture.h"

namespace vtm::testing {
namespace {

constexpr uint32_t kNvIndex = 0x01500016;

enum class Step { kPrepared, kSent, kMidTransfer, kStateMoved, kActivated, kCommitted };
enum class Victim {
  kDestinationInstance,
  kSourceInstance,
  kDestinationQemu,
  kSourceQemu,
  kDestinationVtmd,
  kSourceVtmd
};
constexpr Step kSteps[] = {Step::kPrepared,   Step::kSent,      Step::kMidTransfer,
                           Step::kStateMoved, Step::kActivated, Step::kCommitted};
constexpr Victim kVictims[] = {Victim::kDestinationInstance, Victim::kSourceInstance,  Victim::kDestinationQemu,
                               Victim::kSourceQemu,          Victim::kDestinationVtmd, Victim::kSourceVtmd};

const char* StepName(Step s) {
  switch (s) {
    case Step::kPrepared:
      return "after prepare";
    case Step::kSent:
      return "after send";
    case Step::kMidTransfer:
      return "in the middle of the state transfer";
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
    case Victim::kDestinationInstance:
      return "destination vtm-instance";
    case Victim::kSourceInstance:
      return "source vtm-instance";
    case Victim::kDestinationQemu:
      return "destination QEMU";
    case Victim::kSourceQemu:
      return "source QEMU";
    case Victim::kDestinationVtmd:
      return "destination vtmd";
    case Victim::kSourceVtmd:
      return "source vtmd";
  }
  return "?";
}

// A process that does not exist at that step: the destination's instance and QEMU appear with
// send; commit stops the source's instance.
bool Exists(Step s, Victim v) {
  if (s == Step::kPrepared) return v != Victim::kDestinationInstance && v != Victim::kDestinationQemu;
  if (s == Step::kCommitted) return v != Victim::kSourceInstance;
  return true;
}

class MigrationLiveFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (vtmd runs instances as their own uids)";
    std::string error;
    ASSERT_TRUE(rig.SetUp(&error)) << error;
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << rig.Logs();
  }
  static std::string Quoted(const std::string& json, const std::string& key) {
    std::smatch m;
    return std::regex_search(json, m, std::regex("\"" + key + "\": \"([^\"]*)\"")) ? m[1].str() : std::string();
  }

  // The VM's processes (migration_rig.h, VmProcessProblems): none that its host does not own;
  // the number of vtm-instances.
  static size_t CheckProcesses(const std::string& uuid, const VtmdFixture& holder, pid_t recorded) {
    size_t instances = 0;
    const std::string problem = VmProcessProblems(uuid, holder, recorded, &instances);
    EXPECT_TRUE(problem.empty()) << problem;
    return instances;
  }

  // One live migration with one fault: victim killed after step; or, with a crash point, the
  // vtmd on that side (crash_source) dies there (VTM_CRASH_AT) and starts again.
  void RunCase(Step step, Victim victim, int n, const std::string& crash_point = "", bool crash_source = false) {
    const bool crash = !crash_point.empty();
    const std::string what =
        crash ? std::string(crash_source ? "source" : "destination") + " vtmd crashed at " + crash_point
              : std::string(VictimName(victim)) + " killed " + StepName(step);
    SCOPED_TRACE(what);
    VtmdFixture& a = rig.a;
    VtmdFixture& b = rig.b;
    const std::string name = "live" + std::to_string(n);
    std::string error;
    if (crash) {
      (crash_source ? a : b).SetVtmdEnvironment({"VTM_CRASH_AT=" + crash_point});
      ASSERT_TRUE(crash_source ? rig.RestartSource(rig.P("policy.json"), &error) : rig.RestartDestination(&error))
          << error;
    }
    ASSERT_EQ(a.Vtmctl({"create", "--name", name}).exit_code, 0);
    auto started = a.Vtmctl({"start", name});
    ASSERT_EQ(started.exit_code, 0) << started.output;
    const std::string uuid = Field(started.output, "uuid");
    const std::string ek = a.CertificatePublicKeyPem(name, "ek-ecc");

    // The guest runs and writes its value into NV.
    std::mt19937_64 rng(std::random_device{}());
    const std::string secret = "nv-" + std::to_string(rng()) + "-" + std::to_string(n);
    auto src = std::make_unique<FakeQemu>(Field(started.output, "tpm socket"));
    ASSERT_TRUE(src->Start(/*init=*/true)) << a.VtmdLog();
    ASSERT_EQ(src->StartupClear(), kTpmRcSuccess);
    ASSERT_TRUE(src->NvWrite(kNvIndex, secret));
    ASSERT_EQ(src->NvRead(kNvIndex, secret.size()), secret);

    std::unique_ptr<FakeQemu> dst;
    bool moved = false, crashed = false;
    // A command's result: in a crash run, its failure is the crash (the protocol stops there).
    auto done = [&](const CommandResult& r) {
      if (r.exit_code == 0) return true;
      if (crash) {
        crashed = true;
      } else {
        ADD_FAILURE() << r.output;
      }
      return false;
    };
    auto fault_now = [&](Step at) {
      if (crash || at != step) return false;
      switch (victim) {
        case Victim::kDestinationInstance:
          EXPECT_TRUE(KillAndWait(RecordedInstancePid(b, uuid)));
          break;
        case Victim::kSourceInstance:
          EXPECT_TRUE(KillAndWait(RecordedInstancePid(a, uuid)));
          break;
        case Victim::kDestinationQemu:
          dst.reset();
          break;
        case Victim::kSourceQemu:
          src.reset();
          break;
        case Victim::kDestinationVtmd:
        case Victim::kSourceVtmd: {
          // vtmd dies; its instances live on, and it starts again on the same state.
          const bool source = victim == Victim::kSourceVtmd;
          VtmdFixture& host = source ? a : b;
          EXPECT_EQ(kill(host.vtmd_pid(), SIGKILL), 0);
          host.WaitVtmdExit();
          std::string error;
          EXPECT_TRUE(source ? rig.RestartSource(rig.P("policy.json"), &error, false)
                             : rig.RestartDestination(&error, false))
              << error;
          break;
        }
      }
      return true;
    };
    // The protocol, up to the fault.
    [&] {
      auto prepared = a.Vtmctl({"--json", "migrate", "prepare", name, "--to", rig.destination});
      if (!done(prepared)) return;
      const std::string id = Quoted(prepared.output, "id");
      if (fault_now(Step::kPrepared)) return;
      auto sent = a.Vtmctl({"--json", "migrate", "send", id});
      if (!done(sent)) return;
      // The destination QEMU starts with -incoming on the incoming instance's socket.
      dst = std::make_unique<FakeQemu>(Quoted(sent.output, "destination_tpm_socket"));
      ASSERT_TRUE(dst->Start(/*init=*/false));
      if (fault_now(Step::kSent)) return;
      // QEMU's stream: the source's blobs, loaded by the destination, which then resumes the TPM.
      std::vector<uint8_t> permanent, volatile_state;
      ASSERT_TRUE(src->GetStateBlob(kBlobPermanent, &permanent));
      ASSERT_TRUE(src->GetStateBlob(kBlobVolatile, &volatile_state));
      ASSERT_EQ(dst->Simple(kCtrlStop), kTpmRcSuccess);
      ASSERT_EQ(dst->SetStateBlob(kBlobPermanent, permanent), kTpmRcSuccess) << b.VtmdLog();
      // The permanent blob is in, the volatile one and INIT not: too early to commit.
      // It records `committing` while it asks the destination, then goes back to `sent`; the
      // source vtmd may die in between (its crash point migrate.source-committing).
      auto early = a.Vtmctl({"migrate", "commit", id, "--activate-only"});
      EXPECT_NE(early.exit_code, 0) << early.output;
      if (crash && crash_source && crash_point == "migrate.source-committing") {
        crashed = true;
        return;
      }
      EXPECT_EQ(LastMigrationOf(a, uuid).second, "sent");
      if (fault_now(Step::kMidTransfer)) return;
      ASSERT_EQ(dst->SetStateBlob(kBlobVolatile, volatile_state), kTpmRcSuccess);
      ASSERT_EQ(dst->Simple(kCtrlInit, {0, 0, 0, 0}), kTpmRcSuccess);
      moved = true;
      if (fault_now(Step::kStateMoved)) return;
      auto activated = a.Vtmctl({"migrate", "commit", id, "--activate-only"});
      if (!done(activated)) return;
      // QMP cont on the destination: the guest reads its value there.
      ASSERT_EQ(dst->NvRead(kNvIndex, secret.size()), secret);
      if (fault_now(Step::kActivated)) return;
      auto committed = a.Vtmctl({"migrate", "commit", id});
      if (!done(committed)) return;
      fault_now(Step::kCommitted);
    }();
    if (HasFatalFailure()) return;
    if (crash) {
      ASSERT_TRUE(crashed) << "no crash at " << crash_point;
      VtmdFixture& dead = crash_source ? a : b;
      dead.WaitVtmdExit();
      dead.SetVtmdEnvironment({});
      ASSERT_TRUE(crash_source ? rig.RestartSource(rig.P("policy.json"), &error, false)
                               : rig.RestartDestination(&error, false))
          << error;
    }

    // The orchestrator's recovery. QEMU's migration completed if the state reached the
    // destination and the destination QEMU lived on to report it (else vtm-live-migrate aborts).
    const bool qemu_completed =
        crash ? moved : step >= Step::kStateMoved && !(step == Step::kStateMoved && victim == Victim::kDestinationQemu);
    auto [id, state] = LastMigrationOf(a, uuid);
    // Only a crash before the source recorded the migration leaves none (its restart put the VM back).
    EXPECT_TRUE(!id.empty() || crash);
    if (state == "sent" && qemu_completed) {
      auto committed = a.Vtmctl({"migrate", "commit", id, "--activate-only"});
      state = LastMigrationOf(a, uuid).second;
      if (committed.exit_code != 0) {
        EXPECT_EQ(state, "sent") << "a refused commit changed something: " << committed.output;
      }
    }
    if (state == "prepared" || state == "sent") {
      auto aborted = a.Vtmctl({"migrate", "abort", id});
      EXPECT_EQ(aborted.exit_code, 0) << aborted.output;
    } else if (state == "committing" || state == "activated") {
      auto committed = a.Vtmctl({"migrate", "commit", id});
      if (committed.exit_code != 0 && state == "committing" && !moved) {
        // The destination cannot take over and the source never fenced: back to `sent` (the
        // docs' recovery), then aborted.
        EXPECT_EQ(LastMigrationOf(a, uuid).second, "sent") << committed.output;
        auto aborted = a.Vtmctl({"migrate", "abort", id});
        EXPECT_EQ(aborted.exit_code, 0) << aborted.output;
      } else {
        EXPECT_EQ(committed.exit_code, 0) << committed.output;
      }
    }
    // Whatever QEMUs are left go (the source's is paused or abandoned, the destination's is
    // checked afresh below).
    src.reset();
    dst.reset();

    // Settled, the same on both sides, and where the docs say.
    const bool expect_destination = crash ? moved
                                          : step >= Step::kActivated || (step == Step::kStateMoved && qemu_completed &&
                                                                         victim != Victim::kDestinationInstance);
    const std::string source_state = LastMigrationOf(a, uuid).second,
                      destination_state = LastMigrationOf(b, uuid).second;
    if (!id.empty()) {
      EXPECT_EQ(source_state, expect_destination ? "committed" : "aborted");
    }
    if (!id.empty() || destination_state != "prepared") {
      EXPECT_EQ(destination_state, source_state);
    }  // else: a prepare the source never recorded, superseded or expired there (docs)
    auto on_a = a.Vtmctl({"show", uuid});
    auto on_b = b.Vtmctl({"show", uuid});
    ASSERT_NE(on_a.exit_code == 0, on_b.exit_code == 0)
        << "source: " << on_a.output << "\ndestination: " << on_b.output;
    const bool there = on_b.exit_code == 0;
    EXPECT_EQ(there, expect_destination);
    VtmdFixture& holder = there ? b : a;
    VtmdFixture& other = there ? a : b;
    const std::string vm_state = Field((there ? on_b : on_a).output, "state");
    const bool victim_was_its_instance =
        !crash && ((there && victim == Victim::kDestinationInstance) || (!there && victim == Victim::kSourceInstance));
    EXPECT_EQ(vm_state, victim_was_its_instance ? "failed" : "running");
    const pid_t recorded = vm_state == "running" ? RecordedInstancePid(holder, uuid) : 0;
    EXPECT_EQ(CheckProcesses(uuid, holder, recorded), vm_state == "running" ? 1u : 0u);
    EXPECT_FALSE(PathExists(other.state_dir() + "/vms/" + uuid));
    EXPECT_EQ(holder.CertificatePublicKeyPem(uuid, "ek-ecc"), ek);

    // Nothing of the state was lost: the vTPM, (re)started where it is, has the value.
    if (vm_state != "running") {
      auto restarted = holder.Vtmctl({"start", uuid});
      ASSERT_EQ(restarted.exit_code, 0) << restarted.output;
    }
    FakeQemu after(Field(holder.Vtmctl({"show", uuid}).output, "tpm socket"));
    ASSERT_TRUE(after.Start(/*init=*/true)) << holder.VtmdLog();
    const uint32_t rc = after.StartupClear();
    EXPECT_TRUE(rc == kTpmRcSuccess || rc == kTpmRcInitialize) << rc;
    EXPECT_EQ(after.NvRead(kNvIndex, secret.size()), secret);
    auto stopped = holder.Vtmctl({"stop", "--force", uuid});
    EXPECT_EQ(stopped.exit_code, 0) << stopped.output;
    std::cerr << "  " << what << ": migration " << (source_state.empty() ? "never recorded" : source_state) << ", VM "
              << vm_state << " on the " << (there ? "destination" : "source") << ", NV value kept\n";
  }

  MigrationRig rig;
};

TEST_F(MigrationLiveFaultTest, EveryVictimAtEveryStep) {
  int n = 0, run = 0;
  for (Step step : kSteps) {
    for (Victim victim : kVictims) {
      if (!Exists(step, victim)) {
        std::cerr << "  " << VictimName(victim) << " " << StepName(step) << ": no such process at this step\n";
        continue;
      }
      RunCase(step, victim, n++);
      ++run;
      if (HasFatalFailure()) return;
    }
  }
  EXPECT_EQ(run, 33);
}

// The vtmds' crash points inside the steps of a live migration (the live-only ones among them,
// e.g. the destination's between its incoming instance's launch and its recording), enumerated
// by a traced run as migration_crash_test does for a cold one; after each crash the dead vtmd
// starts again and the same recovery and checks follow.
TEST_F(MigrationLiveFaultTest, VtmdCrashAtEveryPointOfALiveMigration) {
  int n = 100;
  size_t swept = 0;
  for (bool source : {true, false}) {
    VtmdFixture& side = source ? rig.a : rig.b;
    const std::string trace = rig.P(source ? "trace-a" : "trace-b");
    side.SetVtmdEnvironment({"VTM_CRASH_TRACE=" + trace});
    std::string error;
    ASSERT_TRUE(source ? rig.RestartSource(rig.P("policy.json"), &error) : rig.RestartDestination(&error)) << error;
    ASSERT_TRUE(WriteFileAtomic(trace, "", 0644).ok());
    RunCase(Step::kCommitted, Victim::kSourceQemu, n++);  // a complete migration, traced
    ASSERT_FALSE(HasFatalFailure());
    side.SetVtmdEnvironment({});
    std::vector<std::string> points;
    std::istringstream in(ReadFile(trace).ok() ? *ReadFile(trace) : "");
    for (std::string line; std::getline(in, line);) {
      // The migration's points, not those of the VM's create, start and stop around it (the
      // destination passes some of start's while it launches the incoming instance).
      const bool ours =
          line.rfind("migrate.", 0) == 0 || line.rfind("destroy.", 0) == 0 || (!source && line.rfind("start.", 0) == 0);
      if (ours && std::find(points.begin(), points.end(), line) == points.end()) points.push_back(line);
    }
    ASSERT_GE(points.size(), source ? 5u : 4u);
    for (const std::string& point : points) {
      RunCase(Step::kCommitted, Victim::kSourceQemu, n++, point, source);
      if (HasFatalFailure()) return;
    }
    swept += points.size();
  }
  std::cerr << "crash points swept: " << swept << "\n";
}

}  // namespace
}  // namespace vtm::testing
