// SQLite-backed registry: schema, compare-and-set transitions, uid allocation.
#include "registry.h"

#include <openssl/crypto.h>
#include <openssl/hmac.h>

#include <ctime>
#include <stdexcept>

#include "vtm/crash_point.h"
#include "vtm/digest.h"
#include "vtm/log.h"
#include "vtm/secret.h"
#include "vtm/utc.h"

namespace vtm {
namespace {

constexpr int kSchemaVersion = 5;

struct StateName {
  VmState state;
  const char* name;
};
constexpr StateName kStateNames[] = {
    {VmState::kDefined, "defined"}, {VmState::kProvisioned, "provisioned"}, {VmState::kStarting, "starting"}, {VmState::kRunning, "running"},
    {VmState::kStopping, "stopping"},       {VmState::kStopped, "stopped"},   {VmState::kDeleting, "deleting"},
    {VmState::kFailed, "failed"},  {VmState::kMigratingOut, "migrating-out"}, {VmState::kIncoming, "incoming"},
};

Error SqlError(sqlite3* db, const std::string& what) {
  return Error(ErrorCode::kIo, "registry: " + what + ": " + sqlite3_errmsg(db));
}

// Finalizes a prepared statement on scope exit.
class Stmt {
 public:
  Stmt(sqlite3* db, const std::string& sql) { rc_ = sqlite3_prepare_v2(db, sql.c_str(), -1, &s_, nullptr); }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  bool ok() const { return rc_ == SQLITE_OK; }
  sqlite3_stmt* get() { return s_; }
  void Text(int i, const std::string& v) { sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT); }
  void Blob(int i, const std::string& v) { sqlite3_bind_blob(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT); }
  void Int(int i, int64_t v) { sqlite3_bind_int64(s_, i, v); }
  std::string ColText(int i) {
    auto* p = sqlite3_column_blob(s_, i);
    return p ? std::string(static_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(s_, i))) : "";
  }
  int64_t ColInt(int i) { return sqlite3_column_int64(s_, i); }

 private:
  sqlite3_stmt* s_ = nullptr;
  int rc_;
};

constexpr const char* kColumns =
    "uuid, name, service, state, generation, instance_uid, wrapped_state_key, wrapped_migration_key, instance_pid, "
    "created_at, updated_at, last_error";
constexpr const char* kVtpmColumns = "vtpm_ek_name, vtpm_ek_rsa_name, vtpm_ak_name, vtpm_ek_public, vtpm_ak_public";
constexpr const char* kVtpmColumnsDdl =
    "ALTER TABLE vms ADD COLUMN vtpm_ek_name BLOB NOT NULL DEFAULT x'';"
    "ALTER TABLE vms ADD COLUMN vtpm_ek_rsa_name BLOB NOT NULL DEFAULT x'';"
    "ALTER TABLE vms ADD COLUMN vtpm_ak_name BLOB NOT NULL DEFAULT x'';"
    "ALTER TABLE vms ADD COLUMN vtpm_ek_public BLOB NOT NULL DEFAULT x'';"
    "ALTER TABLE vms ADD COLUMN vtpm_ak_public BLOB NOT NULL DEFAULT x'';";
// v4: migration (issue 7).
constexpr const char* kMigrationDdl =
    "ALTER TABLE vms ADD COLUMN nv_certificates_pending INTEGER NOT NULL DEFAULT 0;"
    "CREATE TABLE IF NOT EXISTS migrations ("
    " id TEXT PRIMARY KEY, vm_uuid TEXT NOT NULL, role TEXT NOT NULL, mode TEXT NOT NULL, peer TEXT NOT NULL,"
    " state TEXT NOT NULL, generation INTEGER NOT NULL, vm_state_before TEXT NOT NULL DEFAULT '',"
    " prepared BLOB NOT NULL DEFAULT x'', created_at TEXT NOT NULL, updated_at TEXT NOT NULL,"
    " last_error TEXT NOT NULL DEFAULT '');"
    "CREATE INDEX IF NOT EXISTS migrations_vm ON migrations (vm_uuid);"
    "CREATE TABLE IF NOT EXISTS tombstones ("
    " vm_uuid TEXT PRIMARY KEY, generation INTEGER NOT NULL, destination TEXT NOT NULL, migration_id TEXT NOT NULL,"
    " at TEXT NOT NULL);";
// v5: rollback protection (the anchor lives in meta) and the vTPM state's digest.
constexpr const char* kStateDigestDdl = "ALTER TABLE vms ADD COLUMN state_sha256 BLOB NOT NULL DEFAULT x'';";
constexpr const char* kMigrationColumns =
    "id, vm_uuid, role, mode, peer, state, generation, vm_state_before, prepared, created_at, updated_at, last_error";

bool Ended(const std::string& migration_state) { return migration_state == "committed" || migration_state == "aborted"; }

// Meta rows outside the anchor's digest: the anchor itself, and the CRL number (a counter that
// only grows, so a rolled-back one re-uses CRL numbers at worst, and is not worth an NV write).
constexpr const char* kAnchorEpochKey = "anchor_epoch";
constexpr const char* kAnchorMacKey = "anchor_mac";

std::string BigEndian64(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 7; i >= 0; --i, v >>= 8) out[static_cast<size_t>(i)] = static_cast<char>(v & 0xff);
  return out;
}

}  // namespace

const char* VmStateName(VmState state) {
  for (const auto& s : kStateNames) {
    if (s.state == state) return s.name;
  }
  return "unknown";
}

Result<VmState> ParseVmState(const std::string& name) {
  for (const auto& s : kStateNames) {
    if (name == s.name) return s.state;
  }
  return Error(ErrorCode::kDataLoss, "registry holds an unknown VM state '" + name + "'");
}

// Rolls back unless committed.
class Registry::Txn {
 public:
  explicit Txn(sqlite3* db) : db_(db) {
    ok_ = sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK;
  }
  ~Txn() {
    if (ok_ && !done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  bool ok() const { return ok_; }
  Status Commit() {
    done_ = true;
    if (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) return SqlError(db_, "commit");
    return OkStatus();
  }

 private:
  sqlite3* db_;
  bool ok_ = false;
  bool done_ = false;
};

template <typename Fn>
auto Registry::SealedWrite(bool lifecycle, Fn&& body) -> decltype(body()) {
  MutexLock write_lock(write_mu_);
  MutexLock lock(mu_);
  if (!failed_commit_.empty()) {
    return Error(ErrorCode::kUnavailable,
                 "the registry " + path_ + " takes no more writes: an earlier commit failed (" + failed_commit_ +
                     ") and may or may not be on disk; restart vtmd, whose start-up check settles it");
  }
  VTM_RETURN_IF_ERROR(CatchUpCounter());
  Txn txn(db_);
  if (!txn.ok()) return SqlError(db_, "begin");
  auto result = body();
  if (!result.ok()) return result;
  VTM_RETURN_IF_ERROR(Commit(txn, lifecycle));
  return result;
}

Result<std::unique_ptr<Registry>> Registry::Open(const std::string& path, Env* env) {
  VTM_ASSIGN_OR_RETURN(std::unique_ptr<SqliteEnvVfs> vfs, SqliteEnvVfs::Register(env));
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                           vfs->name());
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return Error(ErrorCode::kIo, "opening registry " + path + ": " + msg);
  }
  std::unique_ptr<Registry> reg(new Registry(std::move(vfs), db, path));
  MutexLock lock(reg->mu_);
  VTM_RETURN_IF_ERROR(reg->InitSchema(path));
  return reg;
}

