// Rollback protection against a real vtmd and a simulated host TPM: the registry is anchored to
// an NV counter in the host TPM (read here with tpm2-tools), so an older copy of the registry
// or an edited one is refused at start with what to do, a kill between a commit and its
// increment recovers, --accept-registry-rollback re-anchors; an older copy of one VM's state
// directory stops that VM's start only, until --accept-vm-state-rollback.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <vector>

#include "test_env.h"
#include "vtm/fs.h"
#include "vtm/subprocess.h"
#include "vtm/tpm.h"
#include "vtmd_fixture.h"

namespace vtm::testing {
namespace {

namespace fs = std::filesystem;

constexpr const char* kIndex = "0x01800a7d";
constexpr const char* kA = "3f1c2a3b-0000-4000-8000-00000000000a";
constexpr const char* kB = "3f1c2a3b-0000-4000-8000-00000000000b";
constexpr const char* kC = "3f1c2a3b-0000-4000-8000-00000000000c";

class RollbackTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (HasFailure()) std::cerr << "---- vtmd log ----\n" << f.VtmdLog();
  }
  std::string db() const { return f.state_dir() + "/registry.db"; }

  // The counter as tpm2_nvread reads it with owner auth (TPMA_NV_OWNERREAD); -1 on failure.
  int64_t NvCounter() {
    const std::string out = f.state_dir() + "/../nv-counter.bin";
    auto read = RunCommand({"env", "TPM2TOOLS_TCTI=" + f.host_tcti(), "tpm2_nvread", "-C", "o", "-o", out, kIndex});
    EXPECT_EQ(read.exit_code, 0) << read.output;
    auto bytes = ReadFile(out);
    if (read.exit_code != 0 || !bytes.ok() || bytes->size() != 8) return -1;
    uint64_t v = 0;
    for (unsigned char c : *bytes) v = (v << 8) | c;
    return static_cast<int64_t>(v);
  }
  // The registry's epoch, read with the sqlite3 tool (vtmd stopped).
  int64_t RegistryEpoch() {
    auto q = RunCommand({"sqlite3", db(), "SELECT value FROM meta WHERE key='anchor_epoch'"});
    EXPECT_EQ(q.exit_code, 0) << q.output;
    return q.exit_code == 0 ? std::stoll(q.output) : -1;
  }
  // A copy of the registry (vtmd stopped: SQLite checkpointed its WAL at close).
  void CopyRegistry(const std::string& to) {
    ASSERT_FALSE(fs::exists(db() + "-wal")) << "vtmd left a WAL behind";
    fs::copy_file(db(), to, fs::copy_options::overwrite_existing);
  }

  VtmdFixture f;
};

