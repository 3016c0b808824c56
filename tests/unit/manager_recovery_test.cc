// Manager::Reconcile's recovery of a VM that vtmd left half-way (starting, stopping, deleting,
// defined, or provisioned with its state directory half made) and what a power cut keeps, at
// unit speed: a temp registry, a master key from bytes, no provisioner, and through the Env
// seam a shell stand-in for vtm-instance (StandInInstanceEnv) and injected faults (FaultInjectionEnv). The same
// branches are reached end to end by tests/integration/crash_sweep_test.cc.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>

#include "fault_injection_env.h"
#include "instance.pb.h"
#include "manager.h"
#include "test_env.h"
#include "vtm/framing.h"
#include "vtm/net.h"

namespace vtm {
namespace {

using testing::FaultInjectionEnv;
using testing::StandInInstanceEnv;

// Answers Status on a VM's manager socket as its vtm-instance would, naming `pid`: what
// Reconcile asks when the registry holds no pid it can trust.
class FakeInstanceChannel {
 public:
  FakeInstanceChannel(const std::string& socket_path, pid_t pid) {
    auto listener = ListenUnix(socket_path, 0600);
    EXPECT_TRUE(listener.ok()) << listener.error().ToString();
    if (!listener.ok()) return;
    listener_ = std::move(listener).value();
    thread_ = std::thread([this, pid] {
      for (;;) {
        UniqueFd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (!conn.valid()) return;  // shut down
        if (!ReadFrame(conn.get()).ok()) continue;
        instance_api::InstanceResponse response;
        response.set_ok(true);
        response.mutable_status()->set_pid(pid);
        (void)WriteFrame(conn.get(), response.SerializeAsString());
      }
    });
  }
  ~FakeInstanceChannel() {
    if (!thread_.joinable()) return;
    ::shutdown(listener_.get(), SHUT_RDWR);  // ends the blocked accept
    thread_.join();
  }
  FakeInstanceChannel(const FakeInstanceChannel&) = delete;
  FakeInstanceChannel& operator=(const FakeInstanceChannel&) = delete;

 private:
  UniqueFd listener_;
  std::thread thread_;
};

MasterKey TestMasterKey() {
  SecretBytes k(32);
  for (size_t i = 0; i < k.size(); ++i) k.data()[i] = static_cast<uint8_t>(i);
  return MasterKey::FromBytes(std::move(k));
}

class ManagerRecoveryTest : public ::testing::Test {
 protected:
  ManagerRecoveryTest() : stand_in_(Env::Default()), env_(&stand_in_), master_key_(TestMasterKey()) {}

  void SetUp() override { ASSERT_TRUE(Restart().ok()); }

  void TearDown() override {
    manager_.reset();
    // Stand-ins still running (a test that failed half-way) end with the test; all are
    // children of this process, so each is reaped.
    for (pid_t pid : stand_in_.pids()) {
      // Only while it is an unreaped child (its pid cannot have been reused).
      if (waitpid(pid, nullptr, WNOHANG) != 0) continue;
      ::kill(pid, SIGKILL);
      (void)waitpid(pid, nullptr, 0);
    }
  }

  // vtmd restarted: a new Manager (and registry connection) over the same state, then Reconcile.
  // The old Manager's instances keep running, as they do when vtmd is killed.
  Status Restart() {
    manager_.reset();
    registry_.reset();
    // The state directory exists before any VM (vtmd makes it at its first start, long before).
    VTM_RETURN_IF_ERROR(env_.MakeDir(dir_.path() + "/state", 0711));
    VTM_RETURN_IF_ERROR(env_.SyncDir(dir_.path()));
    // The registry's files go through env_ too: its power cut drops what SQLite did not sync.
    auto registry = Registry::Open(dir_.path() + "/registry.db", &env_);
    if (!registry.ok()) return std::move(registry).error();
    registry_ = std::move(registry).value();
    ManagerConfig config;
    config.state_dir = dir_.path() + "/state";
    config.run_dir = dir_.path() + "/run";
    config.ready_timeout = std::chrono::seconds(10);
    config.stop_grace = std::chrono::seconds(5);
    config.env = manager_env_;
    manager_ = std::make_unique<Manager>(config, *registry_, master_key_, dir_.path() + "/bin/vtm-instance",
                                         /*provisioner=*/nullptr);
    return manager_->Reconcile();
  }

