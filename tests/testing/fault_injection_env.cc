// FaultInjectionEnv: injected failures, and what a power cut loses or brings back.
// StandInInstanceEnv: a shell in place of vtm-instance.
#include "fault_injection_env.h"

#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace vtm::testing {
namespace {

std::string ParentOf(const std::string& path) {
  std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

// The levels of path that do not exist yet, outermost first.
std::vector<std::string> MissingLevels(Env& env, const std::string& path) {
  std::vector<std::string> missing;
  for (std::filesystem::path p(path); !p.empty() && p != p.root_path(); p = p.parent_path()) {
    if (env.PathExists(p.string())) break;
    missing.insert(missing.begin(), p.string());
  }
  return missing;
}

// Copies the directories and regular files of the tree at from to to (other kinds are skipped).
void CopyTree(const std::string& from, const std::string& to) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(from, ec)) {
    if (fs::is_regular_file(from, ec)) fs::copy_file(from, to, ec);
    return;
  }
  fs::create_directories(to, ec);
  for (auto it = fs::recursive_directory_iterator(from, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    const fs::path target = fs::path(to) / fs::relative(it->path(), from, ec);
    if (it->is_directory(ec)) {
      fs::create_directories(target, ec);
    } else if (it->is_regular_file(ec)) {
      fs::copy_file(it->path(), target, ec);
    }
  }
}

}  // namespace

// What SQLite writes, truncates and syncs, on its way to the host's file.
class FaultInjectionEnv::FaultDbFile final : public DbFile {
 public:
  FaultDbFile(FaultInjectionEnv* env, std::string path, std::unique_ptr<DbFile> host)
      : env_(env), path_(std::move(path)), host_(std::move(host)) {}
  Status Write(int64_t offset, const void* data, size_t size) override {
    if (auto e = env_->Injected("WriteDbFile", path_)) return *std::move(e);
    return host_->Write(offset, data, size);
  }
  Status Truncate(int64_t size) override {
    if (auto e = env_->Injected("TruncateDbFile", path_)) return *std::move(e);
    return host_->Truncate(size);
  }
  Status Sync(bool data_only) override {
    if (auto e = env_->Injected("SyncDbFile", path_)) return *std::move(e);
    VTM_RETURN_IF_ERROR(host_->Sync(data_only));
    env_->DbFileSynced(path_);
    return OkStatus();
  }

 private:
  FaultInjectionEnv* const env_;
  const std::string path_;
  const std::unique_ptr<DbFile> host_;
};

FaultInjectionEnv::FaultInjectionEnv(Env* target) : EnvWrapper(target) {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/vtm-fault-env-XXXXXX";
  if (mkdtemp(tmpl.data()) != nullptr) copies_dir_ = tmpl;
}

FaultInjectionEnv::~FaultInjectionEnv() {
  if (!copies_dir_.empty()) (void)target()->RemoveTree(copies_dir_);
}

void FaultInjectionEnv::FailOperation(const std::string& op, const std::string& path_part, int times, int skip) {
  MutexLock lock(mu_);
  failures_.push_back(Failure{op, path_part, times, skip});
}

void FaultInjectionEnv::ClearFailures() {
  MutexLock lock(mu_);
  failures_.clear();
}

int FaultInjectionEnv::injected_failures() const {
  MutexLock lock(mu_);
  return injected_;
}

std::optional<Error> FaultInjectionEnv::Injected(const std::string& op, const std::string& path) {
  MutexLock lock(mu_);
  if (power_off_) return Error(ErrorCode::kIo, op + " " + path + ": the power is off");
  for (Failure& f : failures_) {
    if (f.op != op || f.times == 0 || path.find(f.path_part) == std::string::npos) continue;
    if (f.skip > 0) {
      --f.skip;
      continue;
    }
    if (f.times > 0) --f.times;
    ++injected_;
    std::string message = op;
    message.append(" ").append(path).append(": injected failure");
    return Error(ErrorCode::kIo, std::move(message));
  }
  return std::nullopt;
}

void FaultInjectionEnv::MarkSynced(const std::string& dir) {
  MutexLock lock(mu_);
  for (auto it = unsynced_dirs_.begin(); it != unsynced_dirs_.end();) {
    it = ParentOf(*it) == dir ? unsynced_dirs_.erase(it) : std::next(it);
  }
  for (auto it = unsynced_removals_.begin(); it != unsynced_removals_.end();) {
    it = ParentOf(it->first) == dir ? unsynced_removals_.erase(it) : std::next(it);
  }
  for (auto it = db_files_.begin(); it != db_files_.end();) {
    it = it->second.removed && ParentOf(it->first) == dir ? db_files_.erase(it) : std::next(it);
  }
}

