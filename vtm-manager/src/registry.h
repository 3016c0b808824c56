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

#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "vtm/error.h"
#include "vtm/mutex.h"

namespace vtm {

enum class VmState { kDefined, kProvisioned, kStarting, kRunning, kStopping, kStopped, kDeleting, kFailed };

const char* VmStateName(VmState state);  // "provisioned", "running", ...
Result<VmState> ParseVmState(const std::string& name);

// The public identity of a provisioned vTPM, recorded at provisioning: what measured launch
// extends into the host PCR and what deep attestation names. TPM names are nameAlg || digest.
struct VtpmPublicIdentity {
  std::string ek_name;       // ECC P-256 EK
  std::string ek_rsa_name;   // RSA 2048 EK
  std::string ak_name;
  std::string ek_public;     // marshalled TPM2B_PUBLIC of the ECC EK
  std::string ak_public;     // marshalled TPM2B_PUBLIC of the AK
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

class Registry {
 public:
  static Result<std::unique_ptr<Registry>> Open(const std::string& path);
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Inserts a new VM with the lowest free uid in [uid_base, uid_base + uid_count); fills
  // record->instance_uid, generation, timestamps. kAlreadyExists if the uuid or name is taken,
  // kUnavailable if the uid range is exhausted.
  Status Insert(VmRecord* record, uint32_t uid_base, uint32_t uid_count);
  // By UUID or, failing that, by name.
  Result<VmRecord> Get(const std::string& uuid_or_name);
  Result<std::vector<VmRecord>> List();

  // Moves uuid to `to` in one transaction and bumps the generation, if the VM is still at
  // expected_generation and in one of `from`; kFailedPrecondition (naming the current state)
  // otherwise, and nothing changes. pid and last_error replace the stored values when given.
  Result<VmRecord> Transition(const std::string& uuid, uint64_t expected_generation, const std::set<VmState>& from,
                              VmState to, std::optional<int64_t> pid = std::nullopt,
                              std::optional<std::string> last_error = std::nullopt);
  // Records the public identity of uuid's vTPM (at provisioning).
  Status SetVtpmIdentity(const std::string& uuid, const VtpmPublicIdentity& identity);
  // Removes the row (and with it the only copies of the VM's wrapped keys) if it is still at
  // expected_generation. The VM's certificates stay, revoked.
  Status Remove(const std::string& uuid, uint64_t expected_generation);

  // Certificates. Serials are 64 random bits (RFC 5280 positive integers, CA/Browser Forum's
  // "at least 64 bits from a CSPRNG"), never 0 and not in use by this registry, so two hosts
  // under one fleet CA do not issue the same (issuer, serial) by counting from one.
  Result<uint64_t> NewSerial();
  Status AddCertificates(const std::vector<CertRecord>& certs);
  Result<std::vector<CertRecord>> CertificatesOf(const std::string& vm_uuid);
  Result<std::vector<CertRecord>> RevokedCertificates();
  // Marks every valid certificate of the VM revoked now; returns how many.
  Result<int> RevokeCertificatesOf(const std::string& vm_uuid);
  // Next CRL number (monotonic).
  Result<uint64_t> NextCrlNumber();

 private:
  explicit Registry(sqlite3* db) : db_(db) {}
  Status Exec(const std::string& sql) REQUIRES(mu_);
  Result<std::vector<VmRecord>> Query(const std::string& where, const std::vector<std::string>& args) REQUIRES(mu_);
  Result<std::vector<CertRecord>> QueryCerts(const std::string& where, const std::string& arg) REQUIRES(mu_);
  Result<uint64_t> NextCounter(const std::string& key) REQUIRES(mu_);
  Status InitSchema(const std::string& path) REQUIRES(mu_);

  Mutex mu_;
  sqlite3* const db_ GUARDED_BY(mu_);
};

}  // namespace vtm
