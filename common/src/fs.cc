// Atomic writes (temp + fsync + rename + dir fsync) and directory creation with modes.
#include "vtm/fs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "vtm/unique_fd.h"

namespace vtm {

Status MakeDir(const std::string& path, mode_t mode, std::optional<uid_t> uid, std::optional<gid_t> gid) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) return Error(ErrorCode::kIo, "creating directory " + path + ": " + ec.message());
  if (uid || gid) {
    if (chown(path.c_str(), uid ? *uid : static_cast<uid_t>(-1), gid ? *gid : static_cast<gid_t>(-1)) != 0) {
      return ErrnoError("changing owner of " + path);
    }
  }
  if (chmod(path.c_str(), mode) != 0) return ErrnoError("changing mode of " + path);
  return OkStatus();
}

Result<std::string> ReadFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoError("opening " + path);
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("reading " + path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

Status WriteFileAtomic(const std::string& path, const std::string& data, mode_t mode) {
  std::string tmp = path + ".tmp";
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
    if (!fd.valid()) return ErrnoError("creating " + tmp);
    if (fchmod(fd.get(), mode) != 0) return ErrnoError("changing mode of " + tmp);
    size_t off = 0;
    while (off < data.size()) {
      ssize_t n = ::write(fd.get(), data.data() + off, data.size() - off);
      if (n < 0) {
        if (errno == EINTR) continue;
        ::unlink(tmp.c_str());
        return ErrnoError("writing " + tmp);
      }
      off += static_cast<size_t>(n);
    }
    if (fsync(fd.get()) != 0) {
      ::unlink(tmp.c_str());
      return ErrnoError("syncing " + tmp);
    }
  }
  if (Status renamed = RenameDurably(tmp, path); !renamed.ok()) {
    ::unlink(tmp.c_str());
    return renamed;
  }
  return OkStatus();
}

Status RenameDurably(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) return ErrnoError("renaming " + from + " to " + to);
  std::string dir = std::filesystem::path(to).parent_path().string();
  if (dir.empty()) dir = ".";
  UniqueFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dfd.valid()) fsync(dfd.get());
  return OkStatus();
}

Status RemoveTree(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
  if (ec) return Error(ErrorCode::kIo, "removing " + path + ": " + ec.message());
  return OkStatus();
}

bool PathExists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

}  // namespace vtm
