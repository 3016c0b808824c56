// Registry: persistence, compare-and-set transitions, uid allocation, name/uuid uniqueness.
#include "registry.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "test_env.h"

namespace vtm {
namespace {

VmRecord NewVm(const std::string& uuid, const std::string& name) {
  VmRecord r;
  r.uuid = uuid;
  r.name = name;
  r.wrapped_state_key = std::string("\x01\x00\x02", 3);
  r.wrapped_migration_key = "m";
  return r;
}

TEST(RegistryTest, InsertGetListAndPersistAcrossReopen) {
  testing::TempDir dir;
  std::string db = dir.path() + "/r.db";
  {
    auto reg = Registry::Open(db);
    ASSERT_TRUE(reg.ok()) << reg.error().ToString();
    VmRecord a = NewVm("00000000-0000-4000-8000-000000000001", "a");
    ASSERT_TRUE((*reg)->Insert(&a, 1000, 10).ok());
    EXPECT_EQ(a.instance_uid, 1000u);
    EXPECT_EQ(a.generation, 1u);
    VmRecord b = NewVm("00000000-0000-4000-8000-000000000002", "b");
    ASSERT_TRUE((*reg)->Insert(&b, 1000, 10).ok());
    EXPECT_EQ(b.instance_uid, 1001u);
  }
  auto reg = Registry::Open(db);
  ASSERT_TRUE(reg.ok());
  auto list = (*reg)->List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  auto byname = (*reg)->Get("b");
  ASSERT_TRUE(byname.ok());
  EXPECT_EQ(byname->uuid, "00000000-0000-4000-8000-000000000002");
  EXPECT_EQ(byname->wrapped_state_key, std::string("\x01\x00\x02", 3));  // blobs keep NUL bytes
}

TEST(RegistryTest, DuplicateUuidOrNameRefused) {
  testing::TempDir dir;
  auto reg = Registry::Open(dir.path() + "/r.db");
  ASSERT_TRUE(reg.ok());
  VmRecord a = NewVm("00000000-0000-4000-8000-000000000001", "a");
  ASSERT_TRUE((*reg)->Insert(&a, 1000, 10).ok());
  VmRecord same_uuid = NewVm("00000000-0000-4000-8000-000000000001", "other");
  auto st = (*reg)->Insert(&same_uuid, 1000, 10);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code(), ErrorCode::kAlreadyExists);
  VmRecord same_name = NewVm("00000000-0000-4000-8000-000000000009", "a");
  st = (*reg)->Insert(&same_name, 1000, 10);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message().find("name 'a' is taken"), std::string::npos);
}

TEST(RegistryTest, UidRangeExhaustionAndReuseOfFreedUid) {
  testing::TempDir dir;
  auto reg = Registry::Open(dir.path() + "/r.db");
  ASSERT_TRUE(reg.ok());
  VmRecord a = NewVm("00000000-0000-4000-8000-000000000001", "a");
  VmRecord b = NewVm("00000000-0000-4000-8000-000000000002", "b");
  VmRecord c = NewVm("00000000-0000-4000-8000-000000000003", "c");
  ASSERT_TRUE((*reg)->Insert(&a, 50, 2).ok());
  ASSERT_TRUE((*reg)->Insert(&b, 50, 2).ok());
  auto st = (*reg)->Insert(&c, 50, 2);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code(), ErrorCode::kUnavailable);
  ASSERT_TRUE((*reg)->Remove(a.uuid, a.generation).ok());
  ASSERT_TRUE((*reg)->Insert(&c, 50, 2).ok());
  EXPECT_EQ(c.instance_uid, 50u);
}

