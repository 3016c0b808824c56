// Test Envs (vtm/env.h) for recovery code at unit speed:
//  - FaultInjectionEnv fails chosen operations and, like leveldb's FaultInjectionTestEnv,
//    "crashes": it drops what a power cut would lose under the Env's durability contract.
//  - StandInInstanceEnv runs a shell stand-in wherever vtm-instance would be spawned, so the
//    supervisor's real launch, readiness, watch and stop paths run without swtpm.
//
// Thread safety: all methods may be called from any thread.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "vtm/env.h"
#include "vtm/mutex.h"

namespace vtm::testing {

class FaultInjectionEnv : public EnvWrapper {
 public:
  explicit FaultInjectionEnv(Env* target = Env::Default());
  ~FaultInjectionEnv() override;  // removes its copies of removed trees

  // The next `times` calls of operation `op` (the method's name: "MakeDir", "WriteFileAtomic",
  // "RenameDurably", "SyncDir", "RemoveTree", "RemoveFile", "ChangeOwner", "Spawn", "OpenDbFile";
  // of SQLite's files: "WriteDbFile", "TruncateDbFile", "SyncDbFile") whose path (argv[0]
  // for Spawn) contains path_part fail with kIo and change nothing. times < 0: until
  // ClearFailures(). skip: the first `skip` such calls go through (to fail the n-th write).
  void FailOperation(const std::string& op, const std::string& path_part, int times = -1, int skip = 0) EXCLUDES(mu_);
  void ClearFailures() EXCLUDES(mu_);
  // How often a failure was injected.
  int injected_failures() const EXCLUDES(mu_);

  // The power cut: every directory made since its parent was last synced is removed with
  // everything below it (files written atomically into it included: their names were synced
  // into a directory whose own name was not), and every tree RemoveTree removed since its
  // parent was last synced comes back (its directories and regular files, from a copy taken
  // before the removal; sockets and the like do not). SQLite's files (OpenDbFile) go back to
  // their content as of their last DbFile::Sync (one never synced is removed; one removed since
  // without a sync of its directory comes back). Afterwards everything counts as synced and the
  // power is on again. Every connection to those files must be closed first.
  Status DropUnsyncedData() EXCLUDES(mu_);
  // The power goes off right after the next `syncs` operations that make something durable
  // (DbFile::Sync, SyncDir, WriteFileAtomic, RenameDurably) have succeeded; 0: now. From then
  // on every operation fails with kIo and changes nothing, until DropUnsyncedData.
  void CutPowerAfterSyncs(int syncs) EXCLUDES(mu_);
  bool power_off() const EXCLUDES(mu_);
  // The directories DropUnsyncedData would remove now.
  std::vector<std::string> UnsyncedDirectories() const EXCLUDES(mu_);

  Status MakeDir(const std::string& path, mode_t mode, std::optional<uid_t> uid = std::nullopt,
                 std::optional<gid_t> gid = std::nullopt) override;
  Status WriteFileAtomic(const std::string& path, const std::string& data, mode_t mode) override;
  Status RenameDurably(const std::string& from, const std::string& to) override;
  Status SyncDir(const std::string& path) override;
  Status RemoveTree(const std::string& path) override;
  Status RemoveFile(const std::string& path) override;
  Status ChangeOwner(const std::string& path, uid_t uid, gid_t gid) override;
  Result<Subprocess> Spawn(const std::vector<std::string>& argv, const SpawnOptions& options) override;
  Result<std::unique_ptr<DbFile>> OpenDbFile(const std::string& path, bool created,
                                             std::unique_ptr<DbFile> host) override;

 private:
  class FaultDbFile;
  // One of SQLite's files, since it was opened.
  struct DbFileRecord {
    std::optional<std::string> synced;  // its content as of its last sync; none: never synced
    bool removed = false;               // removed since its directory was last synced
  };
  struct Failure {
    std::string op;
    std::string path_part;
    int times;
    int skip;
  };
  // An injected failure for op on path, if one is armed (consumes one).
  std::optional<Error> Injected(const std::string& op, const std::string& path) EXCLUDES(mu_);
  // dir's entries were synced: directories made in it are durable from now on.
  void MarkSynced(const std::string& dir) EXCLUDES(mu_);
  // Something was made durable: counts it, and cuts the power if that was armed for it.
  void Synced() EXCLUDES(mu_);
  // path (a DbFile) was synced: records its content.
  void DbFileSynced(const std::string& path) EXCLUDES(mu_);

  mutable Mutex mu_;
  std::vector<Failure> failures_ GUARDED_BY(mu_);
  int injected_ GUARDED_BY(mu_) = 0;
  std::set<std::string> unsynced_dirs_ GUARDED_BY(mu_);  // made and not yet named durably in their parent
  // Trees removed while their removal is not durable: path -> a copy taken before.
  std::map<std::string, std::string> unsynced_removals_ GUARDED_BY(mu_);
  std::string copies_dir_;  // where those copies are kept (made at construction)
  int copies_ GUARDED_BY(mu_) = 0;
  std::map<std::string, DbFileRecord> db_files_ GUARDED_BY(mu_);
  int syncs_ GUARDED_BY(mu_) = 0;
  int power_off_after_ GUARDED_BY(mu_) = -1;  // syncs_ at which the power goes off; < 0: not armed
  bool power_off_ GUARDED_BY(mu_) = false;
};

// Spawns, in place of any program whose argv[0] ends in "vtm-instance", a /bin/sh stand-in with
// the same arguments (its command line still names vtm-instance and the VM, as the manager's
// pid checks expect). Like vtm-instance it answers on its ready fd: "ERROR ..." and exits if its
// --tpm-state-dir does not exist, else READY; then it runs until signalled.
class StandInInstanceEnv : public EnvWrapper {
 public:
  explicit StandInInstanceEnv(Env* target) : EnvWrapper(target) {}
  Result<Subprocess> Spawn(const std::vector<std::string>& argv, const SpawnOptions& options) override;
  // The pids of the stand-ins spawned, in order (children of this process: a test reaps them).
  std::vector<pid_t> pids() const EXCLUDES(mu_);

 private:
  mutable Mutex mu_;
  std::vector<pid_t> pids_ GUARDED_BY(mu_);
};

}  // namespace vtm::testing