void FaultInjectionEnv::Synced() {
  MutexLock lock(mu_);
  ++syncs_;
  if (power_off_after_ >= 0 && syncs_ >= power_off_after_) {
    power_off_ = true;
    power_off_after_ = -1;
  }
}

void FaultInjectionEnv::DbFileSynced(const std::string& path) {
  Result<std::string> content = target()->ReadFile(path);
  {
    MutexLock lock(mu_);
    DbFileRecord& record = db_files_[path];
    // A file that cannot be read back keeps what was synced before (the test sees the difference).
    if (content.ok()) record.synced = std::move(content).value();
    record.removed = false;
  }
  Synced();
}

void FaultInjectionEnv::CutPowerAfterSyncs(int syncs) {
  MutexLock lock(mu_);
  if (syncs <= 0) {
    power_off_ = true;
  } else {
    power_off_after_ = syncs_ + syncs;
  }
}

bool FaultInjectionEnv::power_off() const {
  MutexLock lock(mu_);
  return power_off_;
}

std::vector<std::string> FaultInjectionEnv::UnsyncedDirectories() const {
  MutexLock lock(mu_);
  return {unsynced_dirs_.begin(), unsynced_dirs_.end()};
}

Status FaultInjectionEnv::DropUnsyncedData() {
  std::set<std::string> lost;
  std::map<std::string, std::string> back;
  std::map<std::string, DbFileRecord> db_files;
  {
    MutexLock lock(mu_);
    lost.swap(unsynced_dirs_);
    back.swap(unsynced_removals_);
    db_files.swap(db_files_);
    power_off_ = false;
    power_off_after_ = -1;
  }
  for (const auto& [path, record] : db_files) {
    if (!record.synced) {
      VTM_RETURN_IF_ERROR(target()->RemoveFile(path));
      continue;
    }
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << *record.synced;
    if (!out.flush()) return Error(ErrorCode::kIo, "putting back what was synced of " + path);
  }
  for (const std::string& dir : lost) VTM_RETURN_IF_ERROR(target()->RemoveTree(dir));
  for (const auto& [path, copy] : back) {
    if (!target()->PathExists(path)) CopyTree(copy, path);
  }
  return OkStatus();
}

Status FaultInjectionEnv::MakeDir(const std::string& path, mode_t mode, std::optional<uid_t> uid,
                                  std::optional<gid_t> gid) {
  if (auto e = Injected("MakeDir", path)) return *std::move(e);
  const std::vector<std::string> made = MissingLevels(*target(), path);
  VTM_RETURN_IF_ERROR(target()->MakeDir(path, mode, uid, gid));
  MutexLock lock(mu_);
  unsynced_dirs_.insert(made.begin(), made.end());
  return OkStatus();
}

Status FaultInjectionEnv::WriteFileAtomic(const std::string& path, const std::string& data, mode_t mode) {
  if (auto e = Injected("WriteFileAtomic", path)) return *std::move(e);
  VTM_RETURN_IF_ERROR(target()->WriteFileAtomic(path, data, mode));
  MarkSynced(ParentOf(path));
  Synced();
  return OkStatus();
}

Status FaultInjectionEnv::RenameDurably(const std::string& from, const std::string& to) {
  if (auto e = Injected("RenameDurably", to)) return *std::move(e);
  VTM_RETURN_IF_ERROR(target()->RenameDurably(from, to));
  MarkSynced(ParentOf(to));
  Synced();
  return OkStatus();
}

Status FaultInjectionEnv::SyncDir(const std::string& path) {
  if (auto e = Injected("SyncDir", path)) return *std::move(e);
  VTM_RETURN_IF_ERROR(target()->SyncDir(path));
  MarkSynced(path);
  Synced();
  return OkStatus();
}

