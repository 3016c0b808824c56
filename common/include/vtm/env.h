// The one door between vtmd's VM lifecycle and the outside world: the files it writes, the
// clock and the child processes it runs (leveldb's Env is the model). Env::Default() is the
// host; a test wraps it (EnvWrapper) to fail chosen operations, to drop what a power cut would
// lose (tests/testing/fault_injection_env.h) or to run a stand-in for vtm-instance.
//
// Durability, as every implementation must keep it (and FaultInjectionEnv models it):
//   WriteFileAtomic, RenameDurably  the file and its name in its directory survive a crash once
//                                   the call returns (the directory is fsync'd).
//   MakeDir, RemoveTree, RemoveFile not synced: a crash may undo a directory made, or bring
//                                   back what was removed, until its parent directory is synced
//                                   (SyncDir, or a WriteFileAtomic or RenameDurably into it).
//   DbFile::Write, Truncate         not synced: a crash may undo them until DbFile::Sync
//   (SQLite's files)                returns. A file's name is durable once its directory is
//                                   synced (SQLite's VFS does it at a journal's first sync).
//
// What is not behind it: the host TPM (HostTpm is its own seam), sockets, the instance's
// manager channel, and of the registry's SQLite files their reads, locks and WAL index (SQLite's
// unix VFS does those; what changes a file on disk comes through here).
//
// Thread safety: every method may be called from any thread; implementations must allow it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "vtm/error.h"
#include "vtm/subprocess.h"
#include "vtm/unique_fd.h"

namespace vtm {

// A file SQLite opened for the registry (its database, WAL or a journal), as far as what
// reaches the disk goes: SQLite's unix VFS opens, reads, locks and maps it; its writes,
// truncations and syncs come through here (vtm-manager's sqlite_env_vfs.h). Not thread-safe:
// SQLite serializes the calls on one file.
class DbFile {
 public:
  DbFile() = default;
  virtual ~DbFile() = default;
  DbFile(const DbFile&) = delete;
  DbFile& operator=(const DbFile&) = delete;
  virtual Status Write(int64_t offset, const void* data, size_t size) = 0;
  virtual Status Truncate(int64_t size) = 0;
  // The file's data (and, unless data_only, its size and metadata) reach the disk; SQLite's unix
  // VFS also syncs the directory at the first sync of a WAL or journal it created.
  virtual Status Sync(bool data_only) = 0;
};

class Env {
 public:
  Env() = default;
  virtual ~Env() = default;
  Env(const Env&) = delete;
  Env& operator=(const Env&) = delete;

  // The host's file system, clock and processes (vtm/fs.h, vtm/subprocess.h). Never deleted.
  static Env* Default();

  // Files.
  // Creates path (and parents) if missing, then enforces mode and, if given, owner.
  virtual Status MakeDir(const std::string& path, mode_t mode, std::optional<uid_t> uid = std::nullopt,
                         std::optional<gid_t> gid = std::nullopt) = 0;
  virtual Result<std::string> ReadFile(const std::string& path) = 0;
  // Temp file, fsync, rename over path, fsync of the directory.
  virtual Status WriteFileAtomic(const std::string& path, const std::string& data, mode_t mode) = 0;
  virtual Status RenameDurably(const std::string& from, const std::string& to) = 0;
  // fsync of a directory: the names in it (files and directories made or removed) survive a crash.
  virtual Status SyncDir(const std::string& path) = 0;
  // Removes path and everything below it; a missing path is not an error.
  virtual Status RemoveTree(const std::string& path) = 0;
  // Removes one file (or socket); a missing file is not an error.
  virtual Status RemoveFile(const std::string& path) = 0;
  virtual bool PathExists(const std::string& path) = 0;
  // The names of the regular files directly in dir (not sorted).
  virtual Result<std::vector<std::string>> ListFiles(const std::string& dir) = 0;
  virtual Status ChangeOwner(const std::string& path, uid_t uid, gid_t gid) = 0;
  // SQLite opened path (created: it did not exist before); host is the host's file. Returns
  // what SQLite's writes, truncations and syncs of it go through: the host Env returns host as
  // it is, a test Env wraps it. SQLite removes its files with RemoveFile (and SyncDir).
  virtual Result<std::unique_ptr<DbFile>> OpenDbFile(const std::string& path, bool created,
                                                     std::unique_ptr<DbFile> host) = 0;

