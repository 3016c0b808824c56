// Registry rollback protection (Registry::Anchor) against a fake monotonic counter: the epoch
// follows every write, an older copy, an edited registry and a lost counter are refused with
// what to do, a crash between commit and increment rolls forward, and the operator's
// --accept-registry-rollback re-anchors; a registry sealed with the v1 digest is verified and
// resealed with v2, or refused if edited.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "registry.h"
#include "test_env.h"

namespace vtm {
namespace {

// The registry's counter thread increments it while the test reads it: atomics.
class FakeCounter final : public MonotonicCounter {
 public:
  explicit FakeCounter(uint64_t value) : value_(value) {}
  Result<uint64_t> Read() override { return value_.load(); }
  Status Increment() override {
    if (broken_) return Error(ErrorCode::kTpm, "TPM2_NV_Increment: simulated failure");
    ++value_;
    return OkStatus();
  }
  std::string Describe() const override { return "the fake counter"; }
  std::atomic<uint64_t> value_;
  std::atomic<bool> broken_{false};  // every increment fails (the TPM does not answer)
};

SecretBytes Key(char c) {
  SecretBytes key(32);
  for (size_t i = 0; i < key.size(); ++i) key.data()[i] = static_cast<uint8_t>(c);
  return key;
}

VmRecord NewVm(const std::string& uuid, const std::string& name) {
  VmRecord r;
  r.uuid = uuid;
  r.name = name;
  r.wrapped_state_key = "s";
  r.wrapped_migration_key = "m";
  return r;
}

// Migration m1 of vm_uuid, this host its source.
MigrationRecord SourceMigration(const std::string& vm_uuid, uint64_t generation, const std::string& state) {
  MigrationRecord m;
  m.id = "m1";
  m.vm_uuid = vm_uuid;
  m.role = "source";
  m.mode = "cold";
  m.peer = "peer:1";
  m.state = state;
  m.generation = generation;
  return m;
}

constexpr const char* kA = "00000000-0000-4000-8000-00000000000a";
constexpr const char* kB = "00000000-0000-4000-8000-00000000000b";

// The anchor as vtmd sealed it before the row-by-row digest (registry.cc before e5c6ca7, its
// ContentDigest and AnchorMac), written out here rather than taken from the registry's
// LegacyContentDigest: a change to the row serialization that v1 and v2 share would then fail
// this test instead of moving both sides.
std::string BigEndian64(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 7; i >= 0; --i, v >>= 8) out[static_cast<size_t>(i)] = static_cast<char>(v & 0xff);
  return out;
}

// SHA-256 over "vtm registry digest v1", then per table its name, NUL and every row in primary
// key order ('R', then per column its SQLite type as a digit and its value: integers as 8 bytes
// big endian, text and blobs length-prefixed); meta without the anchor and the CRL number.
std::string V1Digest(sqlite3* db) {
  std::string data = "vtm registry digest v1";
  for (const std::string table : {"vms", "migrations", "tombstones", "certificates", "meta"}) {
    std::string sql = "SELECT * FROM " + table;
    if (table == "meta") sql += " WHERE key NOT IN ('anchor_epoch', 'anchor_mac', 'next_crl_number')";
    sql += " ORDER BY 1";
    sqlite3_stmt* q = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &q, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    data.append(table).push_back('\0');
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
      data.push_back('R');
      for (int c = 0; c < sqlite3_column_count(q); ++c) {
        const int type = sqlite3_column_type(q, c);
        data.push_back(static_cast<char>('0' + type));
        if (type == SQLITE_INTEGER) {
          data += BigEndian64(static_cast<uint64_t>(sqlite3_column_int64(q, c)));
        } else if (type != SQLITE_NULL) {
          const auto* p = static_cast<const char*>(sqlite3_column_blob(q, c));
          const std::string v = p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(q, c))) : "";
          data += BigEndian64(v.size());
          data += v;
        }
      }
    }
    EXPECT_EQ(rc, SQLITE_DONE) << sqlite3_errmsg(db);
    sqlite3_finalize(q);
  }
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), md);
  return std::string(reinterpret_cast<const char*>(md), sizeof md);
}