Status FaultInjectionEnv::RemoveTree(const std::string& path) {
  if (auto e = Injected("RemoveTree", path)) return *std::move(e);
  // A tree whose own name is durable comes back if the power is cut before its removal is.
  std::string copy;
  if (!copies_dir_.empty() && target()->PathExists(path)) {
    bool made_unsynced = false;
    {
      MutexLock lock(mu_);
      for (std::string p = path; p != "/" && p != "."; p = ParentOf(p)) made_unsynced |= unsynced_dirs_.count(p) > 0;
      copy = copies_dir_ + "/" + std::to_string(++copies_);
    }
    if (made_unsynced) {
      copy.clear();
    } else {
      CopyTree(path, copy);
    }
  }
  VTM_RETURN_IF_ERROR(target()->RemoveTree(path));
  MutexLock lock(mu_);
  if (!copy.empty()) unsynced_removals_.emplace(path, copy);  // the first removal since the last sync counts
  for (auto it = unsynced_dirs_.begin(); it != unsynced_dirs_.end();) {
    it = (*it == path || it->rfind(path + "/", 0) == 0) ? unsynced_dirs_.erase(it) : std::next(it);
  }
  return OkStatus();
}

Status FaultInjectionEnv::RemoveFile(const std::string& path) {
  if (auto e = Injected("RemoveFile", path)) return *std::move(e);
  VTM_RETURN_IF_ERROR(target()->RemoveFile(path));
  MutexLock lock(mu_);
  if (auto it = db_files_.find(path); it != db_files_.end()) {
    // What was synced of it comes back if the power is cut before its directory is synced.
    if (it->second.synced) {
      it->second.removed = true;
    } else {
      db_files_.erase(it);
    }
  }
  return OkStatus();
}

Status FaultInjectionEnv::ChangeOwner(const std::string& path, uid_t uid, gid_t gid) {
  if (auto e = Injected("ChangeOwner", path)) return *std::move(e);
  return target()->ChangeOwner(path, uid, gid);
}

Result<Subprocess> FaultInjectionEnv::Spawn(const std::vector<std::string>& argv, const SpawnOptions& options) {
  if (auto e = Injected("Spawn", argv.empty() ? "" : argv[0])) return *std::move(e);
  return target()->Spawn(argv, options);
}

Result<std::unique_ptr<DbFile>> FaultInjectionEnv::OpenDbFile(const std::string& path, bool created,
                                                              std::unique_ptr<DbFile> host) {
  if (auto e = Injected("OpenDbFile", path)) return *std::move(e);
  std::optional<std::string> durable;
  if (!created) {
    // A file from before it was first opened here counts as synced.
    VTM_ASSIGN_OR_RETURN(durable, target()->ReadFile(path));
  }
  {
    MutexLock lock(mu_);
    auto [it, inserted] = db_files_.try_emplace(path);
    if (inserted) {
      it->second.synced = std::move(durable);
    } else {
      it->second.removed = false;  // made again: until its next sync, a crash may bring back the old one
    }
  }
  return std::unique_ptr<DbFile>(std::make_unique<FaultDbFile>(this, path, std::move(host)));
}

Result<Subprocess> StandInInstanceEnv::Spawn(const std::vector<std::string>& argv, const SpawnOptions& options) {
  const std::string suffix = "vtm-instance";
  if (argv.empty() || argv[0].size() < suffix.size() ||
      argv[0].compare(argv[0].size() - suffix.size(), suffix.size(), suffix) != 0) {
    return target()->Spawn(argv, options);
  }
  // $0 is "vtm-instance" and the arguments are the real ones, so /proc/<pid>/cmdline names the
  // VM as a real instance's does. fd 4 is the ready fd (InstanceSupervisor::CommandLine).
  static const char* kScript =
      "while [ $# -gt 0 ]; do [ \"$1\" = --tpm-state-dir ] && dir=$2; shift; done\n"
      "if [ ! -d \"$dir\" ]; then echo \"ERROR no vTPM state directory $dir\" >&4; exit 1; fi\n"
      "echo READY >&4\n"
      "exec 3<&- 4>&-\n"
      "while :; do sleep 0.2; done\n";
  std::vector<std::string> stand_in = {"/bin/sh", "-c", kScript, "vtm-instance"};
  stand_in.insert(stand_in.end(), argv.begin() + 1, argv.end());
  auto child = target()->Spawn(stand_in, options);
  if (child.ok()) {
    MutexLock lock(mu_);
    pids_.push_back(child->pid());
  }
  return child;
}

std::vector<pid_t> StandInInstanceEnv::pids() const {
  MutexLock lock(mu_);
  return pids_;
}

}  // namespace vtm::testing