Status Registry::InitSchema(const std::string& path) {
  sqlite3_busy_timeout(db_, 5000);
  // WAL + FULL sync: a committed transition survives a power cut. secure_delete zeroes the
  // pages that held a deleted VM's wrapped keys.
  VTM_RETURN_IF_ERROR(Exec("PRAGMA journal_mode=WAL"));
  VTM_RETURN_IF_ERROR(Exec("PRAGMA synchronous=FULL"));
  VTM_RETURN_IF_ERROR(Exec("PRAGMA secure_delete=ON"));
  // One transaction for the schema, new or upgraded: a crash half-way through would otherwise
  // leave tables without their schema_version, which the next open cannot take up (found by
  // a power cut at each sync point of a first open, through the Env).
  Txn txn(db_);
  if (!txn.ok()) return SqlError(db_, "begin");
  VTM_RETURN_IF_ERROR(Exec(
      "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
      "CREATE TABLE IF NOT EXISTS vms ("
      " uuid TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, service TEXT NOT NULL DEFAULT '', state TEXT NOT NULL,"
      " generation INTEGER NOT NULL, instance_uid INTEGER NOT NULL UNIQUE,"
      " wrapped_state_key BLOB NOT NULL, wrapped_migration_key BLOB NOT NULL,"
      " instance_pid INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,"
      " last_error TEXT NOT NULL DEFAULT '');"
      "CREATE TABLE IF NOT EXISTS certificates ("
      " serial INTEGER PRIMARY KEY, vm_uuid TEXT NOT NULL, kind TEXT NOT NULL, der BLOB NOT NULL,"
      " issued_at TEXT NOT NULL, revoked_at TEXT NOT NULL DEFAULT '', revoked_unix INTEGER NOT NULL DEFAULT 0);"
      "CREATE INDEX IF NOT EXISTS certificates_vm ON certificates (vm_uuid);"));
  Stmt get(db_, "SELECT value FROM meta WHERE key='schema_version'");
  if (!get.ok()) return SqlError(db_, "reading schema version");
  if (sqlite3_step(get.get()) == SQLITE_ROW) {
    int64_t v = std::stoll(get.ColText(0));
    if (v == 1) {
      // v1 -> v2: the IK's service name (certificates came with their own table above).
      VTM_RETURN_IF_ERROR(Exec("ALTER TABLE vms ADD COLUMN service TEXT NOT NULL DEFAULT '';"
                               "UPDATE meta SET value='2' WHERE key='schema_version'"));
      v = 2;
    }
    if (v == 2) {
      // v2 -> v3: the vTPM's public identity (EK/AK names and publics) for measured launch.
      VTM_RETURN_IF_ERROR(Exec(std::string(kVtpmColumnsDdl) + "UPDATE meta SET value='3' WHERE key='schema_version'"));
      v = 3;
    }
    if (v == 3) {
      VTM_RETURN_IF_ERROR(Exec(std::string(kMigrationDdl) + "UPDATE meta SET value='4' WHERE key='schema_version'"));
      v = 4;
    }
    if (v == 4) {
      // No anchor existed before v5, so no digest changes under one here. A later upgrade that
      // changes a table must verify the anchor before (Open would need the MAC key).
      VTM_RETURN_IF_ERROR(Exec(std::string(kStateDigestDdl) + "UPDATE meta SET value='5' WHERE key='schema_version'"));
      v = 5;
    }
    if (v != kSchemaVersion) {
      return Error(ErrorCode::kFailedPrecondition, "registry " + path + " has schema version " + std::to_string(v) +
                                                       "; this vtmd understands version " +
                                                       std::to_string(kSchemaVersion));
    }
    return txn.Commit();
  }
  // A new registry: the v1 tables above plus every later column.
  VTM_RETURN_IF_ERROR(Exec(kVtpmColumnsDdl));
  VTM_RETURN_IF_ERROR(Exec(kMigrationDdl));
  VTM_RETURN_IF_ERROR(Exec(kStateDigestDdl));
  VTM_RETURN_IF_ERROR(Exec("INSERT INTO meta VALUES ('schema_version', '" + std::to_string(kSchemaVersion) + "')"));
  return txn.Commit();
}

Registry::~Registry() {
  {
    MutexLock write_lock(write_mu_);
    closing_ = true;
  }
  counter_cv_.NotifyAll();
  if (counter_thread_.joinable()) counter_thread_.join();
  sqlite3_close(db_);
}

Status Registry::Exec(const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown";
    sqlite3_free(err);
    return Error(ErrorCode::kIo, "registry: " + msg);
  }
  return OkStatus();
}

Status Registry::Insert(VmRecord* record, uint32_t uid_base, uint32_t uid_count) {
  return SealedWrite(/*lifecycle=*/true, [&]() -> Status {
    mu_.AssertHeld();
    {
      Stmt dup(db_, "SELECT uuid, name FROM vms WHERE uuid=?1 OR name=?2");
      dup.Text(1, record->uuid);
      dup.Text(2, record->name);
      if (sqlite3_step(dup.get()) == SQLITE_ROW) {
        bool same_uuid = dup.ColText(0) == record->uuid;
        return Error(ErrorCode::kAlreadyExists,
                     same_uuid ? "a vTPM for VM " + record->uuid + " exists already"
                               : "the name '" + record->name + "' is taken by VM " + dup.ColText(0));
      }
    }
    if (record->generation == 0) record->generation = 1;
    {
      Stmt tomb(db_, "SELECT generation, destination, migration_id FROM tombstones WHERE vm_uuid=?1");
      tomb.Text(1, record->uuid);
      if (sqlite3_step(tomb.get()) == SQLITE_ROW) {
        const auto left = static_cast<uint64_t>(tomb.ColInt(0));
        if (record->generation <= left) {
          return Error(ErrorCode::kAlreadyExists,
                       "VM " + record->uuid + " migrated from this host to " + tomb.ColText(1) + " at generation " +
                           std::to_string(left) + " (migration " + tomb.ColText(2) +
                           "); its vTPM lives there now and cannot be created or started here again");
        }
        Stmt del(db_, "DELETE FROM tombstones WHERE vm_uuid=?1");
        del.Text(1, record->uuid);
        if (sqlite3_step(del.get()) != SQLITE_DONE) return SqlError(db_, "replacing the tombstone of " + record->uuid);
      }
    }
    // Lowest free uid: the registry is the only allocator of the range.
    uint32_t uid = uid_base;
    {
      Stmt used(db_,
                "SELECT instance_uid FROM vms WHERE instance_uid >= ?1 AND instance_uid < ?2 ORDER BY instance_uid");
      used.Int(1, uid_base);
      used.Int(2, static_cast<int64_t>(uid_base) + uid_count);
      while (sqlite3_step(used.get()) == SQLITE_ROW) {
        if (static_cast<uint32_t>(used.ColInt(0)) != uid) break;
        ++uid;
      }
    }
    if (uid >= static_cast<uint64_t>(uid_base) + uid_count) {
      return Error(ErrorCode::kUnavailable, "all " + std::to_string(uid_count) + " instance uids from " +
                                                std::to_string(uid_base) + " are in use; raise --instance-uid-count");
    }
    record->instance_uid = uid;
    record->created_at = record->updated_at = NowUtc();
    Stmt ins(db_, std::string("INSERT INTO vms (") + kColumns + ") VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)");
    ins.Text(1, record->uuid);
    ins.Text(2, record->name);
    ins.Text(3, record->service);
    ins.Text(4, VmStateName(record->state));
    ins.Int(5, static_cast<int64_t>(record->generation));
    ins.Int(6, record->instance_uid);
    ins.Blob(7, record->wrapped_state_key);
    ins.Blob(8, record->wrapped_migration_key);
    ins.Int(9, record->instance_pid);
    ins.Text(10, record->created_at);
    ins.Text(11, record->updated_at);
    ins.Text(12, record->last_error);
    if (sqlite3_step(ins.get()) != SQLITE_DONE) return SqlError(db_, "inserting VM " + record->uuid);
    if (record->nv_certificates_pending) {
      Stmt pending(db_, "UPDATE vms SET nv_certificates_pending=1 WHERE uuid=?1");
      pending.Text(1, record->uuid);
      if (sqlite3_step(pending.get()) != SQLITE_DONE) return SqlError(db_, "inserting VM " + record->uuid);
    }
    if (!record->state_sha256.empty()) {
      Stmt digest(db_, "UPDATE vms SET state_sha256=?1 WHERE uuid=?2");
      digest.Blob(1, record->state_sha256);
      digest.Text(2, record->uuid);
      if (sqlite3_step(digest.get()) != SQLITE_DONE) return SqlError(db_, "inserting VM " + record->uuid);
    }
    return OkStatus();
  });
}

