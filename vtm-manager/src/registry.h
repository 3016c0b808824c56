// The binding list (ISO/IEC 27070 5.3): VM UUID <-> vTPM instance, with its directories,
// wrapped keys, unprivileged uid and lifecycle state, in SQLite (WAL). Every lifecycle
// transition is one committed transaction that checks the state it leaves (compare-and-set),
// written BEFORE the side effect it allows, so a crash at any point leaves a state that the
// daemon's start-up reconciliation can finish or undo.
//
// Ownership: the generation is a fencing token. A caller reads a VM (state S, generation G),
// decides, and moves it with Transition(uuid, G, {S}, to): the transition commits only if the
// VM is still at G, so of two callers that read the same VM exactly one wins; the other gets
// kFailedPrecondition and must not touch the VM's files or processes. The winner's next
// transition passes the generation its own transition returned.
//
// Thread safety: all methods may be called from any thread (one connection behind a mutex).
#pragma once

#include <sqlite3.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "sqlite_env_vfs.h"
#include "vtm/env.h"
#include "vtm/error.h"
#include "vtm/mutex.h"
#include "vtm/secret.h"

namespace vtm {

// kMigratingOut: this host is moving the VM away (its instance, if live, keeps serving until
// commit); kIncoming: the VM is arriving here and is not active until its migration commits.
enum class VmState {
  kDefined,
  kProvisioned,
  kStarting,
  kRunning,
  kStopping,
  kStopped,
  kDeleting,
  kFailed,
  kMigratingOut,
  kIncoming,
};

const char* VmStateName(VmState state);  // "provisioned", "running", ...
Result<VmState> ParseVmState(const std::string& name);

// The public identity of a provisioned vTPM, recorded at provisioning: what measured launch
// extends into the host PCR and what deep attestation names. TPM names are nameAlg || digest.
struct VtpmPublicIdentity {
  std::string ek_name;      // ECC P-256 EK
  std::string ek_rsa_name;  // RSA 2048 EK
  std::string ak_name;
  std::string ek_public;  // marshalled TPM2B_PUBLIC of the ECC EK
  std::string ak_public;  // marshalled TPM2B_PUBLIC of the AK
};

struct VmRecord {
  std::string uuid;
  std::string name;
  std::string service;  // the service this VM's identity key (IK) is for; may be empty
  VmState state = VmState::kProvisioned;
  uint64_t generation = 0;
  uint32_t instance_uid = 0;
  std::string wrapped_state_key;      // AES-256-GCM under the master key (see MasterKey)
  std::string wrapped_migration_key;  // likewise
  int64_t instance_pid = 0;
  std::string created_at;
  std::string updated_at;
  std::string last_error;
  VtpmPublicIdentity vtpm;  // empty for a vTPM created without identity
  // Certificates issued by this host's CA that are not yet in the vTPM's NV indices (a VM
  // that arrived by migration): written by the next start, before any guest sees the vTPM.
  bool nv_certificates_pending = false;
  // SHA-256 over the vTPM's state files as vtmd last saw them at rest (after provisioning, a
  // clean stop, an arriving migration); empty if unknown (a stop that did not finish cleanly).
  // A start refuses state that differs (an older copy put back): see Manager::Start.
  std::string state_sha256;
};

// One migration as one host sees it (ISO/IEC 27070 6.6). The destination assigns the ID.
// role "source": state preparing -> prepared -> sent -> committing -> committed | aborted;
// role "destination": prepared -> received -> committed | aborted.
struct MigrationRecord {
  std::string id;
  std::string vm_uuid;
  std::string role;  // "source" | "destination"
  std::string mode;  // "live" | "cold"
  std::string peer;  // the other vtmd: HOST:PORT (source) or its certificate subject (destination)
  std::string state;
  uint64_t generation = 0;      // the VM's generation the migration carries (the fencing token)
  std::string vm_state_before;  // source: the VM's state before (where an abort returns it)
  // source: the destination's PrepareResponse (public: evidence, import key, its certification);
  // destination: the import key blob (TPM-encrypted, only this host TPM loads it) and the
  // source's nonce.
  std::string prepared;
  std::string created_at;
  std::string updated_at;
  std::string last_error;
};

// What remains on the source of a VM that migrated away: a start or a stale actor finds it
// here, not a fresh VM.
struct Tombstone {
  std::string vm_uuid;
  uint64_t generation = 0;  // the generation that left
  std::string destination;
  std::string migration_id;
  std::string at;
};

// A certificate the host CA issued. Kept after its VM is deleted (revoked), for the CRL.
struct CertRecord {
  uint64_t serial = 0;
  std::string vm_uuid;
  std::string kind;  // "ek-ecc", "ek-rsa", "ak", "ik"
  std::string der;
  std::string issued_at;
  std::string revoked_at;  // empty while valid
  int64_t revoked_unix = 0;
};

// The host TPM's monotonic counter as the registry's rollback protection uses it.
class MonotonicCounter {
 public:
  virtual ~MonotonicCounter() = default;
  virtual Result<uint64_t> Read() = 0;
  virtual Status Increment() = 0;            // by one
  virtual std::string Describe() const = 0;  // e.g. "the NV counter 0x01800a7d of the host TPM"
};

// What Registry::Anchor found and did at start.
struct AnchorReport {
  uint64_t epoch = 0;           // the registry's epoch after the check (== the counter)
  bool newly_anchored = false;  // a registry without an anchor, with a counter defined by this start
  bool rolled_forward = false;  // a crash came between a commit and its increment: incremented now
  bool accepted = false;        // --accept-registry-rollback re-anchored a refused registry
  std::string accepted_reason;  // what was accepted (the refusal it overrode)
};

// Rollback protection. The registry holds an epoch and an HMAC-SHA256 (key derived from the
// master key) over the epoch and a digest of every table (VMs with their wrapped keys and state
// digests, migrations, tombstones, certificates, meta except the CRL number). Every write
// updates both in its own transaction, then increments the host TPM's counter, which so equals
// the epoch except between a commit and its increment (a crash there leaves epoch = counter + 1,
// rolled forward at the next start). An older copy of the registry has a smaller epoch than the
// counter; an edited one fails the HMAC; both are refused at start (Anchor).
//
// The increment is not on the caller's path: a write returns once its transaction is durable,
// and the registry's counter thread increments right after (one NV write, a few ms), before any
// later write can commit (the next writer waits for it, or does it first). So the counter is
// at most one behind, for as long as one NV write takes; closing the registry finishes it.
class Registry {
 public:
  // What the database's files change on disk goes through env (which must outlive the
  // registry; sqlite_env_vfs.h).
  static Result<std::unique_ptr<Registry>> Open(const std::string& path, Env* env = Env::Default());
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Inserts a new VM with the lowest free uid in [uid_base, uid_base + uid_count); fills
  // record->instance_uid, timestamps and (if 0) the generation (1). kAlreadyExists if the uuid or
  // name is taken, or the uuid has a tombstone of a generation >= the record's (it migrated
  // away; an arriving VM of a later generation replaces the tombstone), kUnavailable if the uid
  // range is exhausted.
  Status Insert(VmRecord* record, uint32_t uid_base, uint32_t uid_count);
  // By UUID or, failing that, by name.
  Result<VmRecord> Get(const std::string& uuid_or_name);
  Result<std::vector<VmRecord>> List();