// HMAC-SHA256(key, "vtm registry anchor v1" NUL epoch digest).
std::string V1Mac(const SecretBytes& key, uint64_t epoch, const std::string& digest) {
  std::string message = "vtm registry anchor v1";
  message.push_back('\0');
  message += BigEndian64(epoch) + digest;
  unsigned char mac[32];
  unsigned int mac_len = 0;
  EXPECT_NE(HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
                 reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac, &mac_len),
            nullptr);
  return std::string(reinterpret_cast<const char*>(mac), mac_len);
}

class RegistryAnchorTest : public ::testing::Test {
 protected:
  std::string db() const { return dir_.path() + "/r.db"; }
  // Opens and anchors; the registry is closed (checkpointed) when the pointer goes.
  Result<std::unique_ptr<Registry>> OpenAnchored(bool counter_is_new, bool accept = false,
                                                 AnchorReport* report = nullptr, char key = 'k') {
    VTM_ASSIGN_OR_RETURN(auto reg, Registry::Open(db()));
    VTM_ASSIGN_OR_RETURN(AnchorReport r, reg->Anchor(Key(key), &counter_, counter_is_new, accept));
    if (report != nullptr) *report = r;
    return reg;
  }
  // The registry's file opened behind vtmd's back (closed, so checkpointed, on return).
  struct Db {
    explicit Db(const std::string& path) { EXPECT_EQ(sqlite3_open(path.c_str(), &h), SQLITE_OK); }
    ~Db() { sqlite3_close(h); }
    Db(const Db&) = delete;
    Db& operator=(const Db&) = delete;
    sqlite3* h = nullptr;
  };
  std::string V1DigestOfFile() {
    Db db(this->db());
    return V1Digest(db.h);
  }
  // Replaces the registry's anchor with the one vtmd wrote before v2, at epoch; returns its MAC.
  std::string SealAsV1(uint64_t epoch, char key = 'k') {
    Db db(this->db());
    const std::string mac = V1Mac(Key(key), epoch, V1Digest(db.h));
    sqlite3_stmt* put = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db.h, "INSERT OR REPLACE INTO meta VALUES ('anchor_epoch', ?1), ('anchor_mac', ?2)",
                                 -1, &put, nullptr),
              SQLITE_OK);
    const std::string text = std::to_string(epoch);
    sqlite3_bind_text(put, 1, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
    sqlite3_bind_blob(put, 2, mac.data(), static_cast<int>(mac.size()), SQLITE_TRANSIENT);
    EXPECT_EQ(sqlite3_step(put), SQLITE_DONE) << sqlite3_errmsg(db.h);
    sqlite3_finalize(put);
    return mac;
  }
  // The anchor as stored: (epoch, MAC).
  std::pair<std::string, std::string> StoredAnchor() {
    Db db(this->db());
    std::pair<std::string, std::string> anchor;
    sqlite3_stmt* get = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db.h, "SELECT key, value FROM meta WHERE key LIKE 'anchor_%'", -1, &get, nullptr),
              SQLITE_OK);
    while (sqlite3_step(get) == SQLITE_ROW) {
      const std::string key = reinterpret_cast<const char*>(sqlite3_column_text(get, 0));
      const auto* p = static_cast<const char*>(sqlite3_column_blob(get, 1));
      const std::string value(p ? p : "", static_cast<size_t>(sqlite3_column_bytes(get, 1)));
      (key == "anchor_epoch" ? anchor.first : anchor.second) = value;
    }
    sqlite3_finalize(get);
    return anchor;
  }
  // A row in every anchored table (and a CRL number), written and sealed by the current code.
  void Populate() {
    auto reg = OpenAnchored(/*counter_is_new=*/true);
    ASSERT_TRUE(reg.ok()) << reg.error().ToString();
    Registry& r = **reg;
    VmRecord a = NewVm(kA, "a");
    a.wrapped_state_key = std::string("s\0t", 3);  // serialized by length, not up to a NUL
    VmRecord b = NewVm(kB, "b");
    ASSERT_TRUE(r.Insert(&a, 1000, 10).ok());
    ASSERT_TRUE(r.Insert(&b, 1000, 10).ok());
    std::vector<CertRecord> certs;
    for (uint64_t serial : {11u, 12u}) {
      CertRecord c;
      c.serial = serial;
      c.vm_uuid = kA;
      c.kind = serial == 11 ? "ak" : "ik";
      c.der = "der" + std::to_string(serial);
      certs.push_back(c);
    }
    ASSERT_TRUE(r.AddCertificates(certs).ok());
    ASSERT_TRUE(r.Transition(kA, a.generation, {VmState::kProvisioned}, VmState::kStopped, 0, "", "digest").ok());
    MigrationRecord m = SourceMigration(kB, b.generation, "sent");
    ASSERT_TRUE(r.InsertMigration(&m).ok());
    Tombstone t;
    t.generation = b.generation;
    t.destination = "peer:1";
    t.migration_id = "m1";
    ASSERT_TRUE(r.Remove(kB, b.generation, t).ok());
    ASSERT_TRUE(r.NextCrlNumber().ok());
    ASSERT_TRUE(r.SyncCounter().ok());
  }
  void Sql(const std::string& sql) {
    sqlite3* h = nullptr;
    ASSERT_EQ(sqlite3_open(db().c_str(), &h), SQLITE_OK);
    char* err = nullptr;
    EXPECT_EQ(sqlite3_exec(h, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "");
    sqlite3_free(err);
    sqlite3_close(h);
  }
  testing::TempDir dir_;
  FakeCounter counter_{41};
};

