// SqliteEnvVfs: a shim over SQLite's unix VFS (as SQLite's own test_vfs and test_devsym are),
// whose files send their writes, truncations and syncs through the Env.
#include "sqlite_env_vfs.h"

#include <atomic>
#include <filesystem>
#include <new>

namespace vtm {
namespace {

// What SQLite holds for one open file: our header, then (in the same allocation, at
// kHostOffset) the unix VFS's own sqlite3_file.
struct EnvFile {
  sqlite3_file base;  // first: SQLite sees an EnvFile as a sqlite3_file
  sqlite3_file* host;
  DbFile* db;   // owned (deleted in Close); what writes, truncations and syncs go through
  int host_rc;  // the unix VFS's code for the last failed call, so SQLITE_FULL stays itself
  // A journal or WAL this open created: at its first sync the unix VFS also syncs the
  // directory (its name, and the removals before, become durable), and so do we, through the
  // Env, so that a test Env sees it. Null once done, or for other files.
  Env* sync_dir_env;
  const char* name;  // SQLite's; valid until Close
};
constexpr int kHostOffset = (sizeof(EnvFile) + 7) & ~7;

EnvFile* AsEnvFile(sqlite3_file* file) { return reinterpret_cast<EnvFile*>(file); }
sqlite3_file* HostOf(sqlite3_file* file) { return AsEnvFile(file)->host; }
SqliteEnvVfs* Owner(sqlite3_vfs* vfs) { return static_cast<SqliteEnvVfs*>(vfs->pAppData); }

// The host's file: the unix VFS's own calls.
class HostDbFile final : public DbFile {
 public:
  HostDbFile(std::string path, sqlite3_file* host, int* host_rc)
      : path_(std::move(path)), host_(host), host_rc_(host_rc) {}
  Status Write(int64_t offset, const void* data, size_t size) override {
    return Check(host_->pMethods->xWrite(host_, data, static_cast<int>(size), offset), "writing");
  }
  Status Truncate(int64_t size) override { return Check(host_->pMethods->xTruncate(host_, size), "truncating"); }
  // SQLITE_SYNC_FULL differs from NORMAL only on macOS (F_FULLFSYNC).
  Status Sync(bool data_only) override {
    return Check(host_->pMethods->xSync(host_, SQLITE_SYNC_NORMAL | (data_only ? SQLITE_SYNC_DATAONLY : 0)), "syncing");
  }