TEST(RegistryTest, TransitionIsCompareAndSet) {
  testing::TempDir dir;
  auto reg = Registry::Open(dir.path() + "/r.db");
  ASSERT_TRUE(reg.ok());
  VmRecord a = NewVm("00000000-0000-4000-8000-000000000001", "a");
  ASSERT_TRUE((*reg)->Insert(&a, 1000, 10).ok());
  auto r = (*reg)->Transition(a.uuid, a.generation, {VmState::kProvisioned}, VmState::kStarting, 42);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->state, VmState::kStarting);
  EXPECT_EQ(r->generation, 2u);
  EXPECT_EQ(r->instance_pid, 42);
  // A second caller that read the same generation loses and changes nothing, even where
  // the state it asks to leave is the current one.
  auto again = (*reg)->Transition(a.uuid, a.generation, {VmState::kProvisioned, VmState::kStarting},
                                  VmState::kStarting);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(again.error().message().find("another operation"), std::string::npos) << again.error().message();
  // The current generation but a state the caller did not expect: refused, naming the state.
  auto wrong_state = (*reg)->Transition(a.uuid, r->generation, {VmState::kProvisioned}, VmState::kStarting);
  ASSERT_FALSE(wrong_state.ok());
  EXPECT_NE(wrong_state.error().message().find("is starting"), std::string::npos) << wrong_state.error().message();
  auto now = (*reg)->Get(a.uuid);
  ASSERT_TRUE(now.ok());
  EXPECT_EQ(now->generation, 2u);
  // Removal is fenced too: a stale generation removes nothing.
  auto stale_remove = (*reg)->Remove(a.uuid, a.generation);
  ASSERT_FALSE(stale_remove.ok());
  EXPECT_EQ(stale_remove.error().code(), ErrorCode::kFailedPrecondition);
  EXPECT_TRUE((*reg)->Get(a.uuid).ok());
  auto missing = (*reg)->Transition("00000000-0000-4000-8000-00000000000f", 1, {VmState::kProvisioned},
                                    VmState::kStopped);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code(), ErrorCode::kNotFound);
}

// Many threads race for the same transition: exactly one wins each generation.
TEST(RegistryTest, ConcurrentTransitionsHaveOneWinnerPerGeneration) {
  testing::TempDir dir;
  auto reg = Registry::Open(dir.path() + "/r.db");
  ASSERT_TRUE(reg.ok());
  VmRecord a = NewVm("00000000-0000-4000-8000-000000000001", "a");
  ASSERT_TRUE((*reg)->Insert(&a, 1000, 10).ok());
  constexpr int kThreads = 8;
  std::atomic<int> wins{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&] {
      if ((*reg)->Transition(a.uuid, a.generation, {VmState::kProvisioned}, VmState::kDeleting).ok()) ++wins;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wins.load(), 1);
  EXPECT_EQ((*reg)->Get(a.uuid)->generation, a.generation + 1);
}

TEST(RegistryTest, CorruptDatabaseGivesClearError) {
  testing::TempDir dir;
  std::string db = dir.path() + "/r.db";
  FILE* f = fopen(db.c_str(), "w");
  fputs("this is not a database, just some text long enough to be a header......", f);
  fclose(f);
  auto reg = Registry::Open(db);
  ASSERT_FALSE(reg.ok());
  EXPECT_NE(reg.error().message().find("registry"), std::string::npos) << reg.error().message();
}