  // Moves uuid to `to` in one transaction and bumps the generation, if the VM is still at
  // expected_generation and in one of `from`; kFailedPrecondition (naming the current state)
  // otherwise, and nothing changes. pid, last_error and state_sha256 replace the stored values
  // when given.
  Result<VmRecord> Transition(const std::string& uuid, uint64_t expected_generation, const std::set<VmState>& from,
                              VmState to, std::optional<int64_t> pid = std::nullopt,
                              std::optional<std::string> last_error = std::nullopt,
                              std::optional<std::string> state_sha256 = std::nullopt);
  // Transition, and in the same transaction migration_id's compare-and-set from
  // migration_from to migration_to (nothing changes unless both hold): a destination records
  // the VM active and its migration committed with one fsync, on a live migration's
  // guest-visible path.
  Result<VmRecord> TransitionWithMigration(const std::string& uuid, uint64_t expected_generation,
                                           const std::set<VmState>& from, VmState to, const std::string& migration_id,
                                           const std::set<std::string>& migration_from, const std::string& migration_to,
                                           std::optional<std::string> state_sha256 = std::nullopt);
  // Records the public identity of uuid's vTPM (at provisioning).
  Status SetVtpmIdentity(const std::string& uuid, const VtpmPublicIdentity& identity);
  // Removes the row (and with it the only copies of the VM's wrapped keys) if it is still at
  // expected_generation. The VM's certificates stay, revoked. With a tombstone, it is recorded
  // and the migration it names marked committed in the same transaction.
  Status Remove(const std::string& uuid, uint64_t expected_generation,
                const std::optional<Tombstone>& tombstone = std::nullopt);
  Status SetNvCertificatesPending(const std::string& uuid, bool pending);
  // Renewal, in one transaction: revokes every valid certificate of uuid whose serial is not in
  // keep (the ones just issued) and marks the new ones pending for the vTPM's NV.
  Status SupersedeCertificates(const std::string& uuid, const std::set<uint64_t>& keep);

