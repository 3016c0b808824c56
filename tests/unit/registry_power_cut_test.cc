// The registry's SQLite files behind the Env (sqlite_env_vfs.h), under the real SQLite and a
// FaultInjectionEnv: a power cut right after each sync point of a sequence of registry writes
// (every one, enumerated), or right after each write returned, leaves a registry that passes
// integrity_check, holds exactly the writes that returned (none torn) and is not behind the
// rollback counter; a failed write or fsync of each of the sequence's writes and syncs is a
// clean error that leaves the previous content; a power cut during a first open leaves a
// registry that opens.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "fault_injection_env.h"
#include "registry.h"
#include "test_env.h"

namespace vtm {
namespace {

using testing::FaultInjectionEnv;

// The host TPM's NV counter: it survives the power cut. Atomic: the registry's counter thread
// increments it.
class FakeCounter final : public MonotonicCounter {
 public:
  Result<uint64_t> Read() override { return value.load(); }
  Status Increment() override {
    ++value;
    return OkStatus();
  }
  std::string Describe() const override { return "the fake counter"; }
  std::atomic<uint64_t> value{7};
};

// A Result's error, or OK.
template <typename T>
Status StatusOf(const Result<T>& r) {
  if (r.ok()) return OkStatus();
  return r.error();
}

SecretBytes MacKey() {
  SecretBytes key(32);
  std::fill(key.data(), key.data() + key.size(), uint8_t{0x5a});
  return key;
}

constexpr const char* kA = "00000000-0000-4000-8000-00000000000a";
constexpr const char* kB = "00000000-0000-4000-8000-00000000000b";
constexpr const char* kC = "00000000-0000-4000-8000-00000000000c";

VmRecord NewVm(const std::string& uuid, const std::string& name) {
  VmRecord r;
  r.uuid = uuid;
  r.name = name;
  r.wrapped_state_key = std::string(60, 's');
  r.wrapped_migration_key = std::string(60, 'm');
  return r;
}

CertRecord Cert(uint64_t serial, const std::string& uuid, const std::string& kind) {
  CertRecord c;
  c.serial = serial;
  c.vm_uuid = uuid;
  c.kind = kind;
  c.der = std::string(700, static_cast<char>('a' + serial % 26));
  c.issued_at = "2026-12-01T00:00:00Z";
  return c;
}

// What a reader sees (without timestamps), one line per VM, certificate and migration, sorted.
std::string Dump(Registry& reg) {
  std::vector<std::string> lines;
  auto vms = reg.List();
  if (!vms.ok()) return "List: " + vms.error().ToString();
  for (const VmRecord& r : *vms) {
    lines.push_back("vm " + r.uuid + " " + r.name + " " + VmStateName(r.state) + " g" + std::to_string(r.generation) +
                    " uid" + std::to_string(r.instance_uid) + " sha " + r.state_sha256);
  }
  for (const char* uuid : {kA, kB, kC}) {
    auto certs = reg.CertificatesOf(uuid);
    if (!certs.ok()) return "CertificatesOf: " + certs.error().ToString();
    for (const CertRecord& c : *certs) {
      lines.push_back("cert " + std::to_string(c.serial) + " " + c.kind + (c.revoked_at.empty() ? "" : " revoked"));
    }
  }
  auto migrations = reg.ListMigrations();
  if (!migrations.ok()) return "ListMigrations: " + migrations.error().ToString();
  for (const MigrationRecord& m : *migrations) lines.push_back("migration " + m.id + " " + m.state);
  std::sort(lines.begin(), lines.end());
  std::string out;
  for (const std::string& line : lines) out += line + "\n";
  return out;
}

// PRAGMA integrity_check through SQLite's own VFS.
std::string IntegrityCheck(const std::string& db) {
  sqlite3* h = nullptr;
  if (sqlite3_open_v2(db.c_str(), &h, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
    sqlite3_close(h);
    return "cannot open";
  }
  std::string result;
  auto collect = [](void* out, int n, char** values, char**) {
    for (int i = 0; i < n; ++i) *static_cast<std::string*>(out) += values[i] ? values[i] : "NULL";
    return 0;
  };
  if (sqlite3_exec(h, "PRAGMA integrity_check", collect, &result, nullptr) != SQLITE_OK) result = sqlite3_errmsg(h);
  sqlite3_close(h);
  return result;
}

class RegistryPowerCutTest : public ::testing::Test {
 protected:
  // One registry write, or a close and reopen (a checkpoint, then SQLite's recovery).
  struct Step {
    std::string what;
    std::function<Status(RegistryPowerCutTest&)> run;
  };

  // A registry anchored at the counter, holding VM A, closed (so checkpointed): every run
  // starts from a copy of it.
  void SetUp() override {
    auto reg = OpenAnchored(template_dir_.path(), Env::Default(), /*counter_is_new=*/true);
    ASSERT_TRUE(reg.ok()) << reg.error().ToString();
    VmRecord a = NewVm(kA, "a");
    ASSERT_TRUE((*reg)->Insert(&a, 1000, 100).ok());
    template_counter_ = counter_.value;
    reg->reset();
    ASSERT_FALSE(std::filesystem::exists(template_dir_.path() + "/r.db-wal"));
    steps_ = {
        {"insert B",
         [](RegistryPowerCutTest& t) {
           VmRecord b = NewVm(kB, "b");
           return t.reg_->Insert(&b, 1000, 100);
         }},
        {"transition A",
         [](RegistryPowerCutTest& t) {
           return StatusOf(t.reg_->Transition(kA, 1, {VmState::kProvisioned}, VmState::kStopped, 0, "", "digest-a"));
         }},
        {"certificates of B",
         [](RegistryPowerCutTest& t) {
           return t.reg_->AddCertificates({Cert(11, kB, "ek-ecc"), Cert(12, kB, "ak")});
         }},
        {"reopen", [](RegistryPowerCutTest& t) { return t.Reopen(); }},
        {"insert C",
         [](RegistryPowerCutTest& t) {
           VmRecord c = NewVm(kC, "c");
           return t.reg_->Insert(&c, 1000, 100);
         }},
        {"migration of A",
         [](RegistryPowerCutTest& t) {
           MigrationRecord m;
           m.id = "m1";
           m.vm_uuid = kA;
           m.role = "source";
           m.mode = "cold";
           m.peer = "peer:1";
           m.state = "preparing";
           m.generation = 2;
           m.prepared = std::string(3000, 'p');  // more than a page
           return t.reg_->InsertMigration(&m);
         }},
        {"remove B", [](RegistryPowerCutTest& t) { return t.reg_->Remove(kB, 1); }},
        {"revoke B's certificates", [](RegistryPowerCutTest& t) { return StatusOf(t.reg_->RevokeCertificatesOf(kB)); }},
        {"reopen", [](RegistryPowerCutTest& t) { return t.Reopen(); }},
        {"transition C",
         [](RegistryPowerCutTest& t) {
           return StatusOf(t.reg_->Transition(kC, 1, {VmState::kProvisioned}, VmState::kStopped, 0, "", "digest-c"));
         }},
        {"close",
         [](RegistryPowerCutTest& t) {
           t.reg_.reset();  // a last checkpoint
           return OkStatus();
         }},
    };
    // What a reader sees before any step and after each, without faults.
    ASSERT_NO_FATAL_FAILURE(StartRun(/*faulty=*/false));
    expected_.push_back(Seen());
    for (const Step& step : steps_) {
      Status st = step.run(*this);
      ASSERT_TRUE(st.ok()) << step.what << ": " << st.error().ToString();
      expected_.push_back(Seen());
    }
    ASSERT_EQ(expected_.back(), kClosed);
  }

  static constexpr const char* kClosed = "(closed)";
  std::string Seen() { return reg_ != nullptr ? Dump(*reg_) : kClosed; }

  std::string db() const { return run_dir_->path() + "/r.db"; }

  Result<std::unique_ptr<Registry>> OpenAnchored(const std::string& dir, Env* env, bool counter_is_new,
                                                 AnchorReport* report = nullptr) {
    VTM_ASSIGN_OR_RETURN(auto reg, Registry::Open(dir + "/r.db", env));
    VTM_ASSIGN_OR_RETURN(AnchorReport r, reg->Anchor(MacKey(), &counter_, counter_is_new, /*accept_rollback=*/false));
    if (report != nullptr) *report = r;
    return reg;
  }

  // A fresh copy of the template, opened through a new FaultInjectionEnv (faulty) or the host's.
  void StartRun(bool faulty) {
    reg_.reset();
    fault_env_ = faulty ? std::make_unique<FaultInjectionEnv>() : nullptr;
    env_ = faulty ? fault_env_.get() : Env::Default();
    run_dir_ = std::make_unique<testing::TempDir>();
    std::filesystem::copy_file(template_dir_.path() + "/r.db", db());
    counter_.value = template_counter_;
    auto reg = OpenAnchored(run_dir_->path(), env_, false);
    ASSERT_TRUE(reg.ok()) << reg.error().ToString();
    reg_ = std::move(reg).value();
  }

  Status Reopen() {
    reg_.reset();
    VTM_ASSIGN_OR_RETURN(reg_, OpenAnchored(run_dir_->path(), env_, false));
    return OkStatus();
  }

  // After a run: the registry passes integrity_check, opens through the host's Env, anchors
  // at the counter (its epoch is not behind it) and holds what expected_[done] holds, or, if
  // failed_step_may_stand, what expected_[done + 1] holds. Returns whether that was the latter.
  bool CheckReopened(size_t done, const std::string& context, bool failed_step_may_stand = false) {
    reg_.reset();
    EXPECT_EQ(IntegrityCheck(db()), "ok") << context;
    AnchorReport report;
    auto reg = OpenAnchored(run_dir_->path(), Env::Default(), false, &report);
    EXPECT_TRUE(reg.ok()) << context << ": " << reg.error().ToString();
    if (!reg.ok()) return false;
    EXPECT_EQ(report.epoch, counter_.value) << context;
    // (A close changes nothing a reader sees.)
    auto after = [&](size_t steps) { return expected_[steps] == kClosed ? expected_[steps - 1] : expected_[steps]; };
    const std::string seen = Dump(**reg);
    if (failed_step_may_stand && done < steps_.size() && seen == after(done + 1)) return true;
    EXPECT_EQ(seen, after(done)) << context << ": expected the state after " << done << " steps";
    return false;
  }

  testing::TempDir template_dir_;
  uint64_t template_counter_ = 0;
  FakeCounter counter_;
  std::vector<Step> steps_;
  std::vector<std::string> expected_;  // [i]: after the first i steps
  std::unique_ptr<testing::TempDir> run_dir_;
  std::unique_ptr<FaultInjectionEnv> fault_env_;  // outlives reg_, which may use it
  Env* env_ = nullptr;
  std::unique_ptr<Registry> reg_;
};

TEST_F(RegistryPowerCutTest, PowerCutAfterEachSyncKeepsExactlyTheWritesThatReturned) {
  int cuts = 0;
  for (int sync = 0;; ++sync) {
    ASSERT_NO_FATAL_FAILURE(StartRun(/*faulty=*/true));
    FaultInjectionEnv& env = *fault_env_;
    env.CutPowerAfterSyncs(sync);
    size_t done = 0;
    for (; done < steps_.size(); ++done) {
      Status st = steps_[done].run(*this);
      if (!st.ok()) {
        ASSERT_TRUE(env.power_off()) << steps_[done].what << ": " << st.error().ToString();
        break;
      }
      // A write that returned is visible at once (checked against the run without faults).
      ASSERT_EQ(Seen(), expected_[done + 1]) << "after " << steps_[done].what << ", power cut at sync " << sync;
    }
    if (!env.power_off()) {
      EXPECT_EQ(done, steps_.size());
      break;  // the sequence has fewer syncs: every sync point was cut at
    }
    ++cuts;
    reg_.reset();
    ASSERT_TRUE(env.DropUnsyncedData().ok());
    ASSERT_NO_FATAL_FAILURE(CheckReopened(
        done, "power cut after sync " + std::to_string(sync) + " (in step " + std::to_string(done) + ")"));
  }
  // Ten writes, two of them checkpoints: each commit syncs the WAL at least once.
  EXPECT_GE(cuts, 12);
  std::cout << "power cut at " << cuts << " sync points\n";
}

// The cuts above fall on every state the disk can be in; these on every write that returned,
// so a write that returns before it is durable (not synced at commit) is seen lost.
TEST_F(RegistryPowerCutTest, PowerCutRightAfterEachWriteReturnedKeepsIt) {
  for (size_t steps = 1; steps <= steps_.size(); ++steps) {
    const std::string context =
        "power cut right after step " + std::to_string(steps - 1) + " (" + steps_[steps - 1].what + ") returned";
    ASSERT_NO_FATAL_FAILURE(StartRun(/*faulty=*/true));
    for (size_t i = 0; i < steps; ++i) {
      Status st = steps_[i].run(*this);
      ASSERT_TRUE(st.ok()) << steps_[i].what << ": " << st.error().ToString();
    }
    fault_env_->CutPowerAfterSyncs(0);
    reg_.reset();
    ASSERT_TRUE(fault_env_->DropUnsyncedData().ok());
    ASSERT_NO_FATAL_FAILURE(CheckReopened(steps, context));
  }
}

TEST_F(RegistryPowerCutTest, FailedWriteOrSyncIsACleanErrorAndLeavesThePreviousContent) {
  for (const char* op : {"WriteDbFile", "SyncDbFile", "TruncateDbFile"}) {
    for (bool power_cut : {false, true}) {
      int failures = 0;
      int stood = 0;
      for (int nth = 0;; ++nth) {
        const std::string context =
            std::string(op) + " #" + std::to_string(nth) + (power_cut ? ", then a power cut" : "");
        ASSERT_NO_FATAL_FAILURE(StartRun(/*faulty=*/true));
        FaultInjectionEnv& env = *fault_env_;
        env.FailOperation(op, "/r.db", 1, nth);
        size_t done = 0;
        for (; done < steps_.size(); ++done) {
          Status st = steps_[done].run(*this);
          if (!st.ok()) {
            EXPECT_EQ(st.error().code(), ErrorCode::kIo) << context;
            EXPECT_NE(st.error().message().find("registry"), std::string::npos)
                << context << ": " << st.error().ToString();
            // Nothing of the failed write is visible, and the registry still reads.
            if (reg_ != nullptr) {
              EXPECT_EQ(Dump(*reg_), expected_[done]) << context << " in " << steps_[done].what;
            }
            break;
          }
          // A failure inside a checkpoint (closing) is SQLite's to retry: the write had returned.
          ASSERT_EQ(Seen(), expected_[done + 1]) << context << " in " << steps_[done].what;
        }
        if (env.injected_failures() == 0) break;  // fewer such calls than nth + 1
        ++failures;
        reg_.reset();
        if (power_cut) {
          ASSERT_TRUE(env.DropUnsyncedData().ok());
        }
        // A commit whose WAL fsync failed wrote its frames all the same: a later sync of the
        // WAL (the close's checkpoint) makes them durable, and if the power is cut before the
        // WAL's removal is, SQLite's recovery finds the commit whole. Its outcome was unknown,
        // never torn; its sealed epoch is one ahead of the counter, which the start rolls forward.
        const bool may_stand = power_cut && std::string(op) == "SyncDbFile";
        stood += CheckReopened(done, context, may_stand) ? 1 : 0;
        if (::testing::Test::HasFailure()) return;
      }
      if (std::string(op) != "TruncateDbFile") {
        EXPECT_GE(failures, 10) << op;
      }
      std::cout << op << (power_cut ? " (then a power cut)" : "") << ": failed each of " << failures
                << " calls; the failed write stood after " << stood << "\n";
    }
  }
}

// A commit that failed may still reach the disk (see above), so the registry takes no write
// after it until it is opened again, which settles what the disk holds.
TEST_F(RegistryPowerCutTest, AfterAFailedCommitWritesAreRefusedUntilReopened) {
  StartRun(/*faulty=*/true);
  fault_env_->FailOperation("SyncDbFile", "/r.db", 1);
  VmRecord b = NewVm(kB, "b");
  Status failed = reg_->Insert(&b, 1000, 10);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.error().code(), ErrorCode::kIo) << failed.error().ToString();
  VmRecord c = NewVm(kC, "c");
  Status refused = reg_->Insert(&c, 1000, 10);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::kUnavailable) << refused.error().ToString();
  EXPECT_NE(refused.error().message().find("restart vtmd"), std::string::npos) << refused.error().message();
  EXPECT_TRUE(reg_->Get(kA).ok()) << "reads go on";
  ASSERT_TRUE(Reopen().ok());
  EXPECT_FALSE(reg_->Get(kC).ok());
  ASSERT_TRUE(reg_->Insert(&c, 1000, 10).ok()) << "a reopened registry takes writes again";
}

// A registry's first open creates its schema: a power cut at any of its sync points leaves a
// registry the next open takes up (before, the schema was several transactions, and a cut
// between the tables and their schema_version made every later open fail).
TEST(RegistryFirstOpenPowerCutTest, EverySyncPointLeavesARegistryThatOpens) {
  int cuts = 0;
  for (int sync = 0;; ++sync) {
    testing::TempDir dir;
    const std::string db = dir.path() + "/r.db";
    bool inserted = false;
    bool power_off = false;
    {
      FaultInjectionEnv env;
      env.CutPowerAfterSyncs(sync);
      {
        auto reg = Registry::Open(db, &env);
        if (reg.ok()) {
          VmRecord a = NewVm(kA, "a");
          inserted = (*reg)->Insert(&a, 1000, 100).ok();
        }
      }
      power_off = env.power_off();
      ASSERT_TRUE(env.DropUnsyncedData().ok());
    }
    if (!power_off) break;
    ++cuts;
    const std::string context = "power cut after sync " + std::to_string(sync);
    if (std::filesystem::exists(db)) {
      EXPECT_EQ(IntegrityCheck(db), "ok") << context;
    }
    auto reg = Registry::Open(db);
    ASSERT_TRUE(reg.ok()) << context << ": " << reg.error().ToString();
    auto vms = (*reg)->List();
    ASSERT_TRUE(vms.ok()) << context << ": " << vms.error().ToString();
    EXPECT_EQ(vms->size(), inserted ? 1u : 0u) << context;
    VmRecord b = NewVm(kB, "b");
    EXPECT_TRUE((*reg)->Insert(&b, 1000, 100).ok()) << context;
  }
  EXPECT_GE(cuts, 5);
  std::cout << "power cut at " << cuts << " sync points of a first open\n";
}

}  // namespace
}  // namespace vtm