Result<std::vector<VmRecord>> Registry::Query(const std::string& where, const std::vector<std::string>& args) {
  Stmt q(db_, std::string("SELECT ") + kColumns + ", " + kVtpmColumns +
                  ", nv_certificates_pending, state_sha256 FROM vms " + where);
  if (!q.ok()) return SqlError(db_, "query");
  for (size_t i = 0; i < args.size(); ++i) q.Text(static_cast<int>(i + 1), args[i]);
  std::vector<VmRecord> out;
  int rc;
  while ((rc = sqlite3_step(q.get())) == SQLITE_ROW) {
    VmRecord r;
    r.uuid = q.ColText(0);
    r.name = q.ColText(1);
    r.service = q.ColText(2);
    VTM_ASSIGN_OR_RETURN(r.state, ParseVmState(q.ColText(3)));
    r.generation = static_cast<uint64_t>(q.ColInt(4));
    r.instance_uid = static_cast<uint32_t>(q.ColInt(5));
    r.wrapped_state_key = q.ColText(6);
    r.wrapped_migration_key = q.ColText(7);
    r.instance_pid = q.ColInt(8);
    r.created_at = q.ColText(9);
    r.updated_at = q.ColText(10);
    r.last_error = q.ColText(11);
    r.vtpm.ek_name = q.ColText(12);
    r.vtpm.ek_rsa_name = q.ColText(13);
    r.vtpm.ak_name = q.ColText(14);
    r.vtpm.ek_public = q.ColText(15);
    r.vtpm.ak_public = q.ColText(16);
    r.nv_certificates_pending = q.ColInt(17) != 0;
    r.state_sha256 = q.ColText(18);
    out.push_back(std::move(r));
  }
  if (rc != SQLITE_DONE) return SqlError(db_, "query");
  return out;
}

Result<VmRecord> Registry::Get(const std::string& uuid_or_name) {
  MutexLock lock(mu_);
  VTM_ASSIGN_OR_RETURN(auto rows, Query("WHERE uuid=?1 OR name=?1 ORDER BY (uuid=?1) DESC", {uuid_or_name}));
  if (rows.empty()) {
    Stmt tomb(db_, "SELECT generation, destination, migration_id FROM tombstones WHERE vm_uuid=?1");
    tomb.Text(1, uuid_or_name);
    if (sqlite3_step(tomb.get()) == SQLITE_ROW) {
      return Error(ErrorCode::kNotFound, "VM " + uuid_or_name + " migrated from this host to " + tomb.ColText(1) +
                                             " (migration " + tomb.ColText(2) + ", generation " +
                                             std::to_string(tomb.ColInt(0)) + "); its vTPM is no longer here");
    }
    return Error(ErrorCode::kNotFound, "no vTPM for VM '" + uuid_or_name + "'; `vtmctl list` shows the known VMs");
  }
  return rows.front();
}

Result<std::vector<VmRecord>> Registry::List() {
  MutexLock lock(mu_);
  return Query("ORDER BY created_at, name", {});
}

Result<VmRecord> Registry::Transition(const std::string& uuid, uint64_t expected_generation,
                                      const std::set<VmState>& from, VmState to, std::optional<int64_t> pid,
                                      std::optional<std::string> last_error, std::optional<std::string> state_sha256) {
  return SealedWrite(/*lifecycle=*/true, [&]() -> Result<VmRecord> {
    mu_.AssertHeld();
    VTM_ASSIGN_OR_RETURN(VmRecord r, TransitionInTxn(uuid, expected_generation, from, to, pid, std::move(last_error),
                                                     std::move(state_sha256)));
    return r;
  });
}

Result<VmRecord> Registry::TransitionWithMigration(const std::string& uuid, uint64_t expected_generation,
                                                   const std::set<VmState>& from, VmState to,
                                                   const std::string& migration_id,
                                                   const std::set<std::string>& migration_from,
                                                   const std::string& migration_to,
                                                   std::optional<std::string> state_sha256) {
  return SealedWrite(/*lifecycle=*/true, [&]() -> Result<VmRecord> {
    mu_.AssertHeld();
    VTM_ASSIGN_OR_RETURN(VmRecord r, TransitionInTxn(uuid, expected_generation, from, to, std::nullopt, std::nullopt,
                                                     std::move(state_sha256)));
    VTM_RETURN_IF_ERROR(UpdateMigrationInTxn(migration_id, migration_from, migration_to, std::nullopt));
    return r;
  });
}