TEST_F(RegistryAnchorTest, EveryWriteMovesTheCounterAndAReopenMatches) {
  AnchorReport report;
  {
    auto reg = OpenAnchored(/*counter_is_new=*/true, false, &report);
    ASSERT_TRUE(reg.ok()) << reg.error().ToString();
    EXPECT_TRUE(report.newly_anchored);
    EXPECT_EQ(report.epoch, 41u);
    VmRecord a = NewVm(kA, "a");
    ASSERT_TRUE((*reg)->Insert(&a, 1000, 10).ok());
    ASSERT_TRUE((*reg)->SyncCounter().ok());
    EXPECT_EQ(counter_.value_, 42u);
    auto moved = (*reg)->Transition(kA, a.generation, {VmState::kProvisioned}, VmState::kStopped, 0, "", "digest");
    ASSERT_TRUE(moved.ok()) << moved.error().ToString();
    ASSERT_TRUE((*reg)->SetNvCertificatesPending(kA, true).ok());
    ASSERT_TRUE((*reg)->RevokeCertificatesOf(kA).ok());
    ASSERT_TRUE((*reg)->SyncCounter().ok());
    EXPECT_EQ(counter_.value_, 45u);
    ASSERT_TRUE((*reg)->NextCrlNumber().ok());  // outside the anchor: no increment
    ASSERT_TRUE((*reg)->SyncCounter().ok());
    EXPECT_EQ(counter_.value_, 45u);
    EXPECT_EQ((*reg)->Get(kA)->state_sha256, "digest");
  }
  auto reg = OpenAnchored(false, false, &report);
  ASSERT_TRUE(reg.ok()) << reg.error().ToString();
  EXPECT_FALSE(report.newly_anchored || report.rolled_forward || report.accepted);
  EXPECT_EQ(report.epoch, 45u);
}

TEST_F(RegistryAnchorTest, OlderCopyIsRefusedUntilAccepted) {
  {
    auto reg = OpenAnchored(true);
    ASSERT_TRUE(reg.ok()) << reg.error().ToString();
    VmRecord a = NewVm(kA, "a");
    ASSERT_TRUE((*reg)->Insert(&a, 1000, 10).ok());
  }
  std::filesystem::copy_file(db(), db() + ".old");
  {
    auto reg = OpenAnchored(false);
    ASSERT_TRUE(reg.ok()) << reg.error().ToString();
    ASSERT_TRUE((*reg)->Remove(kA, 1).ok());  // deleted since the copy
  }
  std::filesystem::copy_file(db() + ".old", db(), std::filesystem::copy_options::overwrite_existing);
  auto refused = OpenAnchored(false);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(refused.error().message().find("is an older copy: its epoch is 42 but the fake counter is at 43"),
            std::string::npos)
      << refused.error().message();
  EXPECT_NE(refused.error().message().find("--accept-registry-rollback"), std::string::npos);

  AnchorReport report;
  auto accepted = OpenAnchored(false, /*accept=*/true, &report);
  ASSERT_TRUE(accepted.ok()) << accepted.error().ToString();
  EXPECT_TRUE(report.accepted);
  EXPECT_NE(report.accepted_reason.find("older copy"), std::string::npos);
  EXPECT_TRUE((*accepted)->Get(kA).ok());  // the copy's content, as accepted
  accepted->reset();
  EXPECT_TRUE(OpenAnchored(false).ok()) << "re-anchored: an ordinary start works again";
}