  // Clock.
  // For timeouts and deadlines.
  virtual std::chrono::steady_clock::time_point SteadyNow() = 0;
  // Wall-clock seconds since the epoch: for timestamps and certificate validity.
  virtual int64_t UnixSeconds() = 0;

  // Processes.
  virtual Result<Subprocess> Spawn(const std::vector<std::string>& argv, const SpawnOptions& options) = 0;
  // True if pid exists and is not a zombie.
  virtual bool ProcessAlive(pid_t pid) = 0;
  // A pidfd for pid (Linux >= 5.3): what the instance supervisor watches and signals.
  virtual Result<UniqueFd> OpenPidFd(pid_t pid) = 0;
  virtual Status SignalPidFd(int pidfd, int signal) = 0;
  // EndRecordedProcess of vtm/subprocess.h: ends a process recorded by an owner that is gone.
  virtual Result<pid_t> EndRecordedProcess(const std::string& record_path) = 0;
};

// Forwards every call to a target Env (which must outlive it); a test overrides what it
// changes, as leveldb's EnvWrapper.
class EnvWrapper : public Env {
 public:
  explicit EnvWrapper(Env* target) : target_(target) {}
  Env* target() const { return target_; }

  Status MakeDir(const std::string& path, mode_t mode, std::optional<uid_t> uid = std::nullopt,
                 std::optional<gid_t> gid = std::nullopt) override {
    return target_->MakeDir(path, mode, uid, gid);
  }
  Result<std::string> ReadFile(const std::string& path) override { return target_->ReadFile(path); }
  Status WriteFileAtomic(const std::string& path, const std::string& data, mode_t mode) override {
    return target_->WriteFileAtomic(path, data, mode);
  }
  Status RenameDurably(const std::string& from, const std::string& to) override {
    return target_->RenameDurably(from, to);
  }
  Status SyncDir(const std::string& path) override { return target_->SyncDir(path); }
  Status RemoveTree(const std::string& path) override { return target_->RemoveTree(path); }
  Status RemoveFile(const std::string& path) override { return target_->RemoveFile(path); }
  bool PathExists(const std::string& path) override { return target_->PathExists(path); }
  Result<std::vector<std::string>> ListFiles(const std::string& dir) override { return target_->ListFiles(dir); }
  Status ChangeOwner(const std::string& path, uid_t uid, gid_t gid) override {
    return target_->ChangeOwner(path, uid, gid);
  }
  Result<std::unique_ptr<DbFile>> OpenDbFile(const std::string& path, bool created,
                                             std::unique_ptr<DbFile> host) override {
    return target_->OpenDbFile(path, created, std::move(host));
  }
  std::chrono::steady_clock::time_point SteadyNow() override { return target_->SteadyNow(); }
  int64_t UnixSeconds() override { return target_->UnixSeconds(); }
  Result<Subprocess> Spawn(const std::vector<std::string>& argv, const SpawnOptions& options) override {
    return target_->Spawn(argv, options);
  }
  bool ProcessAlive(pid_t pid) override { return target_->ProcessAlive(pid); }
  Result<UniqueFd> OpenPidFd(pid_t pid) override { return target_->OpenPidFd(pid); }
  Status SignalPidFd(int pidfd, int signal) override { return target_->SignalPidFd(pidfd, signal); }
  Result<pid_t> EndRecordedProcess(const std::string& record_path) override {
    return target_->EndRecordedProcess(record_path);
  }

 private:
  Env* const target_;
};

}  // namespace vtm