Result<VmRecord> Registry::TransitionInTxn(const std::string& uuid, uint64_t expected_generation,
                                           const std::set<VmState>& from, VmState to, std::optional<int64_t> pid,
                                           std::optional<std::string> last_error,
                                           std::optional<std::string> state_sha256) {
  VTM_ASSIGN_OR_RETURN(auto rows, Query("WHERE uuid=?1", {uuid}));
  if (rows.empty()) return Error(ErrorCode::kNotFound, "no vTPM for VM '" + uuid + "'");
  VmRecord r = std::move(rows.front());
  if (r.generation != expected_generation) {
    return Error(ErrorCode::kFailedPrecondition,
                 "VM " + uuid + " was changed by another operation meanwhile (it is now " + VmStateName(r.state) +
                     ", generation " + std::to_string(r.generation) + "); `vtmctl show " + uuid + "` shows it");
  }
  if (!from.count(r.state)) {
    return Error(ErrorCode::kFailedPrecondition, std::string("VM ") + uuid + " is " + VmStateName(r.state));
  }
  r.state = to;
  r.generation += 1;
  r.updated_at = NowUtc();
  if (pid) r.instance_pid = *pid;
  if (last_error) r.last_error = *last_error;
  if (state_sha256) r.state_sha256 = *state_sha256;
  Stmt up(db_,
          "UPDATE vms SET state=?1, generation=?2, updated_at=?3, instance_pid=?4, last_error=?5, state_sha256=?7 "
          "WHERE uuid=?6");
  up.Text(1, VmStateName(r.state));
  up.Int(2, static_cast<int64_t>(r.generation));
  up.Text(3, r.updated_at);
  up.Int(4, r.instance_pid);
  up.Text(5, r.last_error);
  up.Text(6, uuid);
  up.Blob(7, r.state_sha256);
  if (sqlite3_step(up.get()) != SQLITE_DONE) return SqlError(db_, "updating VM " + uuid);
  return r;
}

Status Registry::SetVtpmIdentity(const std::string& uuid, const VtpmPublicIdentity& id) {
  return SealedWrite(/*lifecycle=*/false, [&]() -> Status {
    mu_.AssertHeld();
    Stmt up(
        db_,
        "UPDATE vms SET vtpm_ek_name=?1, vtpm_ek_rsa_name=?2, vtpm_ak_name=?3, vtpm_ek_public=?4, vtpm_ak_public=?5 "
        "WHERE uuid=?6");
    up.Blob(1, id.ek_name);
    up.Blob(2, id.ek_rsa_name);
    up.Blob(3, id.ak_name);
    up.Blob(4, id.ek_public);
    up.Blob(5, id.ak_public);
    up.Text(6, uuid);
    if (sqlite3_step(up.get()) != SQLITE_DONE) return SqlError(db_, "recording the vTPM identity of VM " + uuid);
    if (sqlite3_changes(db_) != 1) return Error(ErrorCode::kNotFound, "no vTPM for VM '" + uuid + "'");
    return OkStatus();
  });
}

Status Registry::Remove(const std::string& uuid, uint64_t expected_generation,
                        const std::optional<Tombstone>& tombstone) {
  return SealedWrite(/*lifecycle=*/true, [&]() -> Status {
    mu_.AssertHeld();
    Stmt del(db_, "DELETE FROM vms WHERE uuid=?1 AND generation=?2");
    del.Text(1, uuid);
    del.Int(2, static_cast<int64_t>(expected_generation));
    if (sqlite3_step(del.get()) != SQLITE_DONE) return SqlError(db_, "deleting VM " + uuid);
    if (sqlite3_changes(db_) != 1) {
      return Error(ErrorCode::kFailedPrecondition,
                   "VM " + uuid + " was changed by another operation meanwhile; it was not removed");
    }
    if (tombstone) {
      Stmt ins(db_,
               "INSERT OR REPLACE INTO tombstones (vm_uuid, generation, destination, migration_id, at) "
               "VALUES (?1,?2,?3,?4,?5)");
      ins.Text(1, uuid);
      ins.Int(2, static_cast<int64_t>(tombstone->generation));
      ins.Text(3, tombstone->destination);
      ins.Text(4, tombstone->migration_id);
      ins.Text(5, NowUtc());
      if (sqlite3_step(ins.get()) != SQLITE_DONE) return SqlError(db_, "recording the tombstone of VM " + uuid);
      Stmt mig(db_, "UPDATE migrations SET state='committed', updated_at=?1 WHERE id=?2");
      mig.Text(1, NowUtc());
      mig.Text(2, tombstone->migration_id);
      if (sqlite3_step(mig.get()) != SQLITE_DONE)
        return SqlError(db_, "recording migration " + tombstone->migration_id);
    }
    return OkStatus();
  });
}

Status Registry::SetNvCertificatesPending(const std::string& uuid, bool pending) {
  return SealedWrite(/*lifecycle=*/false, [&]() -> Status {
    mu_.AssertHeld();
    Stmt up(db_, "UPDATE vms SET nv_certificates_pending=?1 WHERE uuid=?2");
    up.Int(1, pending ? 1 : 0);
    up.Text(2, uuid);
    if (sqlite3_step(up.get()) != SQLITE_DONE) return SqlError(db_, "recording the NV certificates of VM " + uuid);
    if (sqlite3_changes(db_) != 1) return Error(ErrorCode::kNotFound, "no vTPM for VM '" + uuid + "'");
    return OkStatus();
  });
}

Status Registry::SetStateDigest(const std::string& uuid, uint64_t expected_generation, const std::string& sha256) {
  return SealedWrite(/*lifecycle=*/false, [&]() -> Status {
    mu_.AssertHeld();
    Stmt up(db_, "UPDATE vms SET state_sha256=?1 WHERE uuid=?2 AND generation=?3");
    up.Blob(1, sha256);
    up.Text(2, uuid);
    up.Int(3, static_cast<int64_t>(expected_generation));
    if (sqlite3_step(up.get()) != SQLITE_DONE) return SqlError(db_, "recording the state digest of VM " + uuid);
    if (sqlite3_changes(db_) != 1) {
      return Error(ErrorCode::kFailedPrecondition,
                   "VM " + uuid + " was changed by another operation meanwhile; its state digest was not recorded");
    }
    return OkStatus();
  });
}

Status Registry::SupersedeCertificates(const std::string& uuid, const std::set<uint64_t>& keep) {
  return SealedWrite(/*lifecycle=*/false, [&]() -> Status {
    mu_.AssertHeld();
    Stmt valid(db_, "SELECT serial FROM certificates WHERE vm_uuid=?1 AND revoked_at=''");
    valid.Text(1, uuid);
    std::vector<uint64_t> old;
    for (int rc; (rc = sqlite3_step(valid.get())) != SQLITE_DONE;) {
      if (rc != SQLITE_ROW) return SqlError(db_, "reading the certificates of VM " + uuid);
      const auto serial = static_cast<uint64_t>(valid.ColInt(0));
      if (!keep.count(serial)) old.push_back(serial);
    }
    for (uint64_t serial : old) {
      Stmt up(db_, "UPDATE certificates SET revoked_at=?1, revoked_unix=?2 WHERE serial=?3");
      up.Text(1, NowUtc());
      up.Int(2, static_cast<int64_t>(std::time(nullptr)));
      up.Int(3, static_cast<int64_t>(serial));
      if (sqlite3_step(up.get()) != SQLITE_DONE) return SqlError(db_, "revoking a certificate of VM " + uuid);
    }
    Stmt pending(db_, "UPDATE vms SET nv_certificates_pending=1 WHERE uuid=?1");
    pending.Text(1, uuid);
    if (sqlite3_step(pending.get()) != SQLITE_DONE) return SqlError(db_, "recording the NV certificates of VM " + uuid);
    if (sqlite3_changes(db_) != 1) return Error(ErrorCode::kNotFound, "no vTPM for VM '" + uuid + "'");
    return OkStatus();
  });
}