  VmRecord CreateVm(const std::string& name) {
    auto rec = manager_->Create("", name);
    EXPECT_TRUE(rec.ok()) << rec.error().ToString();
    return rec.ok() ? *rec : VmRecord{};
  }

  VmRecord StartVm(const std::string& uuid) {
    auto rec = manager_->Start(uuid);
    EXPECT_TRUE(rec.ok()) << rec.error().ToString();
    return rec.ok() ? *rec : VmRecord{};
  }

  // Puts a VM into `to` as a crash would have left it (one registry transition).
  void Leave(const VmRecord& rec, VmState to, std::optional<int64_t> pid) {
    auto moved = registry_->Transition(rec.uuid, rec.generation, {rec.state}, to, pid);
    ASSERT_TRUE(moved.ok()) << moved.error().ToString();
  }

  VmRecord Get(const std::string& uuid) {
    auto rec = registry_->Get(uuid);
    EXPECT_TRUE(rec.ok()) << rec.error().ToString();
    return rec.ok() ? *rec : VmRecord{};
  }

  bool IsGone(pid_t pid) { return !Env::Default()->ProcessAlive(pid); }

  testing::TempDir dir_;
  StandInInstanceEnv stand_in_;
  FaultInjectionEnv env_;
  Env* manager_env_ = &env_;  // what the Manager is built with
  MasterKey master_key_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<Manager> manager_;
};

// A crash after the instance was spawned and before its pid was recorded leaves `starting` and
// an instance nobody recorded; restart finds it over its manager socket, ends it and records
// the VM stopped.
TEST_F(ManagerRecoveryTest, StartingVmIsStoppedAndItsUnrecordedInstanceEnded) {
  VmRecord rec = CreateVm("caught-starting");
  VmRecord running = StartVm(rec.uuid);
  const auto pid = static_cast<pid_t>(running.instance_pid);
  ASSERT_GT(pid, 0);
  ASSERT_FALSE(IsGone(pid));
  Leave(running, VmState::kStarting, 0);

  {
    FakeInstanceChannel channel(manager_->PathsFor(rec.uuid).manager_socket, pid);
    ASSERT_TRUE(Restart().ok());
  }
  VmRecord after = Get(rec.uuid);
  EXPECT_EQ(after.state, VmState::kStopped);
  EXPECT_EQ(after.instance_pid, 0);
  EXPECT_NE(after.last_error.find("starting"), std::string::npos) << after.last_error;
  EXPECT_TRUE(IsGone(pid)) << "the instance of a VM caught starting was left running";
  // And it starts again, as after a clean stop.
  EXPECT_EQ(StartVm(rec.uuid).state, VmState::kRunning);
  EXPECT_TRUE(manager_->Stop(rec.uuid, /*force=*/true).ok());
}

// A crash after `stopping` was recorded and before the instance was stopped: restart ends the
// instance and records the VM stopped.
TEST_F(ManagerRecoveryTest, StoppingVmIsStoppedAndItsInstanceEnded) {
  VmRecord rec = CreateVm("caught-stopping");
  VmRecord running = StartVm(rec.uuid);
  const auto pid = static_cast<pid_t>(running.instance_pid);
  ASSERT_GT(pid, 0);
  Leave(running, VmState::kStopping, std::nullopt);

  {
    FakeInstanceChannel channel(manager_->PathsFor(rec.uuid).manager_socket, pid);
    ASSERT_TRUE(Restart().ok());
  }
  VmRecord after = Get(rec.uuid);
  EXPECT_EQ(after.state, VmState::kStopped);
  EXPECT_EQ(after.instance_pid, 0);
  EXPECT_NE(after.last_error.find("stopping"), std::string::npos) << after.last_error;
  EXPECT_TRUE(IsGone(pid)) << "the instance of a VM caught stopping was left running";
}

// Caught stopping after the instance had already ended (nothing answers on its socket): the VM
// is recorded stopped all the same, and vtmd starts.
TEST_F(ManagerRecoveryTest, StoppingVmWhoseInstanceIsGoneIsStopped) {
  VmRecord rec = CreateVm("stopping-gone");
  VmRecord running = StartVm(rec.uuid);
  Leave(running, VmState::kStopping, std::nullopt);
  {
    // The instance ends while no vtmd watches it.
    manager_.reset();
    auto fd = Env::Default()->OpenPidFd(static_cast<pid_t>(running.instance_pid));
    ASSERT_TRUE(fd.ok());
    ASSERT_TRUE(Env::Default()->SignalPidFd(fd->get(), SIGKILL).ok());
    ASSERT_EQ(waitpid(static_cast<pid_t>(running.instance_pid), nullptr, 0), running.instance_pid);
  }
  ASSERT_TRUE(Restart().ok());
  EXPECT_EQ(Get(rec.uuid).state, VmState::kStopped);
}

// A delete that failed (or crashed) after `deleting` was recorded is finished at restart: the
// row (with the wrapped keys), the state directory and the run directory are gone, and the
// VM's certificates are revoked.
TEST_F(ManagerRecoveryTest, DeletingVmIsFinished) {
  VmRecord rec = CreateVm("caught-deleting");
  const VmPaths paths = manager_->PathsFor(rec.uuid);
  CertRecord cert;
  cert.vm_uuid = rec.uuid;
  cert.kind = "ak";
  cert.der = "not a certificate";
  auto serial = registry_->NewSerial();
  ASSERT_TRUE(serial.ok());
  cert.serial = *serial;
  ASSERT_TRUE(registry_->AddCertificates({cert}).ok());
  env_.FailOperation("RemoveTree", paths.vm_dir, 1);
  Status deleted = manager_->Delete(rec.uuid);
  ASSERT_FALSE(deleted.ok());
  ASSERT_EQ(env_.injected_failures(), 1);
  ASSERT_EQ(Get(rec.uuid).state, VmState::kDeleting);
  ASSERT_TRUE(env_.PathExists(paths.vm_dir));

  ASSERT_TRUE(Restart().ok());
  auto after = registry_->Get(rec.uuid);
  ASSERT_FALSE(after.ok());
  EXPECT_EQ(after.error().code(), ErrorCode::kNotFound);
  EXPECT_FALSE(env_.PathExists(paths.vm_dir));
  EXPECT_FALSE(env_.PathExists(paths.run_dir));
  auto certs = registry_->CertificatesOf(rec.uuid);
  ASSERT_TRUE(certs.ok());
  ASSERT_EQ(certs->size(), 1u);
  EXPECT_FALSE(certs->front().revoked_at.empty());
}

// A create that stopped before `provisioned` (here: its directories could not be made and the
// undo failed too) is undone at restart, so a half-made vTPM is never started.
TEST_F(ManagerRecoveryTest, DefinedVmIsUndone) {
  env_.FailOperation("MakeDir", "/log", 1);
  env_.FailOperation("RemoveTree", "/state/vms/", 1);
  auto created = manager_->Create("", "caught-defined");
  ASSERT_FALSE(created.ok());
  ASSERT_EQ(env_.injected_failures(), 2);
  auto list = registry_->List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  const VmRecord rec = list->front();
  ASSERT_EQ(rec.state, VmState::kDefined);
  const VmPaths paths = manager_->PathsFor(rec.uuid);
  ASSERT_TRUE(env_.PathExists(paths.tpm_dir));

  ASSERT_TRUE(Restart().ok());
  auto after = registry_->Get(rec.uuid);
  ASSERT_FALSE(after.ok());
  EXPECT_EQ(after.error().code(), ErrorCode::kNotFound);
  EXPECT_FALSE(env_.PathExists(paths.vm_dir));
  // The name is free again.
  EXPECT_EQ(CreateVm("caught-defined").state, VmState::kProvisioned);
}

// A provisioned VM whose state directory is half there (its tpm and log directories gone, as an
// earlier vtmd that did not sync the directories it made could leave them after a power cut):
// Reconcile leaves it provisioned and Start makes its directories again.
TEST_F(ManagerRecoveryTest, ProvisionedVmWithAHalfMadeStateDirectoryStartsAgain) {
  VmRecord rec = CreateVm("half-made");
  const VmPaths paths = manager_->PathsFor(rec.uuid);
  manager_.reset();
  ASSERT_TRUE(env_.RemoveTree(paths.tpm_dir).ok());
  ASSERT_TRUE(env_.RemoveTree(paths.log_dir).ok());

  ASSERT_TRUE(Restart().ok());
  EXPECT_EQ(Get(rec.uuid).state, VmState::kProvisioned);
  VmRecord running = StartVm(rec.uuid);
  EXPECT_EQ(running.state, VmState::kRunning);
  EXPECT_TRUE(env_.PathExists(paths.tpm_dir));
  EXPECT_TRUE(env_.PathExists(paths.log_dir + "/instance.log"));
  EXPECT_TRUE(manager_->Stop(rec.uuid, /*force=*/true).ok());
  EXPECT_TRUE(IsGone(static_cast<pid_t>(running.instance_pid)));
}

// A power cut right after a create keeps the VM's state directory: the registry row is synced
// (SQLite), so the directory's name must be too, or the VM would be provisioned without it.
TEST_F(ManagerRecoveryTest, CreatedVmKeepsItsStateDirectoryThroughAPowerCut) {
  VmRecord rec = CreateVm("power-cut");
  const VmPaths paths = manager_->PathsFor(rec.uuid);
  for (const std::string& dir : env_.UnsyncedDirectories()) {
    EXPECT_NE(dir.rfind(dir_.path() + "/state", 0), 0u) << dir << " would be lost by a power cut";
  }
  manager_.reset();
  registry_.reset();
  ASSERT_TRUE(env_.DropUnsyncedData().ok());  // the power cut
  EXPECT_TRUE(env_.PathExists(paths.tpm_dir));
  EXPECT_TRUE(env_.PathExists(paths.log_dir));
  ASSERT_TRUE(Restart().ok());
  EXPECT_EQ(Get(rec.uuid).state, VmState::kProvisioned);
}

// A power cut after a delete does not bring the VM's state directory back: the registry row is
// gone for good (SQLite), so the directory's removal must be durable before it.
TEST_F(ManagerRecoveryTest, DeletedVmStaysDeletedThroughAPowerCut) {
  VmRecord rec = CreateVm("deleted");
  const VmPaths paths = manager_->PathsFor(rec.uuid);
  ASSERT_TRUE(manager_->Delete(rec.uuid).ok());
  manager_.reset();
  registry_.reset();
  ASSERT_TRUE(env_.DropUnsyncedData().ok());  // the power cut
  EXPECT_FALSE(env_.PathExists(paths.vm_dir)) << "a state directory came back that no registry row owns";
  ASSERT_TRUE(Restart().ok());
  EXPECT_FALSE(registry_->Get(rec.uuid).ok());
}

// The vTPM state a cold migration wrote is what the destination commits to; after the commit
// the source destroys its copy. A power cut after the commit must not lose it here.
TEST_F(ManagerRecoveryTest, ColdMigratedStateSurvivesAPowerCutAfterTheCommit) {
  IncomingVm vm;
  vm.uuid = "6f1c0a52-5a4e-4d2b-9f57-3c1f2d9b7e10";
  vm.name = "arrives-cold";
  vm.generation = 7;
  vm.keys.state_key = SecretBytes(32);
  vm.keys.migration_key = SecretBytes(32);
  vm.state_files = {{"tpm2-00.permall", "permanent state"}, {"tpm2-00.volatilestate", "volatile"}};
  vm.migration_id = "m-1";
  auto received = manager_->ReceiveIncoming(vm);
  ASSERT_TRUE(received.ok()) << received.error().ToString();
  // The migration engine's record of it, as its receive step leaves it.
  MigrationRecord migration;
  migration.id = vm.migration_id;
  migration.vm_uuid = vm.uuid;
  migration.role = "destination";
  migration.mode = "cold";
  migration.peer = "source";
  migration.state = "received";
  migration.generation = vm.generation;
  ASSERT_TRUE(registry_->InsertMigration(&migration).ok());
  auto committed = manager_->CommitIncoming(vm.uuid, /*live=*/false, vm.migration_id);
  ASSERT_TRUE(committed.ok()) << committed.error().ToString();
  ASSERT_EQ(committed->state, VmState::kStopped);

  manager_.reset();
  registry_.reset();
  ASSERT_TRUE(env_.DropUnsyncedData().ok());  // the power cut
  ASSERT_TRUE(Restart().ok());
  EXPECT_EQ(Get(vm.uuid).state, VmState::kStopped);
  auto state = manager_->ReadTpmState(vm.uuid);
  ASSERT_TRUE(state.ok()) << state.error().ToString();
  EXPECT_EQ(*state, vm.state_files);
}

// A running VM whose instance survived the restart is adopted (watched, stoppable); one whose
// instance died meanwhile is marked failed.
TEST_F(ManagerRecoveryTest, RunningVmIsAdoptedOrMarkedFailed) {
  VmRecord alive = StartVm(CreateVm("survives").uuid);
  VmRecord dies = StartVm(CreateVm("dies").uuid);
  manager_.reset();
  auto fd = Env::Default()->OpenPidFd(static_cast<pid_t>(dies.instance_pid));
  ASSERT_TRUE(fd.ok());
  ASSERT_TRUE(Env::Default()->SignalPidFd(fd->get(), SIGKILL).ok());
  ASSERT_EQ(waitpid(static_cast<pid_t>(dies.instance_pid), nullptr, 0), dies.instance_pid);

  ASSERT_TRUE(Restart().ok());
  EXPECT_EQ(Get(alive.uuid).state, VmState::kRunning);
  EXPECT_EQ(Get(dies.uuid).state, VmState::kFailed);
  auto stopped = manager_->Stop(alive.uuid, /*force=*/true);
  ASSERT_TRUE(stopped.ok()) << stopped.error().ToString();
  EXPECT_TRUE(IsGone(static_cast<pid_t>(alive.instance_pid)));
}

// A start whose instance cannot be launched records the VM failed, with the reason, and leaves
// nothing running; a later start succeeds.
TEST_F(ManagerRecoveryTest, StartThatCannotLaunchLeavesTheVmFailed) {
  VmRecord rec = CreateVm("cannot-launch");
  env_.FailOperation("Spawn", "vtm-instance", 1);
  auto started = manager_->Start(rec.uuid);
  ASSERT_FALSE(started.ok());
  VmRecord after = Get(rec.uuid);
  EXPECT_EQ(after.state, VmState::kFailed);
  EXPECT_NE(after.last_error.find("injected failure"), std::string::npos) << after.last_error;
  EXPECT_TRUE(stand_in_.pids().empty());
  EXPECT_EQ(StartVm(rec.uuid).state, VmState::kRunning);
  EXPECT_TRUE(manager_->Stop(rec.uuid, /*force=*/true).ok());
}

// The supervisor's readiness deadline runs on the Env's clock: a clock that jumps an hour at
// every reading makes the wait time out at once, and the instance that was spawned is ended.
TEST_F(ManagerRecoveryTest, ReadinessDeadlineRunsOnTheEnvClock) {
  class JumpingClock : public EnvWrapper {
   public:
    using EnvWrapper::EnvWrapper;
    std::chrono::steady_clock::time_point SteadyNow() override {
      return EnvWrapper::SteadyNow() + std::chrono::hours(++readings_);
    }

   private:
    std::atomic<int> readings_{0};
  };
  JumpingClock clock(&env_);
  manager_env_ = &clock;
  ASSERT_TRUE(Restart().ok());
  VmRecord rec = CreateVm("slow-instance");
  auto started = manager_->Start(rec.uuid);
  ASSERT_FALSE(started.ok());
  EXPECT_NE(started.error().message().find("did not become ready"), std::string::npos) << started.error().message();
  EXPECT_EQ(Get(rec.uuid).state, VmState::kFailed);
  ASSERT_EQ(stand_in_.pids().size(), 1u);
  EXPECT_TRUE(IsGone(stand_in_.pids().front()));
  manager_.reset();  // before the clock it uses
}

// The fault-injecting Env itself: what a power cut keeps and what it drops.
TEST(FaultInjectionEnvTest, PowerCutDropsDirectoriesWhoseNamesWereNotSynced) {
  testing::TempDir dir;
  FaultInjectionEnv env;
  const std::string root = dir.path();
  ASSERT_TRUE(env.MakeDir(root + "/half/deep", 0700).ok());
  ASSERT_TRUE(env.WriteFileAtomic(root + "/half/deep/file", "x", 0600).ok());  // syncs deep, not half
  ASSERT_TRUE(env.MakeDir(root + "/kept/child", 0700).ok());
  ASSERT_TRUE(env.WriteFileAtomic(root + "/marker", "x", 0600).ok());     // syncs root: names half, kept
  ASSERT_TRUE(env.MakeDir(root + "/late", 0700).ok());                    // after the last sync of root
  ASSERT_TRUE(env.WriteFileAtomic(root + "/kept/file", "y", 0600).ok());  // syncs kept: names child

  ASSERT_TRUE(env.DropUnsyncedData().ok());
  // half survives, but deep's name in half was never synced: deep goes, its synced file with it.
  EXPECT_TRUE(env.PathExists(root + "/half"));
  EXPECT_FALSE(env.PathExists(root + "/half/deep"));
  EXPECT_TRUE(env.PathExists(root + "/kept/child"));
  EXPECT_TRUE(env.PathExists(root + "/kept/file"));
  EXPECT_TRUE(env.PathExists(root + "/marker"));
  EXPECT_FALSE(env.PathExists(root + "/late"));
  EXPECT_TRUE(env.UnsyncedDirectories().empty());
}

TEST(FaultInjectionEnvTest, PowerCutBringsBackTreesWhoseRemovalWasNotSynced) {
  testing::TempDir dir;
  FaultInjectionEnv env;
  const std::string root = dir.path();
  ASSERT_TRUE(env.MakeDir(root + "/a/sub", 0700).ok());
  ASSERT_TRUE(env.WriteFileAtomic(root + "/a/sub/f", "data", 0600).ok());
  ASSERT_TRUE(env.MakeDir(root + "/b", 0700).ok());
  ASSERT_TRUE(env.SyncDir(root).ok());
  ASSERT_TRUE(env.SyncDir(root + "/a").ok());
  ASSERT_TRUE(env.RemoveTree(root + "/a").ok());  // not synced: comes back
  ASSERT_TRUE(env.RemoveTree(root + "/b").ok());
  ASSERT_TRUE(env.SyncDir(root).ok());  // both removals durable now
  ASSERT_TRUE(env.MakeDir(root + "/c", 0700).ok());
  ASSERT_TRUE(env.SyncDir(root).ok());
  ASSERT_TRUE(env.RemoveTree(root + "/c").ok());  // not synced: comes back

  ASSERT_TRUE(env.DropUnsyncedData().ok());
  EXPECT_FALSE(env.PathExists(root + "/a"));
  EXPECT_FALSE(env.PathExists(root + "/b"));
  EXPECT_TRUE(env.PathExists(root + "/c"));
}

TEST(FaultInjectionEnvTest, RemovedFileTreeIsRestoredWithItsContents) {
  testing::TempDir dir;
  FaultInjectionEnv env;
  const std::string root = dir.path();
  ASSERT_TRUE(env.MakeDir(root + "/vm/tpm", 0700).ok());
  ASSERT_TRUE(env.WriteFileAtomic(root + "/vm/tpm/state", "permanent", 0600).ok());
  ASSERT_TRUE(env.SyncDir(root).ok());
  ASSERT_TRUE(env.SyncDir(root + "/vm").ok());
  ASSERT_TRUE(env.RemoveTree(root + "/vm").ok());
  ASSERT_TRUE(env.DropUnsyncedData().ok());
  auto state = env.ReadFile(root + "/vm/tpm/state");
  ASSERT_TRUE(state.ok()) << state.error().ToString();
  EXPECT_EQ(*state, "permanent");
}

TEST(FaultInjectionEnvTest, InjectedFailuresChangeNothingAndAreCounted) {
  testing::TempDir dir;
  FaultInjectionEnv env;
  const std::string file = dir.path() + "/f";
  env.FailOperation("WriteFileAtomic", "/f", 1);
  Status failed = env.WriteFileAtomic(file, "x", 0600);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.error().code(), ErrorCode::kIo);
  EXPECT_FALSE(env.PathExists(file));
  EXPECT_TRUE(env.WriteFileAtomic(file, "x", 0600).ok());  // once only
  EXPECT_EQ(env.injected_failures(), 1);
  env.FailOperation("RemoveFile", "/f");
  EXPECT_FALSE(env.RemoveFile(file).ok());
  EXPECT_FALSE(env.RemoveFile(file).ok());
  env.ClearFailures();
  EXPECT_TRUE(env.RemoveFile(file).ok());
  EXPECT_FALSE(env.PathExists(file));
}

}  // namespace
}  // namespace vtm