TEST_F(RegistryAnchorTest, EditedRegistryFailsTheMac) {
  {
    auto reg = OpenAnchored(true);
    ASSERT_TRUE(reg.ok()) << reg.error().ToString();
    VmRecord a = NewVm(kA, "a");
    ASSERT_TRUE((*reg)->Insert(&a, 1000, 10).ok());
  }
  Sql("UPDATE vms SET generation = generation + 5");
  auto refused = OpenAnchored(false);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::kDataLoss);
  EXPECT_NE(refused.error().message().find("was changed outside vtmd"), std::string::npos) << refused.error().message();
  // Another master key (another host's registry) fails the same way.
  Sql("UPDATE vms SET generation = generation - 5");
  EXPECT_TRUE(OpenAnchored(false).ok());
  EXPECT_EQ(OpenAnchored(false, false, nullptr, 'x').error().code(), ErrorCode::kDataLoss);
}

TEST_F(RegistryAnchorTest, RemovedAnchorOrNewCounterIsRefused) {
  {
    auto reg = OpenAnchored(true);
    ASSERT_TRUE(reg.ok()) << reg.error().ToString();
  }
  // The counter was undefined and defined anew: the anchored registry does not trust it.
  auto new_counter = OpenAnchored(/*counter_is_new=*/true);
  ASSERT_FALSE(new_counter.ok());
  EXPECT_NE(new_counter.error().message().find("did not exist"), std::string::npos) << new_counter.error().message();
  // An anchor stripped from the registry (to pass an old copy off as new) is refused.
  Sql("DELETE FROM meta WHERE key LIKE 'anchor_%'");
  auto stripped = OpenAnchored(false);
  ASSERT_FALSE(stripped.ok());
  EXPECT_NE(stripped.error().message().find("has no rollback anchor"), std::string::npos) << stripped.error().message();
}

TEST_F(RegistryAnchorTest, CrashBetweenCommitAndIncrementRollsForward) {
  {
    auto reg = OpenAnchored(true);
    ASSERT_TRUE(reg.ok()) << reg.error().ToString();
    counter_.broken_ = true;  // as if vtmd died right after the commit
    VmRecord a = NewVm(kA, "a");
    ASSERT_TRUE((*reg)->Insert(&a, 1000, 10).ok());
  }
  EXPECT_EQ(counter_.value_, 41u);
  counter_.broken_ = false;
  AnchorReport report;
  auto reg = OpenAnchored(false, false, &report);
  ASSERT_TRUE(reg.ok()) << reg.error().ToString();
  EXPECT_TRUE(report.rolled_forward);
  EXPECT_EQ(counter_.value_, 42u);
  EXPECT_EQ(report.epoch, 42u);
}

TEST_F(RegistryAnchorTest, FailedIncrementIsCaughtUpBeforeTheNextWriteOrRefusesIt) {
  auto reg = OpenAnchored(true);
  ASSERT_TRUE(reg.ok()) << reg.error().ToString();
  counter_.broken_ = true;  // the increment after the commit fails, and so does the catch-up
  VmRecord a = NewVm(kA, "a");
  ASSERT_TRUE((*reg)->Insert(&a, 1000, 10).ok()) << "committed before the increment";
  VmRecord b = NewVm(kB, "b");
  Status refused = (*reg)->Insert(&b, 1000, 10);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message().find("nothing was written"), std::string::npos) << refused.error().message();
  EXPECT_FALSE((*reg)->Get(kB).ok());
  EXPECT_EQ(counter_.value_, 41u);
  counter_.broken_ = false;
  ASSERT_TRUE((*reg)->Insert(&b, 1000, 10).ok());  // the TPM answers again: caught up, then written
  ASSERT_TRUE((*reg)->SyncCounter().ok());
  EXPECT_EQ(counter_.value_, 43u);
  reg->reset();
  EXPECT_TRUE(OpenAnchored(false).ok());
}