Result<std::vector<MigrationRecord>> Registry::QueryMigrations(const std::string& where,
                                                               const std::vector<std::string>& args) {
  Stmt q(db_, std::string("SELECT ") + kMigrationColumns + " FROM migrations " + where);
  if (!q.ok()) return SqlError(db_, "migration query");
  for (size_t i = 0; i < args.size(); ++i) q.Text(static_cast<int>(i + 1), args[i]);
  std::vector<MigrationRecord> out;
  int rc;
  while ((rc = sqlite3_step(q.get())) == SQLITE_ROW) {
    MigrationRecord m;
    m.id = q.ColText(0);
    m.vm_uuid = q.ColText(1);
    m.role = q.ColText(2);
    m.mode = q.ColText(3);
    m.peer = q.ColText(4);
    m.state = q.ColText(5);
    m.generation = static_cast<uint64_t>(q.ColInt(6));
    m.vm_state_before = q.ColText(7);
    m.prepared = q.ColText(8);
    m.created_at = q.ColText(9);
    m.updated_at = q.ColText(10);
    m.last_error = q.ColText(11);
    out.push_back(std::move(m));
  }
  if (rc != SQLITE_DONE) return SqlError(db_, "migration query");
  return out;
}

Status Registry::InsertMigration(MigrationRecord* m) {
  return SealedWrite(/*lifecycle=*/false, [&]() -> Status {
    mu_.AssertHeld();
    m->created_at = m->updated_at = NowUtc();
    Stmt ins(db_, std::string("INSERT INTO migrations (") + kMigrationColumns +
                      ") VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)");
    ins.Text(1, m->id);
    ins.Text(2, m->vm_uuid);
    ins.Text(3, m->role);
    ins.Text(4, m->mode);
    ins.Text(5, m->peer);
    ins.Text(6, m->state);
    ins.Int(7, static_cast<int64_t>(m->generation));
    ins.Text(8, m->vm_state_before);
    ins.Blob(9, m->prepared);
    ins.Text(10, m->created_at);
    ins.Text(11, m->updated_at);
    ins.Text(12, m->last_error);
    int rc = sqlite3_step(ins.get());
    if (rc == SQLITE_CONSTRAINT) return Error(ErrorCode::kAlreadyExists, "migration " + m->id + " exists already");
    if (rc != SQLITE_DONE) return SqlError(db_, "recording migration " + m->id);
    return OkStatus();
  });
}

Result<MigrationRecord> Registry::GetMigration(const std::string& id) {
  MutexLock lock(mu_);
  VTM_ASSIGN_OR_RETURN(auto rows, QueryMigrations("WHERE id=?1", {id}));
  if (rows.empty()) {
    return Error(ErrorCode::kNotFound, "no migration '" + id + "' on this host; `vtmctl migrate status` lists them");
  }
  return rows.front();
}

Result<std::vector<MigrationRecord>> Registry::ListMigrations() {
  MutexLock lock(mu_);
  return QueryMigrations("ORDER BY created_at, id", {});
}

Result<std::optional<MigrationRecord>> Registry::OpenMigrationOf(const std::string& vm_uuid, const std::string& role) {
  MutexLock lock(mu_);
  VTM_ASSIGN_OR_RETURN(auto rows,
                       QueryMigrations("WHERE vm_uuid=?1 AND role=?2 ORDER BY created_at DESC", {vm_uuid, role}));
  for (auto& m : rows) {
    if (!Ended(m.state)) return std::optional<MigrationRecord>(std::move(m));
  }
  return std::optional<MigrationRecord>();
}

Result<MigrationRecord> Registry::UpdateMigration(const std::string& id, const std::set<std::string>& from,
                                                  const std::string& to, std::optional<std::string> last_error) {
  return SealedWrite(/*lifecycle=*/false, [&]() -> Result<MigrationRecord> {
    mu_.AssertHeld();
    VTM_ASSIGN_OR_RETURN(MigrationRecord m, UpdateMigrationInTxn(id, from, to, std::move(last_error)));
    return m;
  });
}

Result<MigrationRecord> Registry::UpdateMigrationInTxn(const std::string& id, const std::set<std::string>& from,
                                                       const std::string& to, std::optional<std::string> last_error) {
  VTM_ASSIGN_OR_RETURN(auto rows, QueryMigrations("WHERE id=?1", {id}));
  if (rows.empty()) return Error(ErrorCode::kNotFound, "no migration '" + id + "' on this host");
  MigrationRecord m = std::move(rows.front());
  if (!from.count(m.state)) {
    return Error(ErrorCode::kFailedPrecondition, "migration " + id + " is " + m.state);
  }
  m.state = to;
  m.updated_at = NowUtc();
  if (last_error) m.last_error = *last_error;
  Stmt up(db_, "UPDATE migrations SET state=?1, updated_at=?2, last_error=?3 WHERE id=?4");
  up.Text(1, m.state);
  up.Text(2, m.updated_at);
  up.Text(3, m.last_error);
  up.Text(4, id);
  if (sqlite3_step(up.get()) != SQLITE_DONE) return SqlError(db_, "updating migration " + id);
  return m;
}

Status Registry::SetMigrationPrepared(const std::string& id, const std::string& prepared) {
  return SealedWrite(/*lifecycle=*/false, [&]() -> Status {
    mu_.AssertHeld();
    Stmt up(db_, "UPDATE migrations SET prepared=?1, updated_at=?2 WHERE id=?3");
    up.Blob(1, prepared);
    up.Text(2, NowUtc());
    up.Text(3, id);
    if (sqlite3_step(up.get()) != SQLITE_DONE) return SqlError(db_, "updating migration " + id);
    if (sqlite3_changes(db_) != 1) return Error(ErrorCode::kNotFound, "no migration '" + id + "' on this host");
    return OkStatus();
  });
}

Result<std::optional<Tombstone>> Registry::GetTombstone(const std::string& vm_uuid) {
  MutexLock lock(mu_);
  Stmt q(db_, "SELECT vm_uuid, generation, destination, migration_id, at FROM tombstones WHERE vm_uuid=?1");
  q.Text(1, vm_uuid);
  int rc = sqlite3_step(q.get());
  if (rc == SQLITE_DONE) return std::optional<Tombstone>();
  if (rc != SQLITE_ROW) return SqlError(db_, "tombstone query");
  Tombstone t;
  t.vm_uuid = q.ColText(0);
  t.generation = static_cast<uint64_t>(q.ColInt(1));
  t.destination = q.ColText(2);
  t.migration_id = q.ColText(3);
  t.at = q.ColText(4);
  return std::optional<Tombstone>(std::move(t));
}

Result<uint64_t> Registry::NewSerial() {
  MutexLock lock(mu_);
  for (;;) {
    VTM_ASSIGN_OR_RETURN(SecretBytes random, RandomSecret(sizeof(uint64_t)));
    uint64_t serial = 0;
    for (size_t i = 0; i < random.size(); ++i) serial = (serial << 8) | random.data()[i];
    if (serial == 0) continue;
    Stmt q(db_, "SELECT 1 FROM certificates WHERE serial=?1");
    q.Int(1, static_cast<int64_t>(serial));  // stored as the same 64 bits, signed
    if (sqlite3_step(q.get()) != SQLITE_ROW) return serial;
  }
}

