// A SQLite VFS that puts what the registry's SQLite writes to disk behind vtm::Env: SQLite's
// unix VFS does everything (opening, reading, locking, the WAL index in shared memory), except
// that each file's writes, truncations and syncs go through the DbFile Env::OpenDbFile returns
// and files are removed with Env::RemoveFile (then Env::SyncDir, where SQLite asks for the
// directory to be synced). So a test Env can fail a write or a sync, or drop what a power cut
// would lose (tests/testing/fault_injection_env.h), under the real SQLite.
//
// Temporary files (no name; SQLite deletes them on close) do not go through the Env.
//
// Thread safety: Register and the destructor may be called from any thread; SQLite calls the
// VFS from any thread.
#pragma once

#include <sqlite3.h>

#include <memory>
#include <string>

#include "vtm/env.h"
#include "vtm/error.h"

namespace vtm {

class SqliteEnvVfs {
 public:
  // Registers a VFS (not the default one) under a name of its own, over env (which must
  // outlive it). Open a connection with sqlite3_open_v2(..., name()).
  static Result<std::unique_ptr<SqliteEnvVfs>> Register(Env* env);
  // Unregisters it: every connection opened with it must be closed before.
  ~SqliteEnvVfs();
  SqliteEnvVfs(const SqliteEnvVfs&) = delete;
  SqliteEnvVfs& operator=(const SqliteEnvVfs&) = delete;

  const char* name() const { return name_.c_str(); }
  Env* env() const { return env_; }
  sqlite3_vfs* host() const { return host_; }

 private:
  SqliteEnvVfs(Env* env, sqlite3_vfs* host, std::string name);

  Env* const env_;
  sqlite3_vfs* const host_;  // SQLite's default VFS ("unix")
  const std::string name_;
  sqlite3_vfs vfs_{};
};

}  // namespace vtm
