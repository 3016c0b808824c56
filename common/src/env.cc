// Env::Default(): the host's files (vtm/fs.h), clocks and processes (vtm/subprocess.h).
#include "vtm/env.h"

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <filesystem>

#include "vtm/fs.h"

namespace vtm {
namespace {

class PosixEnv final : public Env {
 public:
  Status MakeDir(const std::string& path, mode_t mode, std::optional<uid_t> uid, std::optional<gid_t> gid) override {
    return vtm::MakeDir(path, mode, uid, gid);
  }
  Result<std::string> ReadFile(const std::string& path) override { return vtm::ReadFile(path); }
  Status WriteFileAtomic(const std::string& path, const std::string& data, mode_t mode) override {
    return vtm::WriteFileAtomic(path, data, mode);
  }
  Status RenameDurably(const std::string& from, const std::string& to) override { return vtm::RenameDurably(from, to); }
  Status SyncDir(const std::string& path) override {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd.valid()) return ErrnoError("opening directory " + path);
    if (::fsync(fd.get()) != 0) return ErrnoError("syncing directory " + path);
    return OkStatus();
  }
  Status RemoveTree(const std::string& path) override { return vtm::RemoveTree(path); }
  Status RemoveFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) return ErrnoError("removing " + path);
    return OkStatus();
  }
  bool PathExists(const std::string& path) override { return vtm::PathExists(path); }
  Result<std::vector<std::string>> ListFiles(const std::string& dir) override {
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
      if (entry.is_regular_file()) names.push_back(entry.path().filename().string());
    }
    if (ec) return Error(ErrorCode::kIo, "listing " + dir + ": " + ec.message());
    return names;
  }
  Status ChangeOwner(const std::string& path, uid_t uid, gid_t gid) override {
    if (::chown(path.c_str(), uid, gid) != 0) return ErrnoError("chown " + path);
    return OkStatus();
  }
  Result<std::unique_ptr<DbFile>> OpenDbFile(const std::string& /*path*/, bool /*created*/,
                                             std::unique_ptr<DbFile> host) override {
    return host;
  }

  std::chrono::steady_clock::time_point SteadyNow() override { return std::chrono::steady_clock::now(); }
  int64_t UnixSeconds() override { return static_cast<int64_t>(std::time(nullptr)); }

  Result<Subprocess> Spawn(const std::vector<std::string>& argv, const SpawnOptions& options) override {
    return Subprocess::Spawn(argv, options);
  }
  bool ProcessAlive(pid_t pid) override { return vtm::ProcessAlive(pid); }
  Result<UniqueFd> OpenPidFd(pid_t pid) override {
    int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
    if (fd < 0) return ErrnoError("pidfd_open(" + std::to_string(pid) + ")");
    return UniqueFd(fd);
  }
  Status SignalPidFd(int pidfd, int signal) override {
    if (syscall(SYS_pidfd_send_signal, pidfd, signal, nullptr, 0) != 0) {
      return ErrnoError("sending signal " + std::to_string(signal) + " through a pidfd");
    }
    return OkStatus();
  }
  Result<pid_t> EndRecordedProcess(const std::string& record_path) override {
    return vtm::EndRecordedProcess(record_path);
  }
};

}  // namespace

Env* Env::Default() {
  static Env* const env = new PosixEnv;  // never deleted: threads may use it until exit
  return env;
}

}  // namespace vtm