// Migration: the tombstone a committed migration leaves refuses the same and older
// generations of the VM (a create, a replay), while a later generation coming back replaces it;
// Remove records tombstone and committed migration in one transaction; migration states move
// only by compare-and-set.
TEST(RegistryTest, TombstoneAndMigrationRecords) {
  testing::TempDir dir;
  auto reg = Registry::Open(dir.path() + "/r.db");
  ASSERT_TRUE(reg.ok());
  const std::string uuid = "00000000-0000-4000-8000-0000000000aa";
  VmRecord vm = NewVm(uuid, "moving");
  ASSERT_TRUE((*reg)->Insert(&vm, 1000, 10).ok());
  auto out = (*reg)->Transition(uuid, vm.generation, {VmState::kProvisioned}, VmState::kMigratingOut);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->state, VmState::kMigratingOut);

  MigrationRecord m;
  m.id = "mig-1";
  m.vm_uuid = uuid;
  m.role = "source";
  m.mode = "cold";
  m.peer = "127.0.0.1:1";
  m.state = "sent";
  m.generation = out->generation;
  m.prepared = std::string("\0binary", 7);
  ASSERT_TRUE((*reg)->InsertMigration(&m).ok());
  EXPECT_EQ((*reg)->InsertMigration(&m).error().code(), ErrorCode::kAlreadyExists);
  auto open = (*reg)->OpenMigrationOf(uuid, "source");
  ASSERT_TRUE(open.ok() && open->has_value());
  EXPECT_EQ((*open)->prepared, std::string("\0binary", 7));
  // Compare-and-set: only from the named states.
  auto wrong = (*reg)->UpdateMigration("mig-1", {"prepared"}, "sent");
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.error().code(), ErrorCode::kFailedPrecondition);
  ASSERT_TRUE((*reg)->UpdateMigration("mig-1", {"sent"}, "committing").ok());

  Tombstone t{uuid, out->generation, "host-b", "mig-1", ""};
  ASSERT_FALSE((*reg)->Remove(uuid, out->generation - 1, t).ok());  // stale generation: nothing happens
  EXPECT_FALSE((*(*reg)->GetTombstone(uuid)).has_value());
  ASSERT_TRUE((*reg)->Remove(uuid, out->generation, t).ok());
  EXPECT_EQ((*reg)->GetMigration("mig-1")->state, "committed");
  EXPECT_FALSE((*(*reg)->OpenMigrationOf(uuid, "source")).has_value());
  auto gone = (*reg)->Get(uuid);
  ASSERT_FALSE(gone.ok());
  EXPECT_NE(gone.error().message().find("migrated from this host to host-b"), std::string::npos);

  // The same or an older generation cannot come back (a create, a replayed migration) ...
  VmRecord again = NewVm(uuid, "again");
  auto refused = (*reg)->Insert(&again, 1000, 10);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::kAlreadyExists);
  again.generation = out->generation;
  EXPECT_FALSE((*reg)->Insert(&again, 1000, 10).ok());
  // ... a later one (the VM migrating back) can, and replaces the tombstone.
  again.generation = out->generation + 5;
  again.state = VmState::kIncoming;
  again.nv_certificates_pending = true;
  ASSERT_TRUE((*reg)->Insert(&again, 1000, 10).ok());
  EXPECT_FALSE((*(*reg)->GetTombstone(uuid)).has_value());
  auto back = (*reg)->Get(uuid);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->generation, out->generation + 5);
  EXPECT_EQ(back->state, VmState::kIncoming);
  EXPECT_TRUE(back->nv_certificates_pending);
  ASSERT_TRUE((*reg)->SetNvCertificatesPending(uuid, false).ok());
  EXPECT_FALSE((*reg)->Get(uuid)->nv_certificates_pending);
}

// A host CA key rotation's registry steps: every valid certificate of any owner, and revocation
// of a set of serials in one write (already revoked ones keep their time).
TEST(RegistryTest, ValidCertificatesAndRevocationBySerial) {
  testing::TempDir dir;
  auto reg = Registry::Open(dir.path() + "/r.db");
  ASSERT_TRUE(reg.ok()) << reg.error().ToString();
  std::vector<CertRecord> certs;
  for (const char* owner : {"vm-a", "vm-a", "vtmd:host", "swtpm_setup:x"}) {
    CertRecord c;
    auto serial = (*reg)->NewSerial();
    ASSERT_TRUE(serial.ok());
    c.serial = *serial;
    c.vm_uuid = owner;
    c.kind = "ik";
    c.der = "der";
    certs.push_back(c);
  }
  ASSERT_TRUE((*reg)->AddCertificates(certs).ok());
  ASSERT_EQ((*reg)->RevokeCertificatesOf("vm-a").value(), 2);
  auto valid = (*reg)->ValidCertificates();
  ASSERT_TRUE(valid.ok());
  ASSERT_EQ(valid->size(), 2u);
  // The two still valid and one already revoked: only the valid ones change.
  auto revoked = (*reg)->RevokeCertificates({certs[0].serial, certs[2].serial, certs[3].serial});
  ASSERT_TRUE(revoked.ok()) << revoked.error().ToString();
  EXPECT_EQ(*revoked, 2);
  EXPECT_TRUE((*reg)->ValidCertificates()->empty());
  EXPECT_EQ((*reg)->RevokedCertificates()->size(), 4u);
  EXPECT_EQ((*reg)->RevokeCertificates({}).value(), 0);
}

}  // namespace
}  // namespace vtm