TEST_F(RollbackTest, CounterIsDefinedInTheHostTpmAndFollowsEveryWrite) {
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  auto pub = RunCommand({"env", "TPM2TOOLS_TCTI=" + f.host_tcti(), "tpm2_nvreadpublic", kIndex});
  ASSERT_EQ(pub.exit_code, 0) << pub.output;
  for (const char* attribute : {"authwrite", "authread", "ownerread", "no_da", "written", "nt=0x1"}) {
    EXPECT_NE(pub.output.find(attribute), std::string::npos) << attribute << " missing:\n" << pub.output;
  }
  EXPECT_EQ(pub.output.find("orderly"), std::string::npos) << pub.output;
  EXPECT_NE(f.VtmdLog().find("registry anchored to the host TPM's NV counter 0x01800a7d"), std::string::npos);
  const int64_t before = NvCounter();
  ASSERT_GT(before, 0);
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kA, "--name", "a"}).exit_code, 0);
  const int64_t after = NvCounter();
  EXPECT_GT(after, before) << "create commits several transitions, each one increment";
  // Without the master key's auth value nobody else moves it.
  auto inc = RunCommand({"env", "TPM2TOOLS_TCTI=" + f.host_tcti(), "tpm2_nvincrement", "-C", kIndex, kIndex});
  EXPECT_NE(inc.exit_code, 0) << inc.output;
  // Costs: increments per operation, and one increment's time on this host TPM.
  int64_t last = after;
  for (const char* op : {"start", "stop"}) {
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_EQ(f.Vtmctl({op, "a"}).exit_code, 0);
    const auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const int64_t now = NvCounter();
    std::cerr << "cost: vtmctl " << op << ": " << (now - last) << " NV increments, " << ms << " ms in all\n";
    last = now;
  }
  std::cerr << "cost: vtmctl create: " << (after - before) << " NV increments\n";
  f.StopVtmd();
  // The counter follows each commit from vtmd's counter thread, so a read right after a
  // command may be one behind; once vtmd has closed the registry the two are equal.
  EXPECT_GE(RegistryEpoch(), last);
  EXPECT_LE(RegistryEpoch(), last + 1);
  EXPECT_EQ(NvCounter(), RegistryEpoch());

  auto tpm = Tpm::OpenTcti(f.host_tcti());
  ASSERT_TRUE(tpm.ok()) << tpm.error().ToString();
  SecretBytes auth(32);
  constexpr uint32_t kScratch = 0x01800a7e;
  ASSERT_TRUE((*tpm)->DefineNvCounter(kScratch, auth).ok());
  constexpr int kRounds = 200;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kRounds; ++i) ASSERT_TRUE((*tpm)->IncrementNvCounter(kScratch, auth).ok());
  const auto us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / kRounds;
  const auto t1 = std::chrono::steady_clock::now();
  for (int i = 0; i < kRounds; ++i) ASSERT_TRUE((*tpm)->ReadNvCounter(kScratch, auth).ok());
  const auto read_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t1).count() / kRounds;
  std::cerr << "cost: one ReadNvCounter (the same look-ups, TPM2_NV_Read instead of the increment): " << read_us
            << " us\n";
  auto value = (*tpm)->ReadNvCounter(kScratch, auth);
  ASSERT_TRUE(value.ok() && value->has_value());
  std::cerr << "cost: one TPM2_NV_Increment (with its ReadPublic and GetCapability) on the simulated host TPM: " << us
            << " us\n";
  const std::vector<uint8_t> other(32, 1);
  auto wrong = (*tpm)->IncrementNvCounter(kScratch, SecretBytes(other.data(), other.size()));
  EXPECT_FALSE(wrong.ok());
  tpm->reset();

  // The owner undefines the counter: vtmd defines a new one, which the TPM starts above the
  // value of the one undefined (so this does not reopen a rollback), and refuses the anchored
  // registry until the operator accepts it.
  auto undefine = RunCommand({"env", "TPM2TOOLS_TCTI=" + f.host_tcti(), "tpm2_nvundefine", "-C", "o", kIndex});
  ASSERT_EQ(undefine.exit_code, 0) << undefine.output;
  auto refused = f.RunVtmdExpectingExit();
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("did not exist (it was undefined, or the host TPM was cleared)"), std::string::npos)
      << refused.output;
  EXPECT_GT(NvCounter(), last) << "a re-defined counter went back";
  ASSERT_TRUE(f.StartVtmd({"--accept-registry-rollback"})) << f.VtmdLog();
  EXPECT_EQ(f.Vtmctl({"show", "a"}).exit_code, 0);
}

TEST_F(RollbackTest, OlderRegistryCopyIsRefusedAndAcceptRecovers) {
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kA, "--name", "a"}).exit_code, 0);
  f.StopVtmd();
  const std::string backup = f.state_dir() + "/../registry-backup.db";
  CopyRegistry(backup);
  const int64_t old_epoch = RegistryEpoch();

  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kB, "--name", "b"}).exit_code, 0);
  ASSERT_EQ(f.Vtmctl({"delete", "a"}).exit_code, 0);
  f.StopVtmd();
  fs::copy_file(backup, db(), fs::copy_options::overwrite_existing);

  auto refused = f.RunVtmdExpectingExit();
  EXPECT_NE(refused.exit_code, 0);
  const std::string expected = "is an older copy: its epoch is " + std::to_string(old_epoch) +
                               " but the host TPM's NV counter 0x01800a7d is at " + std::to_string(NvCounter());
  EXPECT_NE(refused.output.find(expected), std::string::npos) << refused.output;
  EXPECT_NE(refused.output.find("--accept-registry-rollback"), std::string::npos) << refused.output;

  // The operator's deliberate recovery: accept the copy, loudly; later starts are ordinary.
  ASSERT_TRUE(f.StartVtmd({"--accept-registry-rollback"})) << f.VtmdLog();
  EXPECT_NE(f.VtmdLog().find("ACCEPTED A REFUSED REGISTRY"), std::string::npos) << f.VtmdLog();
  EXPECT_EQ(f.Vtmctl({"show", "a"}).exit_code, 0) << "the copy's VM is back";
  EXPECT_NE(f.Vtmctl({"show", "b"}).exit_code, 0);
  // (b's state directory, made after the copy, is still there: the operator guide says so.)
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kC, "--name", "c"}).exit_code, 0);
  f.StopVtmd();
  EXPECT_EQ(RegistryEpoch(), NvCounter());
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
}

