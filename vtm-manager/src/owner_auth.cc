// Reading the owner hierarchy password: permission checks, then the bytes.
#include "owner_auth.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

#include "vtm/unique_fd.h"

namespace vtm {
namespace {

// TPM2B_AUTH holds at most one digest; 64 covers SHA-512.
constexpr size_t kMaxAuth = 64;

std::string Octal(mode_t mode) {
  char buf[8];
  snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

Result<SecretBytes> ReadAuthFile(const std::string& path, const std::string& what) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) return ErrnoError("opening " + what + " " + path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoError("stat " + path);
  if (!S_ISREG(st.st_mode)) return Error(ErrorCode::kInvalidArgument, what + " " + path + " is not a regular file");
  if ((st.st_mode & 077) != 0 || (st.st_uid != 0 && st.st_uid != ::geteuid())) {
    return Error(ErrorCode::kPermissionDenied,
                 what + " " + path + " (mode " + Octal(st.st_mode) + ", owner uid " + std::to_string(st.st_uid) +
                     ") may be read or changed by others; make it root's and private: chown root " + path +
                     " && chmod 600 " + path);
  }
  SecretBytes buf(kMaxAuth + 2);
  size_t got = 0;
  for (;;) {
    ssize_t n = ::read(fd.get(), buf.data() + got, buf.size() - got);
    if (n < 0) return ErrnoError("reading " + path);
    if (n == 0) break;
    got += static_cast<size_t>(n);
    if (got == buf.size()) break;
  }
  if (got > 0 && buf.data()[got - 1] == '\n') --got;
  if (got > kMaxAuth) {
    return Error(ErrorCode::kInvalidArgument, what + " " + path + " holds more than " + std::to_string(kMaxAuth) +
                                                  " bytes; a TPM authorization value is at most one digest long");
  }
  return SecretBytes(buf.data(), got);
}

}  // namespace

Result<SecretBytes> LoadOwnerAuth(const std::string& file) {
  if (!file.empty()) return ReadAuthFile(file, "the owner password file (--owner-auth-file)");
  const char* dir = std::getenv("CREDENTIALS_DIRECTORY");
  if (dir == nullptr || *dir == '\0') return SecretBytes();
  const std::string path = std::string(dir) + "/" + kOwnerAuthCredential;
  if (::access(path.c_str(), F_OK) != 0) return SecretBytes();
  return ReadAuthFile(path, std::string("the systemd credential ") + kOwnerAuthCredential);
}

}  // namespace vtm