Result<uint64_t> Registry::NextCrlNumber() {
  MutexLock lock(mu_);
  return NextCounter("next_crl_number");
}

Result<uint64_t> Registry::NextCounter(const std::string& key) {
  Txn txn(db_);
  if (!txn.ok()) return SqlError(db_, "begin");
  uint64_t next = 1;
  {
    Stmt get(db_, "SELECT value FROM meta WHERE key=?1");
    get.Text(1, key);
    if (sqlite3_step(get.get()) == SQLITE_ROW) next = std::stoull(get.ColText(0));
  }
  Stmt put(db_, "INSERT OR REPLACE INTO meta VALUES (?1, ?2)");
  put.Text(1, key);
  put.Text(2, std::to_string(next + 1));
  if (sqlite3_step(put.get()) != SQLITE_DONE) return SqlError(db_, "counter " + key);
  VTM_RETURN_IF_ERROR(txn.Commit());
  return next;
}

Status Registry::AddCertificates(const std::vector<CertRecord>& certs) {
  return SealedWrite(/*lifecycle=*/false, [&]() -> Status {
    mu_.AssertHeld();
    for (const auto& c : certs) {
      Stmt ins(db_, "INSERT INTO certificates (serial, vm_uuid, kind, der, issued_at) VALUES (?1,?2,?3,?4,?5)");
      ins.Int(1, static_cast<int64_t>(c.serial));
      ins.Text(2, c.vm_uuid);
      ins.Text(3, c.kind);
      ins.Blob(4, c.der);
      ins.Text(5, c.issued_at.empty() ? NowUtc() : c.issued_at);
      if (sqlite3_step(ins.get()) != SQLITE_DONE)
        return SqlError(db_, "recording certificate " + std::to_string(c.serial));
    }
    return OkStatus();
  });
}

Result<std::vector<CertRecord>> Registry::QueryCerts(const std::string& where, const std::string& arg) {
  Stmt q(db_, "SELECT serial, vm_uuid, kind, der, issued_at, revoked_at, revoked_unix FROM certificates " + where);
  if (!arg.empty()) q.Text(1, arg);
  std::vector<CertRecord> out;
  int rc;
  while ((rc = sqlite3_step(q.get())) == SQLITE_ROW) {
    CertRecord c;
    c.serial = static_cast<uint64_t>(q.ColInt(0));
    c.vm_uuid = q.ColText(1);
    c.kind = q.ColText(2);
    c.der = q.ColText(3);
    c.issued_at = q.ColText(4);
    c.revoked_at = q.ColText(5);
    c.revoked_unix = q.ColInt(6);
    out.push_back(std::move(c));
  }
  if (rc != SQLITE_DONE) return SqlError(db_, "certificate query");
  return out;
}

Result<std::vector<CertRecord>> Registry::CertificatesOf(const std::string& vm_uuid) {
  MutexLock lock(mu_);
  return QueryCerts("WHERE vm_uuid=?1 ORDER BY serial", vm_uuid);
}

Result<std::vector<CertRecord>> Registry::RevokedCertificates() {
  MutexLock lock(mu_);
  return QueryCerts("WHERE revoked_at != '' ORDER BY serial", "");
}

Result<int> Registry::RevokeCertificatesOf(const std::string& vm_uuid) {
  return SealedWrite(/*lifecycle=*/false, [&]() -> Result<int> {
    mu_.AssertHeld();
    Stmt up(db_, "UPDATE certificates SET revoked_at=?1, revoked_unix=?2 WHERE vm_uuid=?3 AND revoked_at=''");
    up.Text(1, NowUtc());
    up.Int(2, static_cast<int64_t>(std::time(nullptr)));
    up.Text(3, vm_uuid);
    if (sqlite3_step(up.get()) != SQLITE_DONE) return SqlError(db_, "revoking certificates of VM " + vm_uuid);
    const int revoked = sqlite3_changes(db_);
    return revoked;
  });
}

Result<std::vector<CertRecord>> Registry::ValidCertificates() {
  MutexLock lock(mu_);
  return QueryCerts("WHERE revoked_at = '' ORDER BY serial", "");
}

Result<int> Registry::RevokeCertificates(const std::set<uint64_t>& serials) {
  if (serials.empty()) return 0;
  return SealedWrite(/*lifecycle=*/false, [&]() -> Result<int> {
    mu_.AssertHeld();
    const std::string now = NowUtc();
    const auto now_unix = static_cast<int64_t>(std::time(nullptr));
    int revoked = 0;
    for (uint64_t serial : serials) {
      Stmt up(db_, "UPDATE certificates SET revoked_at=?1, revoked_unix=?2 WHERE serial=?3 AND revoked_at=''");
      up.Text(1, now);
      up.Int(2, now_unix);
      up.Int(3, static_cast<int64_t>(serial));
      if (sqlite3_step(up.get()) != SQLITE_DONE) return SqlError(db_, "revoking certificate " + std::to_string(serial));
      revoked += sqlite3_changes(db_);
    }
    return revoked;
  });
}

// Rollback protection.

namespace {

// The tables the anchor covers, in the digest's order; meta without the anchor itself and the
// CRL number (see kAnchorEpochKey).
constexpr const char* kAnchoredTables[] = {"vms", "migrations", "tombstones", "certificates", "meta"};
// Tables whose rows SQLite may replace without telling the update hook (INSERT OR REPLACE
// deletes the conflicting row silently): summed anew whenever touched. Both stay small.
bool SummedWhole(const std::string& table) { return table == "meta" || table == "tombstones"; }

std::string SelectAnchored(const std::string& table) {
  std::string sql = "SELECT * FROM " + table;
  if (table == "meta") {
    sql += " WHERE key NOT IN ('" + std::string(kAnchorEpochKey) + "', '" + kAnchorMacKey + "', 'next_crl_number')";
  }
  return sql;
}

Result<std::string> HmacSha256(const SecretBytes& key, const std::string& message) {
  unsigned char mac[32];
  unsigned int mac_len = 0;
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(message.data()),
           message.size(), mac, &mac_len) == nullptr ||
      mac_len != sizeof mac) {
    return Error(ErrorCode::kInternal, "HMAC-SHA256 of the registry failed");
  }
  return std::string(reinterpret_cast<const char*>(mac), mac_len);
}

// 256-bit integers mod 2^256, as four 64-bit limbs, least significant first.
void AddTo(Registry::Sum256& sum, const Registry::Sum256& v, bool subtract) {
  unsigned __int128 carry = 0;
  for (size_t i = 0; i < sum.size(); ++i) {
    if (!subtract) {
      unsigned __int128 t = static_cast<unsigned __int128>(sum[i]) + v[i] + carry;
      sum[i] = static_cast<uint64_t>(t);
      carry = t >> 64;
    } else {
      const uint64_t sub = v[i] + static_cast<uint64_t>(carry);
      const bool borrow = sum[i] < sub || (carry != 0 && sub == 0);
      sum[i] -= sub;
      carry = borrow ? 1 : 0;
    }
  }
}