TEST_F(RollbackTest, EditedRegistryIsRefused) {
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kA, "--name", "a"}).exit_code, 0);
  f.StopVtmd();
  auto edit = RunCommand({"sqlite3", db(), "UPDATE vms SET generation = generation + 1"});
  ASSERT_EQ(edit.exit_code, 0) << edit.output;
  auto refused = f.RunVtmdExpectingExit();
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("was changed outside vtmd"), std::string::npos) << refused.output;
  auto undo = RunCommand({"sqlite3", db(), "UPDATE vms SET generation = generation - 1"});
  ASSERT_EQ(undo.exit_code, 0) << undo.output;
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
}

TEST_F(RollbackTest, KillBetweenCommitAndIncrementRecovers) {
  f.SetVtmdEnvironment({"VTM_CRASH_AT=registry.committed-before-counter"});
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  const int64_t before = NvCounter();
  auto created = f.Vtmctl({"create", "--uuid", kA, "--name", "a"});
  EXPECT_NE(created.exit_code, 0) << created.output;
  int st = f.WaitVtmdExit();
  ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << DescribeWaitStatus(st);
  EXPECT_EQ(NvCounter(), before);
  EXPECT_EQ(RegistryEpoch(), before + 1) << "committed, not yet counted";

  f.SetVtmdEnvironment({});
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  EXPECT_NE(f.VtmdLog().find("not yet incremented: incremented it now"), std::string::npos) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kB, "--name", "b"}).exit_code, 0);
  f.StopVtmd();
  EXPECT_EQ(RegistryEpoch(), NvCounter());
}

TEST_F(RollbackTest, OlderVmStateIsRefusedForThatVmOnly) {
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kA, "--name", "a"}).exit_code, 0);
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kB, "--name", "b"}).exit_code, 0);
  const std::string tpm_dir = f.state_dir() + "/vms/" + kA + "/tpm";
  const std::string backup = f.state_dir() + "/../a-tpm-backup";
  fs::copy(tpm_dir, backup, fs::copy_options::recursive);
  // The state moves on: a start and a clean stop (swtpm rewrites its state files).
  ASSERT_EQ(f.Vtmctl({"start", "a"}).exit_code, 0);
  ASSERT_EQ(f.Vtmctl({"stop", "a"}).exit_code, 0);
  bool differs = false;
  for (const auto& e : fs::directory_iterator(backup)) {
    auto now = ReadFile(tpm_dir + "/" + e.path().filename().string());
    auto then = ReadFile(e.path().string());
    differs = differs || !now.ok() || !then.ok() || *now != *then;
  }
  if (!differs) {
    // Nothing rewrote the state: play the older copy by changing the backup's permanent state.
    auto permall = ReadFile(backup + "/tpm2-00.permall");
    ASSERT_TRUE(permall.ok());
    std::string older = *permall;
    older.back() = static_cast<char>(older.back() ^ 1);
    ASSERT_TRUE(WriteFileAtomic(backup + "/tpm2-00.permall", older, 0600).ok());
    std::cerr << "note: a start and stop left the state files unchanged; the older copy is simulated\n";
  }
  for (const auto& e : fs::directory_iterator(backup)) {
    fs::copy_file(e.path(), tpm_dir + "/" + e.path().filename().string(), fs::copy_options::overwrite_existing);
  }

  auto refused = f.Vtmctl({"start", "a"});
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("is not the state vtmd recorded when it was last at rest"), std::string::npos)
      << refused.output;
  EXPECT_NE(refused.output.find("--accept-vm-state-rollback " + std::string(kA)), std::string::npos) << refused.output;
  EXPECT_EQ(Field(f.Vtmctl({"show", "a"}).output, "state"), "stopped");
  ASSERT_EQ(f.Vtmctl({"start", "b"}).exit_code, 0) << "another VM is not affected";
  ASSERT_EQ(f.Vtmctl({"stop", "b"}).exit_code, 0);

  // The operator accepts the older state deliberately.
  f.StopVtmd();
  ASSERT_TRUE(f.StartVtmd({"--accept-vm-state-rollback", kA})) << f.VtmdLog();
  EXPECT_NE(f.VtmdLog().find("ACCEPTED the vTPM state of VM " + std::string(kA)), std::string::npos);
  auto started = f.Vtmctl({"start", "a"});
  EXPECT_EQ(started.exit_code, 0) << started.output;
  ASSERT_EQ(f.Vtmctl({"stop", "a"}).exit_code, 0);
}

}  // namespace
}  // namespace vtm::testing