// The digest is kept row by row as rows are written; a reopen sums every row anew and checks
// the HMAC against that. Every kind of write, a refused one (rolled back) and the rows SQLite
// replaces without telling (INSERT OR REPLACE in meta and tombstones) must leave the two equal.
TEST_F(RegistryAnchorTest, RowByRowDigestEqualsAFullOneAfterEveryKindOfWrite) {
  {
    auto reg = OpenAnchored(true);
    ASSERT_TRUE(reg.ok()) << reg.error().ToString();
    Registry& r = **reg;
    VmRecord a = NewVm(kA, "a");
    VmRecord b = NewVm(kB, "b");
    ASSERT_TRUE(r.Insert(&a, 1000, 10).ok());
    ASSERT_TRUE(r.Insert(&b, 1000, 10).ok());
    VmRecord dup = NewVm(kA, "again");
    ASSERT_FALSE(r.Insert(&dup, 1000, 10).ok());  // refused: rolled back after touching nothing
    std::vector<CertRecord> certs;
    for (uint64_t serial : {11u, 12u, 13u}) {
      CertRecord c;
      c.serial = serial;
      c.vm_uuid = kA;
      c.kind = "ik";
      c.der = "der" + std::to_string(serial);
      certs.push_back(c);
    }
    ASSERT_TRUE(r.AddCertificates(certs).ok());
    ASSERT_TRUE(r.SupersedeCertificates(kA, {13}).ok());
    auto moved = r.Transition(kA, a.generation, {VmState::kProvisioned}, VmState::kStopped, 0, "", "digest");
    ASSERT_TRUE(moved.ok()) << moved.error().ToString();
    ASSERT_FALSE(r.Transition(kA, a.generation, {VmState::kProvisioned}, VmState::kRunning).ok());  // stale
    MigrationRecord m = SourceMigration(kB, b.generation, "prepared");
    ASSERT_TRUE(r.InsertMigration(&m).ok());
    ASSERT_TRUE(r.UpdateMigration("m1", {"prepared"}, "sent").ok());
    ASSERT_TRUE(r.SetMigrationPrepared("m1", "response").ok());
    Tombstone t;
    t.generation = b.generation;
    t.destination = "peer:1";
    t.migration_id = "m1";
    ASSERT_TRUE(r.Remove(kB, b.generation, t).ok());
    VmRecord back = NewVm(kB, "b");
    back.generation = b.generation + 5;  // arrives again later: replaces its tombstone
    ASSERT_TRUE(r.Insert(&back, 1000, 10).ok());
    ASSERT_TRUE(r.NextCrlNumber().ok());
    ASSERT_TRUE(r.RevokeCertificatesOf(kA).ok());
  }
  AnchorReport report;
  auto reg = OpenAnchored(false, false, &report);
  ASSERT_TRUE(reg.ok()) << reg.error().ToString();
  EXPECT_FALSE(report.accepted || report.rolled_forward);
  // And the full sum still sees one changed byte.
  reg->reset();
  Sql("UPDATE certificates SET der='derX' WHERE serial=12");
  auto edited = OpenAnchored(false);
  ASSERT_FALSE(edited.ok());
  EXPECT_EQ(edited.error().code(), ErrorCode::kDataLoss) << edited.error().message();
}