  // Records the digest of uuid's vTPM state at rest (empty: unknown) if it is still at
  // expected_generation; kFailedPrecondition otherwise.
  Status SetStateDigest(const std::string& uuid, uint64_t expected_generation, const std::string& sha256);

  // Checks the registry against counter and, from then on, ties every write to it (see above).
  // counter_is_new: this start defined the counter, so a registry without an anchor (new, or
  // from before rollback protection) is accepted and anchored at the counter's value.
  // Refused (kFailedPrecondition, or kDataLoss for a failed HMAC), each error saying what to do:
  // an epoch below the counter (an older copy), above it by more than one, a failed HMAC (edited
  // outside vtmd), an anchored registry with a new counter, an unanchored one with an old
  // counter. accept_rollback: instead of refusing, re-anchor the registry as it is at the
  // counter's value (the operator's deliberate recovery; reported in AnchorReport::accepted).
  // The counter must outlive the registry.
  Result<AnchorReport> Anchor(SecretBytes mac_key, MonotonicCounter* counter, bool counter_is_new,
                              bool accept_rollback);
  // Returns once the counter has caught up with the last commit (incrementing it here if the
  // counter thread has not yet); the error of that increment if it fails.
  Status SyncCounter() EXCLUDES(write_mu_);

  // Migrations.
  Status InsertMigration(MigrationRecord* record);  // fills timestamps; kAlreadyExists for a used ID
  Result<MigrationRecord> GetMigration(const std::string& id);
  Result<std::vector<MigrationRecord>> ListMigrations();
  // The migration of vm_uuid in `role` that has not ended (committed/aborted), if any.
  Result<std::optional<MigrationRecord>> OpenMigrationOf(const std::string& vm_uuid, const std::string& role);
  // Compare-and-set on the migration's state; kFailedPrecondition naming the current state.
  Result<MigrationRecord> UpdateMigration(const std::string& id, const std::set<std::string>& from,
                                          const std::string& to, std::optional<std::string> last_error = std::nullopt);
  Status SetMigrationPrepared(const std::string& id, const std::string& prepared);
  Result<std::optional<Tombstone>> GetTombstone(const std::string& vm_uuid);

  // Certificates. Serials are 64 random bits (RFC 5280 positive integers, CA/Browser Forum's
  // "at least 64 bits from a CSPRNG"), never 0 and not in use by this registry, so two hosts
  // under one fleet CA do not issue the same (issuer, serial) by counting from one.
  Result<uint64_t> NewSerial();
  Status AddCertificates(const std::vector<CertRecord>& certs);
  Result<std::vector<CertRecord>> CertificatesOf(const std::string& vm_uuid);
  Result<std::vector<CertRecord>> RevokedCertificates();
  // Marks every valid certificate of the VM revoked now; returns how many.
  Result<int> RevokeCertificatesOf(const std::string& vm_uuid);
  // Every certificate not revoked, of any owner (a host CA key rotation's to-do list).
  Result<std::vector<CertRecord>> ValidCertificates();
  // Marks the certificates with these serials revoked now (in one transaction); returns how many.
  Result<int> RevokeCertificates(const std::set<uint64_t>& serials);
  // Next CRL number (monotonic).
  Result<uint64_t> NextCrlNumber();

 public:
  using Sum256 = std::array<uint64_t, 4>;  // mod 2^256, least significant limb first