 private:
  Status Check(int rc, const char* what) {
    if (rc == SQLITE_OK) return OkStatus();
    *host_rc_ = rc;
    return Error(ErrorCode::kIo,
                 std::string(what) + " " + (path_.empty() ? "a temporary file" : path_) + ": " + sqlite3_errstr(rc));
  }
  const std::string path_;
  sqlite3_file* const host_;
  int* const host_rc_;
};

// SQLite's code for a failed call: the unix VFS's own if it failed, else (the Env refused) the
// generic one for the operation.
int Code(EnvFile* f, const Status& st, int generic) {
  if (st.ok()) return SQLITE_OK;
  const int rc = f->host_rc != SQLITE_OK ? f->host_rc : generic;
  f->host_rc = SQLITE_OK;
  return rc;
}

int Close(sqlite3_file* file) {
  EnvFile* f = AsEnvFile(file);
  delete f->db;
  f->db = nullptr;
  return f->host->pMethods->xClose(f->host);
}
int Read(sqlite3_file* file, void* buf, int amount, sqlite3_int64 offset) {
  return HostOf(file)->pMethods->xRead(HostOf(file), buf, amount, offset);
}
int Write(sqlite3_file* file, const void* buf, int amount, sqlite3_int64 offset) {
  EnvFile* f = AsEnvFile(file);
  return Code(f, f->db->Write(offset, buf, static_cast<size_t>(amount)), SQLITE_IOERR_WRITE);
}
int Truncate(sqlite3_file* file, sqlite3_int64 size) {
  EnvFile* f = AsEnvFile(file);
  return Code(f, f->db->Truncate(size), SQLITE_IOERR_TRUNCATE);
}
std::string DirOf(const char* path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}

int Sync(sqlite3_file* file, int flags) {
  EnvFile* f = AsEnvFile(file);
  if (int rc = Code(f, f->db->Sync((flags & SQLITE_SYNC_DATAONLY) != 0), SQLITE_IOERR_FSYNC); rc != SQLITE_OK) {
    return rc;
  }
  if (f->sync_dir_env != nullptr) {
    if (!f->sync_dir_env->SyncDir(DirOf(f->name)).ok()) return SQLITE_IOERR_DIR_FSYNC;
    f->sync_dir_env = nullptr;
  }
  return SQLITE_OK;
}
int FileSize(sqlite3_file* file, sqlite3_int64* size) { return HostOf(file)->pMethods->xFileSize(HostOf(file), size); }
int Lock(sqlite3_file* file, int level) { return HostOf(file)->pMethods->xLock(HostOf(file), level); }
int Unlock(sqlite3_file* file, int level) { return HostOf(file)->pMethods->xUnlock(HostOf(file), level); }
int CheckReservedLock(sqlite3_file* file, int* out) {
  return HostOf(file)->pMethods->xCheckReservedLock(HostOf(file), out);
}
int FileControl(sqlite3_file* file, int op, void* arg) {
  return HostOf(file)->pMethods->xFileControl(HostOf(file), op, arg);
}
int SectorSize(sqlite3_file* file) { return HostOf(file)->pMethods->xSectorSize(HostOf(file)); }
int DeviceCharacteristics(sqlite3_file* file) { return HostOf(file)->pMethods->xDeviceCharacteristics(HostOf(file)); }
// The WAL index (shared memory) stays the unix VFS's: it is rebuilt from the WAL whenever the
// first connection opens the database, so no power cut can leave it behind the files.
int ShmMap(sqlite3_file* file, int page, int size, int extend, void volatile** out) {
  sqlite3_file* h = HostOf(file);
  return h->pMethods->iVersion >= 2 ? h->pMethods->xShmMap(h, page, size, extend, out) : SQLITE_IOERR_SHMMAP;
}
int ShmLock(sqlite3_file* file, int offset, int n, int flags) {
  sqlite3_file* h = HostOf(file);
  return h->pMethods->iVersion >= 2 ? h->pMethods->xShmLock(h, offset, n, flags) : SQLITE_IOERR_SHMLOCK;
}
void ShmBarrier(sqlite3_file* file) {
  sqlite3_file* h = HostOf(file);
  if (h->pMethods->iVersion >= 2) h->pMethods->xShmBarrier(h);
}
int ShmUnmap(sqlite3_file* file, int delete_flag) {
  sqlite3_file* h = HostOf(file);
  return h->pMethods->iVersion >= 2 ? h->pMethods->xShmUnmap(h, delete_flag) : SQLITE_OK;
}
int Fetch(sqlite3_file* file, sqlite3_int64 offset, int amount, void** out) {
  sqlite3_file* h = HostOf(file);
  if (h->pMethods->iVersion >= 3) return h->pMethods->xFetch(h, offset, amount, out);
  *out = nullptr;
  return SQLITE_OK;
}
int Unfetch(sqlite3_file* file, sqlite3_int64 offset, void* page) {
  sqlite3_file* h = HostOf(file);
  return h->pMethods->iVersion >= 3 ? h->pMethods->xUnfetch(h, offset, page) : SQLITE_OK;
}

const sqlite3_io_methods kIoMethods = {
    3,
    Close,
    Read,
    Write,
    Truncate,
    Sync,
    FileSize,
    Lock,
    Unlock,
    CheckReservedLock,
    FileControl,
    SectorSize,
    DeviceCharacteristics,
    ShmMap,
    ShmLock,
    ShmBarrier,
    ShmUnmap,
    Fetch,
    Unfetch,
};

int Open(sqlite3_vfs* vfs, const char* name, sqlite3_file* file, int flags, int* out_flags) {
  SqliteEnvVfs* owner = Owner(vfs);
  auto* f = new (file) EnvFile{};
  f->host = reinterpret_cast<sqlite3_file*>(reinterpret_cast<char*>(file) + kHostOffset);
  // Temporary files (no name, or deleted on close) are SQLite's alone.
  const bool temporary = name == nullptr || (flags & SQLITE_OPEN_DELETEONCLOSE) != 0;
  const bool existed = !temporary && owner->env()->PathExists(name);
  int rc = owner->host()->xOpen(owner->host(), name, f->host, flags, out_flags);
  if (rc != SQLITE_OK) {
    file->pMethods = nullptr;  // SQLite then does not call xClose
    return rc;
  }
  auto host = std::make_unique<HostDbFile>(temporary ? "" : name, f->host, &f->host_rc);
  if (temporary) {
    f->db = host.release();
  } else {
    Result<std::unique_ptr<DbFile>> db = owner->env()->OpenDbFile(name, !existed, std::move(host));
    if (!db.ok()) {
      f->host->pMethods->xClose(f->host);
      file->pMethods = nullptr;
      return SQLITE_CANTOPEN;
    }
    f->db = std::move(db).value().release();
    constexpr int kJournals = SQLITE_OPEN_MAIN_JOURNAL | SQLITE_OPEN_SUPER_JOURNAL | SQLITE_OPEN_WAL;
    if (!existed && (flags & kJournals) != 0) {
      f->sync_dir_env = owner->env();
      f->name = name;
    }
  }
  file->pMethods = &kIoMethods;
  return SQLITE_OK;
}

int Delete(sqlite3_vfs* vfs, const char* name, int sync_dir) {
  Env* env = Owner(vfs)->env();
  if (!env->RemoveFile(name).ok()) return SQLITE_IOERR_DELETE;
  if (sync_dir != 0 && !env->SyncDir(DirOf(name)).ok()) return SQLITE_IOERR_DIR_FSYNC;
  return SQLITE_OK;
}

sqlite3_vfs* HostVfs(sqlite3_vfs* vfs) { return Owner(vfs)->host(); }
int Access(sqlite3_vfs* vfs, const char* name, int flags, int* out) {
  return HostVfs(vfs)->xAccess(HostVfs(vfs), name, flags, out);
}
int FullPathname(sqlite3_vfs* vfs, const char* name, int n, char* out) {
  return HostVfs(vfs)->xFullPathname(HostVfs(vfs), name, n, out);
}
void* DlOpen(sqlite3_vfs* vfs, const char* name) { return HostVfs(vfs)->xDlOpen(HostVfs(vfs), name); }
void DlError(sqlite3_vfs* vfs, int n, char* out) { HostVfs(vfs)->xDlError(HostVfs(vfs), n, out); }
void (*DlSym(sqlite3_vfs* vfs, void* handle, const char* symbol))() {
  return HostVfs(vfs)->xDlSym(HostVfs(vfs), handle, symbol);
}
void DlClose(sqlite3_vfs* vfs, void* handle) { HostVfs(vfs)->xDlClose(HostVfs(vfs), handle); }
int Randomness(sqlite3_vfs* vfs, int n, char* out) { return HostVfs(vfs)->xRandomness(HostVfs(vfs), n, out); }
int Sleep(sqlite3_vfs* vfs, int micros) { return HostVfs(vfs)->xSleep(HostVfs(vfs), micros); }
int CurrentTime(sqlite3_vfs* vfs, double* out) { return HostVfs(vfs)->xCurrentTime(HostVfs(vfs), out); }
int GetLastError(sqlite3_vfs* vfs, int n, char* out) { return HostVfs(vfs)->xGetLastError(HostVfs(vfs), n, out); }
int CurrentTimeInt64(sqlite3_vfs* vfs, sqlite3_int64* out) {
  return HostVfs(vfs)->xCurrentTimeInt64(HostVfs(vfs), out);
}

}  // namespace

Result<std::unique_ptr<SqliteEnvVfs>> SqliteEnvVfs::Register(Env* env) {
  static std::atomic<int> next{0};
  if (sqlite3_initialize() != SQLITE_OK) return Error(ErrorCode::kInternal, "SQLite does not initialize");
  sqlite3_vfs* host = sqlite3_vfs_find("unix");
  if (host == nullptr || host->iVersion < 2) return Error(ErrorCode::kInternal, "SQLite has no unix VFS");
  std::unique_ptr<SqliteEnvVfs> vfs(new SqliteEnvVfs(env, host, "vtm-env-" + std::to_string(next++)));
  if (int rc = sqlite3_vfs_register(&vfs->vfs_, /*makeDflt=*/0); rc != SQLITE_OK) {
    return Error(ErrorCode::kInternal, std::string("registering SQLite's VFS over the Env: ") + sqlite3_errstr(rc));
  }
  return vfs;
}

SqliteEnvVfs::SqliteEnvVfs(Env* env, sqlite3_vfs* host, std::string name)
    : env_(env), host_(host), name_(std::move(name)) {
  vfs_.iVersion = 2;
  vfs_.szOsFile = kHostOffset + host->szOsFile;
  vfs_.mxPathname = host->mxPathname;
  vfs_.zName = name_.c_str();
  vfs_.pAppData = this;
  vfs_.xOpen = Open;
  vfs_.xDelete = Delete;
  vfs_.xAccess = Access;
  vfs_.xFullPathname = FullPathname;
  vfs_.xDlOpen = DlOpen;
  vfs_.xDlError = DlError;
  vfs_.xDlSym = DlSym;
  vfs_.xDlClose = DlClose;
  vfs_.xRandomness = Randomness;
  vfs_.xSleep = Sleep;
  vfs_.xCurrentTime = CurrentTime;
  vfs_.xGetLastError = GetLastError;
  vfs_.xCurrentTimeInt64 = CurrentTimeInt64;
}

SqliteEnvVfs::~SqliteEnvVfs() { sqlite3_vfs_unregister(&vfs_); }

}  // namespace vtm