// Not a check but a measurement (printed): what the digest and HMAC add to one write when the
// registry holds 1000 VMs and 4000 certificates of 600 bytes.
TEST_F(RegistryAnchorTest, CostOfOneWriteWithALargeRegistry) {
  auto reg = OpenAnchored(true);
  ASSERT_TRUE(reg.ok()) << reg.error().ToString();
  constexpr int kVms = 1000;
  auto time_one_write = [&](const std::string& uuid, uint64_t generation) {
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_TRUE((*reg)->Transition(uuid, generation, {VmState::kProvisioned}, VmState::kStopped).ok());
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  VmRecord first = NewVm(kA, "a");
  ASSERT_TRUE((*reg)->Insert(&first, 1000, 2 * kVms).ok());
  const double small = time_one_write(kA, first.generation);
  std::vector<CertRecord> certs;
  for (int i = 1; i < kVms; ++i) {
    char uuid[40];
    std::snprintf(uuid, sizeof uuid, "00000000-0000-4000-8000-%012d", i);
    VmRecord r = NewVm(uuid, std::string("vm") + std::to_string(i));
    r.wrapped_state_key = std::string(77, 's');
    r.wrapped_migration_key = std::string(77, 'm');
    ASSERT_TRUE((*reg)->Insert(&r, 1000, 2 * kVms).ok());
    for (int k = 0; k < 4; ++k) {
      CertRecord c;
      c.serial = static_cast<uint64_t>(i) * 8 + static_cast<uint64_t>(k);
      c.vm_uuid = uuid;
      c.kind = "ik";
      c.der = std::string(600, 'c');
      certs.push_back(std::move(c));
    }
  }
  ASSERT_TRUE((*reg)->AddCertificates(certs).ok());
  VmRecord last = NewVm(kB, "b");
  ASSERT_TRUE((*reg)->Insert(&last, 1000, 2 * kVms).ok());
  // The median of 11 writes: the first after a large insert also pays SQLite's checkpoint.
  std::vector<double> large;
  for (int i = 1; i <= 11; ++i) {
    char uuid[40];
    std::snprintf(uuid, sizeof uuid, "00000000-0000-4000-8000-%012d", i);
    large.push_back(time_one_write(uuid, 1));
  }
  std::sort(large.begin(), large.end());
  std::cerr << "cost: one sealed registry write: " << small << " ms with 1 VM, " << large[large.size() / 2]
            << " ms (median of 11) with " << kVms + 1 << " VMs and " << certs.size()
            << " certificates (fake counter: digest, HMAC, SQLite only)\n";
}

// A registry sealed by a vtmd from before the row-by-row digest (v1) is verified the old way
// and sealed anew with v2 at the same epoch: the counter does not move, every row stays.
TEST_F(RegistryAnchorTest, V1SealedRegistryIsVerifiedAndResealedAsV2) {
  ASSERT_NO_FATAL_FAILURE(Populate());
  const uint64_t epoch = counter_.value_;
  const std::string v1_mac = SealAsV1(epoch);
  ASSERT_EQ(StoredAnchor(), std::make_pair(std::to_string(epoch), v1_mac));
  const std::string rows = V1DigestOfFile();

  AnchorReport report;
  {
    auto reg = OpenAnchored(/*counter_is_new=*/false, false, &report);
    ASSERT_TRUE(reg.ok()) << "a v1-sealed registry opens: " << reg.error().ToString();
    EXPECT_FALSE(report.newly_anchored || report.rolled_forward || report.accepted);
    EXPECT_EQ(report.epoch, epoch);
    auto a = (*reg)->Get(kA);
    ASSERT_TRUE(a.ok()) << a.error().ToString();
    EXPECT_EQ(a->wrapped_state_key, std::string("s\0t", 3));
    EXPECT_EQ(a->state, VmState::kStopped);
    EXPECT_EQ(a->state_sha256, "digest");
    EXPECT_EQ((*reg)->CertificatesOf(kA)->size(), 2u);
    EXPECT_EQ((*reg)->GetMigration("m1")->state, "committed");
    auto tombstone = (*reg)->GetTombstone(kB);
    ASSERT_TRUE(tombstone.ok() && tombstone->has_value());
    EXPECT_EQ((*tombstone)->migration_id, "m1");
  }
  EXPECT_EQ(counter_.value_, epoch) << "resealing is not a write the counter counts";
  EXPECT_EQ(V1DigestOfFile(), rows) << "every anchored row as it was";
  const auto [stored_epoch, stored_mac] = StoredAnchor();
  EXPECT_EQ(stored_epoch, std::to_string(epoch));
  // Anchor accepts a MAC that is either v2 or v1 over the rows as they are: a stored MAC that is
  // not the v1 one and opens again (below) is v2.
  EXPECT_NE(stored_mac, V1Mac(Key('k'), epoch, rows)) << "the anchor was not resealed: it is still v1";

  {
    auto reg = OpenAnchored(false, false, &report);
    ASSERT_TRUE(reg.ok()) << "the resealed registry opens again: " << reg.error().ToString();
    EXPECT_FALSE(report.newly_anchored || report.rolled_forward || report.accepted);
    EXPECT_EQ(report.epoch, epoch);
    // Writes go on from there: epoch and counter move together.
    VmRecord c = NewVm("00000000-0000-4000-8000-00000000000c", "c");
    ASSERT_TRUE((*reg)->Insert(&c, 1000, 10).ok());
    ASSERT_TRUE((*reg)->SyncCounter().ok());
    EXPECT_EQ(counter_.value_, epoch + 1);
  }
  EXPECT_EQ(StoredAnchor().first, std::to_string(epoch + 1));
  auto reg = OpenAnchored(false, false, &report);
  ASSERT_TRUE(reg.ok()) << reg.error().ToString();
  EXPECT_EQ(report.epoch, epoch + 1);
  EXPECT_EQ((*reg)->List()->size(), 2u);
}

// An old vtmd that crashed between a commit and its increment left a v1 anchor one ahead of the
// counter: rolled forward, then resealed at the epoch it had.
TEST_F(RegistryAnchorTest, V1SealedRegistryAheadOfTheCounterRollsForwardAndIsResealed) {
  ASSERT_NO_FATAL_FAILURE(Populate());
  const uint64_t epoch = counter_.value_ + 1;
  const std::string v1_mac = SealAsV1(epoch);
  AnchorReport report;
  {
    auto reg = OpenAnchored(false, false, &report);
    ASSERT_TRUE(reg.ok()) << reg.error().ToString();
    EXPECT_TRUE(report.rolled_forward);
    EXPECT_EQ(report.epoch, epoch);
    EXPECT_EQ(counter_.value_, epoch);
  }
  EXPECT_EQ(StoredAnchor().first, std::to_string(epoch));
  EXPECT_NE(StoredAnchor().second, v1_mac);
  auto reg = OpenAnchored(false, false, &report);
  ASSERT_TRUE(reg.ok()) << reg.error().ToString();
  EXPECT_FALSE(report.rolled_forward || report.accepted);
}

// A v1-sealed registry whose rows were changed after sealing fails the v1 check as it would
// have failed the old vtmd's: refused, and neither its anchor nor the counter is touched.
TEST_F(RegistryAnchorTest, EditedV1SealedRegistryIsRefusedAndNotResealed) {
  ASSERT_NO_FATAL_FAILURE(Populate());
  const uint64_t epoch = counter_.value_;
  const std::string v1_mac = SealAsV1(epoch);
  std::filesystem::copy_file(db(), db() + ".sealed");
  const char* edits[] = {
      "UPDATE vms SET generation = generation + 5",
      "UPDATE vms SET wrapped_state_key = x'73'",  // "s\0t" cut at its NUL
      "UPDATE certificates SET der = 'derX' WHERE serial = 12",
      "DELETE FROM tombstones",
      "UPDATE migrations SET state = 'aborted'",
      "INSERT INTO meta VALUES ('planted', 'x')",
  };
  for (const char* edit : edits) {
    SCOPED_TRACE(edit);
    std::filesystem::copy_file(db() + ".sealed", db(), std::filesystem::copy_options::overwrite_existing);
    Sql(edit);
    auto refused = OpenAnchored(false);
    ASSERT_FALSE(refused.ok()) << "an edited v1 registry opened";
    EXPECT_EQ(refused.error().code(), ErrorCode::kDataLoss);
    EXPECT_NE(
        refused.error().message().find("the registry " + db() + " was changed outside vtmd: its HMAC over epoch " +
                                       std::to_string(epoch) + " does not verify"),
        std::string::npos)
        << refused.error().message();
    EXPECT_NE(refused.error().message().find("vtmd refuses to start"), std::string::npos) << refused.error().message();
    EXPECT_EQ(StoredAnchor(), std::make_pair(std::to_string(epoch), v1_mac)) << "resealed after a refusal";
    EXPECT_EQ(counter_.value_, epoch);
  }
  // The same file unedited opens: the refusals were for the edits.
  std::filesystem::copy_file(db() + ".sealed", db(), std::filesystem::copy_options::overwrite_existing);
  EXPECT_TRUE(OpenAnchored(false).ok());
}

}  // namespace
}  // namespace vtm