Registry::Sum256 FromBigEndian(const std::string& bytes) {
  Registry::Sum256 v{};
  for (size_t i = 0; i < 32; ++i) {
    v[3 - i / 8] = (v[3 - i / 8] << 8) | static_cast<uint8_t>(bytes[i]);
  }
  return v;
}

std::string ToBigEndian(const Registry::Sum256& v) {
  std::string out;
  for (int i = 3; i >= 0; --i) out += BigEndian64(v[static_cast<size_t>(i)]);
  return out;
}

}  // namespace

// Every column of a row from column `first` on, each value typed and length-prefixed, so no two
// different rows serialize the same way and a column a later schema adds is covered without a
// change here.
void Registry::SerializeRow(sqlite3_stmt* row, int first, std::string* out) {
  const int columns = sqlite3_column_count(row);
  out->push_back('R');
  for (int c = first; c < columns; ++c) {
    const int type = sqlite3_column_type(row, c);
    out->push_back(static_cast<char>('0' + type));
    if (type == SQLITE_INTEGER) {
      *out += BigEndian64(static_cast<uint64_t>(sqlite3_column_int64(row, c)));
    } else if (type != SQLITE_NULL) {
      const auto* p = static_cast<const char*>(sqlite3_column_blob(row, c));
      const auto n = static_cast<size_t>(sqlite3_column_bytes(row, c));
      *out += BigEndian64(n);
      if (n > 0) out->append(p, n);
    }
  }
}

Result<std::string> Registry::LegacyContentDigest() {
  std::string data = "vtm registry digest v1";
  for (const char* table : kAnchoredTables) {
    Stmt q(db_, SelectAnchored(table) + " ORDER BY 1");
    if (!q.ok()) return SqlError(db_, std::string("digest of ") + table);
    data.append(table).push_back('\0');
    int rc;
    while ((rc = sqlite3_step(q.get())) == SQLITE_ROW) SerializeRow(q.get(), 0, &data);
    if (rc != SQLITE_DONE) return SqlError(db_, std::string("digest of ") + table);
  }
  return Sha256Digest(data);
}

Result<Registry::Sum256> Registry::RowSum(const std::string& table, sqlite3_stmt* row) {
  std::string message = "vtm registry row v2";
  message.push_back('\0');
  message.append(table).push_back('\0');
  SerializeRow(row, /*first=*/1, &message);  // column 0 is the rowid
  VTM_ASSIGN_OR_RETURN(std::string mac, HmacSha256(mac_key_, message));
  return FromBigEndian(mac);
}

Status Registry::SumTable(const std::string& table) {
  TableSum fresh;
  Stmt q(db_, "SELECT rowid, " + SelectAnchored(table).substr(std::string("SELECT ").size()));
  if (!q.ok()) return SqlError(db_, "digest of " + table);
  int rc;
  while ((rc = sqlite3_step(q.get())) == SQLITE_ROW) {
    VTM_ASSIGN_OR_RETURN(Sum256 h, RowSum(table, q.get()));
    AddTo(fresh.total, h, false);
    if (!SummedWhole(table)) fresh.rows[q.ColInt(0)] = h;
  }
  if (rc != SQLITE_DONE) return SqlError(db_, "digest of " + table);
  sums_[table] = std::move(fresh);
  return OkStatus();
}

Status Registry::UpdateSums() {
  if (!sums_valid_) {
    touched_.clear();
    for (const char* table : kAnchoredTables) VTM_RETURN_IF_ERROR(SumTable(table));
    sums_valid_ = true;
    return OkStatus();
  }
  // Rows written since the last seal (and, harmlessly, rows of a rolled-back write, which read
  // back as they were).
  std::set<std::string> whole;
  for (const auto& [table, rowid] : touched_) {
    if (!sums_.count(table)) continue;  // not an anchored table
    if (SummedWhole(table)) {
      whole.insert(table);
      continue;
    }
    TableSum& sum = sums_[table];
    if (auto it = sum.rows.find(rowid); it != sum.rows.end()) {
      AddTo(sum.total, it->second, /*subtract=*/true);
      sum.rows.erase(it);
    }
    Stmt q(db_, "SELECT rowid, * FROM " + table + " WHERE rowid=?1");
    q.Int(1, rowid);
    const int rc = sqlite3_step(q.get());
    if (rc == SQLITE_ROW) {
      VTM_ASSIGN_OR_RETURN(Sum256 h, RowSum(table, q.get()));
      AddTo(sum.total, h, false);
      sum.rows[rowid] = h;
    } else if (rc != SQLITE_DONE) {
      sums_valid_ = false;
      return SqlError(db_, "digest of " + table);
    }
  }
  touched_.clear();
  for (const auto& table : whole) {
    if (Status st = SumTable(table); !st.ok()) {
      sums_valid_ = false;
      return st;
    }
  }
  return OkStatus();
}

std::string Registry::ContentDigest() {
  // A keyed sum of the rows of each table (MSet-Add-Hash): changed row by row as rows are
  // written, so a write costs in proportion to what it writes, not to the registry's size, and
  // nobody without the key finds another set of rows with the same sums.
  std::string data = "vtm registry digest v2";
  for (const char* table : kAnchoredTables) {
    data.append(table).push_back('\0');
    data += ToBigEndian(sums_[table].total);
  }
  return Sha256Digest(data);
}

void Registry::OnRowWritten(void* self, int /*op*/, const char* /*db*/, const char* table, sqlite3_int64 rowid) {
  auto* registry = static_cast<Registry*>(self);
  registry->mu_.AssertHeld();  // SQLite calls it from a statement step, which runs under mu_
  registry->touched_.emplace(table, rowid);
}

Result<std::string> Registry::AnchorMac(uint64_t epoch, const std::string& digest) {
  std::string message = "vtm registry anchor v1";
  message.push_back('\0');
  message += BigEndian64(epoch) + digest;
  return HmacSha256(mac_key_, message);
}

Status Registry::Seal(uint64_t epoch) {
  VTM_RETURN_IF_ERROR(UpdateSums());
  VTM_ASSIGN_OR_RETURN(std::string mac, AnchorMac(epoch, ContentDigest()));
  Stmt put(db_, "INSERT OR REPLACE INTO meta VALUES (?1, ?2), (?3, ?4)");
  put.Text(1, kAnchorEpochKey);
  put.Text(2, std::to_string(epoch));
  put.Text(3, kAnchorMacKey);
  put.Blob(4, mac);
  if (sqlite3_step(put.get()) != SQLITE_DONE) return SqlError(db_, "recording the registry's epoch");
  return OkStatus();
}

Status Registry::CatchUpCounter() {
  if (counter_ == nullptr || counter_value_ >= epoch_) return OkStatus();
  // The last commit's increment has not happened yet (the counter thread is about to do it) or
  // failed (the TPM was busy or unreachable): it must happen before anything else is written,
  // or the epoch would run ahead of the counter by more than one.
  if (Status st = counter_->Increment(); !st.ok()) {
    return std::move(st).error().Context("the registry's epoch " + std::to_string(epoch_) + " is ahead of " +
                                         counter_->Describe() + " and it cannot catch up; nothing was written");
  }
  counter_value_ += 1;
  return OkStatus();
}

