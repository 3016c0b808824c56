// The binding list (ISO/IEC 27070 5.3): VM UUID <-> vTPM instance, with its directories,
// wrapped keys, unprivileged uid and lifecycle state, in SQLite (WAL). Every lifecycle
// transition is one committed transaction that checks the state it leaves (compare-and-set),
// written BEFORE the side effect it allows, so a crash at any point leaves a state that the
// daemon's start-up reconciliation can finish or undo.
//
// Thread safety: all methods may be called from any thread (one connection behind a mutex).
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "vtm/error.h"

namespace vtm {

enum class VmState { kDefined, kProvisioned, kStarting, kRunning, kStopping, kStopped, kDeleting, kFailed };

const char* VmStateName(VmState state);  // "provisioned", "running", ...
Result<VmState> ParseVmState(const std::string& name);

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

  // Moves uuid from one of `from` to `to` in one transaction and bumps the generation.
  // kFailedPrecondition (naming the current state) if the VM is in another state.
  // pid and last_error replace the stored values when given.
  Result<VmRecord> Transition(const std::string& uuid, const std::set<VmState>& from, VmState to,
                              std::optional<int64_t> pid = std::nullopt,
                              std::optional<std::string> last_error = std::nullopt);
  // Removes the row (and with it the only copies of the VM's wrapped keys). The VM's
  // certificates stay, revoked.
  Status Remove(const std::string& uuid);

  // Certificates. Serials come from NextSerial (a monotonic counter, never reused).
  Result<uint64_t> NextSerial();
  Status AddCertificates(const std::vector<CertRecord>& certs);
  Result<std::vector<CertRecord>> CertificatesOf(const std::string& vm_uuid);
  Result<std::vector<CertRecord>> RevokedCertificates();
  // Marks every valid certificate of the VM revoked now; returns how many.
  Result<int> RevokeCertificatesOf(const std::string& vm_uuid);
  // Next CRL number (monotonic).
  Result<uint64_t> NextCrlNumber();

 private:
  explicit Registry(sqlite3* db) : db_(db) {}
  Status Exec(const std::string& sql);
  Result<std::vector<VmRecord>> Query(const std::string& where, const std::vector<std::string>& args);
  Result<std::vector<CertRecord>> QueryCerts(const std::string& where, const std::string& arg);
  Result<uint64_t> NextCounter(const std::string& key);  // caller holds mu_

  std::mutex mu_;
  sqlite3* db_;
};

}  // namespace vtm