 private:
  class Txn;  // BEGIN IMMEDIATE; rolls back unless committed
  Registry(std::unique_ptr<SqliteEnvVfs> vfs, sqlite3* db, std::string path)
      : vfs_(std::move(vfs)), db_(db), path_(std::move(path)) {}
  Status Exec(const std::string& sql) REQUIRES(mu_);
  // Every write: the write lock, the counter's catch-up, then body (with mu_ held) in one
  // transaction, sealed and committed if body succeeds and rolled back if not. body returns
  // Status or Result<T>; lifecycle: a VM's insert, transition or removal (the crash point).
  template <typename Fn>
  auto SealedWrite(bool lifecycle, Fn&& body) -> decltype(body());  // takes write_mu_, then mu_
  // Rollback protection: the counter catches up with the committed epoch before a write
  // (refusing the write if it cannot); Seal writes the next epoch and its HMAC into the open
  // transaction; Commit seals and commits, then hands the increment to the counter thread.
  Status CatchUpCounter() REQUIRES(write_mu_);
  Status Commit(Txn& txn, bool lifecycle) REQUIRES(write_mu_, mu_);
  Status Seal(uint64_t epoch) REQUIRES(write_mu_, mu_);
  // The anchor's digest (v2): per anchored table, a sum mod 2^256 of an HMAC-SHA256 of each
  // row, kept up to date from the rows SQLite reports written (the update hook).
  static void OnRowWritten(void* self, int op, const char* db, const char* table, sqlite3_int64 rowid);
  static void SerializeRow(sqlite3_stmt* row, int first, std::string* out);
  Result<Sum256> RowSum(const std::string& table, sqlite3_stmt* row) REQUIRES(write_mu_, mu_);
  Status SumTable(const std::string& table) REQUIRES(write_mu_, mu_);
  Status UpdateSums() REQUIRES(write_mu_, mu_);
  std::string ContentDigest() REQUIRES(write_mu_, mu_);  // of the sums (UpdateSums first)
  // v1, before the row sums: one SHA-256 over every row; verifies a registry sealed then.
  Result<std::string> LegacyContentDigest() REQUIRES(mu_);
  Result<std::string> AnchorMac(uint64_t epoch, const std::string& digest) REQUIRES(write_mu_);
  // The counter thread: increments the counter after each commit, and once more if one is
  // owed when the registry closes.
  void CounterLoop() EXCLUDES(write_mu_);
  Result<std::vector<VmRecord>> Query(const std::string& where, const std::vector<std::string>& args) REQUIRES(mu_);
  Result<std::vector<CertRecord>> QueryCerts(const std::string& where, const std::string& arg) REQUIRES(mu_);
  Result<uint64_t> NextCounter(const std::string& key) REQUIRES(mu_);
  Result<std::vector<MigrationRecord>> QueryMigrations(const std::string& where, const std::vector<std::string>& args)
      REQUIRES(mu_);
  Status InitSchema(const std::string& path) REQUIRES(mu_);
  // The bodies of Transition and UpdateMigration, inside a transaction the caller holds.
  Result<VmRecord> TransitionInTxn(const std::string& uuid, uint64_t expected_generation, const std::set<VmState>& from,
                                   VmState to, std::optional<int64_t> pid, std::optional<std::string> last_error,
                                   std::optional<std::string> state_sha256) REQUIRES(mu_);
  Result<MigrationRecord> UpdateMigrationInTxn(const std::string& id, const std::set<std::string>& from,
                                               const std::string& to, std::optional<std::string> last_error)
      REQUIRES(mu_);

  // Lock order: write_mu_, then mu_, then the host-TPM executor. Every sealed write holds
  // write_mu_ from its catch-up to its increment; mu_ guards the connection and is released
  // during the increment, so reads do not wait for the TPM.
  Mutex write_mu_;
  Mutex mu_;
  const std::unique_ptr<SqliteEnvVfs> vfs_;  // db_'s VFS, unregistered after ~Registry closed db_
  sqlite3* const db_ GUARDED_BY(mu_);
  const std::string path_;
  // Set by Anchor; until then writes are not sealed (only Open and Anchor run before it).
  MonotonicCounter* counter_ GUARDED_BY(write_mu_) = nullptr;
  SecretBytes mac_key_ GUARDED_BY(write_mu_);
  uint64_t epoch_ GUARDED_BY(write_mu_) = 0;           // committed
  uint64_t counter_value_ GUARDED_BY(write_mu_) = 0;   // last known
  CondVar counter_cv_;                                 // a commit, or closing
  bool increment_owed_ GUARDED_BY(write_mu_) = false;  // a commit the thread has not seen
  bool closing_ GUARDED_BY(write_mu_) = false;
  std::thread counter_thread_;  // started by Anchor
  struct TableSum {
    std::unordered_map<int64_t, Sum256> rows;  // by rowid (not for tables summed whole)
    Sum256 total{};
  };
  std::map<std::string, TableSum> sums_ GUARDED_BY(mu_);
  std::set<std::pair<std::string, int64_t>> touched_ GUARDED_BY(mu_);  // (table, rowid) since the last seal
  bool sums_valid_ GUARDED_BY(mu_) = false;
  std::string failed_commit_ GUARDED_BY(mu_);  // set by a failed commit: every later write is refused
};

}  // namespace vtm