Status Registry::Commit(Txn& txn, bool lifecycle) {
  if (counter_ == nullptr) return txn.Commit();
  const uint64_t epoch = epoch_ + 1;
  VTM_RETURN_IF_ERROR(Seal(epoch));
  if (Status committed = txn.Commit(); !committed.ok()) {
    // A commit whose WAL write or fsync failed may still reach the disk (its frames were
    // written; a later sync makes them durable), so its outcome is unknown until a restart
    // reads the disk: no write may build on it meanwhile (leveldb's sticky background error).
    failed_commit_ = committed.error().message();
    sums_valid_ = false;
    return committed;
  }
  epoch_ = epoch;
  // A crash from here until the counter thread's increment leaves epoch = counter + 1, which
  // the next start rolls forward. The crash point is on the VM lifecycle writes only: vtmd's
  // own start-up writes (its TLS certificates) must not reach it, or a sweep that arms it could
  // not restart vtmd.
  if (lifecycle) CrashPoint("registry.committed-before-counter");
  increment_owed_ = true;
  counter_cv_.NotifyAll();
  return OkStatus();
}

Status Registry::SyncCounter() {
  MutexLock write_lock(write_mu_);
  return CatchUpCounter();
}

void Registry::CounterLoop() {
  MutexLock write_lock(write_mu_);
  for (;;) {
    counter_cv_.Wait(write_mu_, [this] {
      write_mu_.AssertHeld();
      return increment_owed_ || closing_;
    });
    if (!increment_owed_) return;  // closing, nothing owed
    increment_owed_ = false;
    if (counter_ == nullptr || counter_value_ >= epoch_) continue;  // a writer caught up first
    // Holding write_mu_ (not mu_): the next writer waits for this increment, readers do not.
    if (Status st = counter_->Increment(); !st.ok()) {
      LOG_WARNING << "registry epoch " << epoch_ << " is committed but incrementing " << counter_->Describe()
                  << " failed (" << st.error().message() << "); the next write retries it first";
      continue;
    }
    counter_value_ += 1;
  }
}

Result<AnchorReport> Registry::Anchor(SecretBytes mac_key, MonotonicCounter* counter, bool counter_is_new,
                                      bool accept_rollback) {
  MutexLock write_lock(write_mu_);
  MutexLock lock(mu_);
  mac_key_ = std::move(mac_key);
  sqlite3_update_hook(db_, &Registry::OnRowWritten, this);
  sums_valid_ = false;
  bool reseal = false;
  VTM_ASSIGN_OR_RETURN(uint64_t value, counter->Read());
  std::optional<uint64_t> epoch;
  std::string mac;
  {
    Stmt get(db_, "SELECT key, value FROM meta WHERE key IN (?1, ?2)");
    get.Text(1, kAnchorEpochKey);
    get.Text(2, kAnchorMacKey);
    int rc;
    while ((rc = sqlite3_step(get.get())) == SQLITE_ROW) {
      if (get.ColText(0) == kAnchorEpochKey) {
        try {
          epoch = std::stoull(get.ColText(1));
        } catch (const std::exception&) {
          epoch = 0;  // fails the HMAC below
        }
      } else {
        mac = get.ColText(1);
      }
    }
    if (rc != SQLITE_DONE) return SqlError(db_, "reading the registry's epoch");
  }
  const std::string counter_name = counter->Describe();
  const std::string at = " (" + counter_name + " is at " + std::to_string(value) + ")";
  std::string refusal;
  ErrorCode code = ErrorCode::kFailedPrecondition;
  AnchorReport report;
  if (!epoch) {
    if (counter_is_new) {
      report.newly_anchored = true;
    } else {
      refusal = "the registry " + path_ + " has no rollback anchor, but " + counter_name + " exists at " +
                std::to_string(value) + ": it is a copy from before rollback protection or its anchor was removed";
    }
  } else {
    VTM_RETURN_IF_ERROR(UpdateSums());
    VTM_ASSIGN_OR_RETURN(std::string expected, AnchorMac(*epoch, ContentDigest()));
    auto matches = [&mac](const std::string& e) {
      return mac.size() == e.size() && CRYPTO_memcmp(mac.data(), e.data(), mac.size()) == 0;
    };
    if (!matches(expected)) {
      // A registry sealed by a vtmd before the row-by-row digest: verified the old way, then
      // sealed anew below.
      VTM_ASSIGN_OR_RETURN(std::string digest, LegacyContentDigest());
      VTM_ASSIGN_OR_RETURN(std::string legacy, AnchorMac(*epoch, digest));
      reseal = matches(legacy);
    }
    if (!matches(expected) && !reseal) {
      code = ErrorCode::kDataLoss;
      refusal = "the registry " + path_ + " was changed outside vtmd: its HMAC over epoch " + std::to_string(*epoch) +
                " does not verify under this host's master key";
    } else if (counter_is_new) {
      refusal = "the registry " + path_ + " is anchored at epoch " + std::to_string(*epoch) + ", but " + counter_name +
                " did not exist (it was undefined, or the host TPM was cleared) and was defined anew" + at;
    } else if (*epoch == value) {
      // The normal case.
    } else if (*epoch == value + 1) {
      // A crash between a commit and its increment: the commit stands, the increment is owed.
      VTM_RETURN_IF_ERROR(counter->Increment());
      value += 1;
      report.rolled_forward = true;
    } else if (*epoch < value) {
      refusal = "the registry " + path_ + " is an older copy: its epoch is " + std::to_string(*epoch) + " but " +
                counter_name + " is at " + std::to_string(value) +
                " (a backup or snapshot was put back; VMs created, deleted or migrated since are not in it, and VMs "
                "deleted or migrated away since may be in it)";
    } else {
      refusal = "the registry " + path_ + " is at epoch " + std::to_string(*epoch) + ", ahead of " + counter_name +
                " at " + std::to_string(value) + ": it was written against another host TPM or counter";
    }
  }
  if (!refusal.empty()) {
    if (!accept_rollback) {
      return Error(code, refusal + ". vtmd refuses to start. Put back the newest copy of " + path_ +
                             " (together with its -wal file) if you have one; to accept the registry as it is "
                             "now instead, start vtmd once with --accept-registry-rollback (see the operator guide)");
    }
    report.accepted = true;
    report.accepted_reason = refusal;
  }
  if (!epoch || report.accepted || reseal) {
    Txn txn(db_);
    if (!txn.ok()) return SqlError(db_, "begin");
    VTM_RETURN_IF_ERROR(Seal(value));  // value == *epoch when only resealed
    VTM_RETURN_IF_ERROR(txn.Commit());
  }
  counter_ = counter;
  epoch_ = value;
  counter_value_ = value;
  report.epoch = value;
  if (!counter_thread_.joinable()) counter_thread_ = std::thread([this] { CounterLoop(); });
  return report;
}

}  // namespace vtm
