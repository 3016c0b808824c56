// libvirt's qemu.conf: only the `user` setting, which decides who may connect to tpm.sock.
#include <pwd.h>

#include <cstdlib>
#include <sstream>

#include "vtm/fs.h"
#include "vtm/libvirt.h"

namespace vtm::libvirt {

Result<std::optional<std::string>> ParseQemuConfUser(const std::string& qemu_conf) {
  // libvirt's conf syntax: `name = value`, '#' comments, strings in "..." or '...'. The last
  // assignment wins, as in libvirt.
  std::optional<std::string> user;
  std::istringstream in(qemu_conf);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    size_t i = line.find_first_not_of(" \t");
    if (i == std::string::npos || line[i] == '#') continue;
    if (line.compare(i, 4, "user") != 0) continue;
    size_t eq = line.find_first_not_of(" \t", i + 4);
    if (eq == std::string::npos || line[eq] != '=') continue;  // another name such as user_xattr
    size_t q = line.find_first_not_of(" \t", eq + 1);
    if (q == std::string::npos || (line[q] != '"' && line[q] != '\'')) {
      return Error(ErrorCode::kInvalidArgument,
                   "line " + std::to_string(n) + ": `user` must be a quoted string, e.g. user = \"libvirt-qemu\"");
    }
    size_t end = line.find(line[q], q + 1);
    if (end == std::string::npos) {
      return Error(ErrorCode::kInvalidArgument, "line " + std::to_string(n) + ": unterminated string for `user`");
    }
    std::string value = line.substr(q + 1, end - q - 1);
    size_t after = line.find_first_not_of(" \t\r", end + 1);
    if (value.empty() || (after != std::string::npos && line[after] != '#')) {
      return Error(ErrorCode::kInvalidArgument, "line " + std::to_string(n) + ": malformed `user` setting");
    }
    user = value;
  }
  return user;
}

bool SystemUserExists(const std::string& user) { return getpwnam(user.c_str()) != nullptr; }

Result<UserIds> ResolveQemuUser(const std::string& user) {
  const struct passwd* pw = nullptr;
  if (user.starts_with("+")) {
    char* end = nullptr;
    unsigned long uid = std::strtoul(user.c_str() + 1, &end, 10);
    if (user.size() > 1 && *end == '\0' && uid < 0xFFFFFFFFul) pw = getpwuid(static_cast<uid_t>(uid));
  } else {
    pw = getpwnam(user.c_str());
  }
  if (pw == nullptr) return Error(ErrorCode::kNotFound, "the QEMU user '" + user + "' does not exist");
  return UserIds{pw->pw_uid, pw->pw_gid};
}

Result<QemuUser> DetectQemuUser(const std::string& qemu_conf_path,
                                const std::function<bool(const std::string&)>& user_exists) {
  if (PathExists(qemu_conf_path)) {
    VTM_ASSIGN_OR_RETURN(std::string text, ReadFile(qemu_conf_path));
    auto user = ParseQemuConfUser(text);
    if (!user.ok()) return std::move(user).error().Context(qemu_conf_path);
    if (*user) return QemuUser{**user, "`user` in " + qemu_conf_path};
  }
  if (user_exists("libvirt-qemu")) {
    return QemuUser{"libvirt-qemu", "libvirt's default on Debian (no `user` in " + qemu_conf_path + ")"};
  }
  return QemuUser{"root", "no `user` in " + qemu_conf_path + " and no libvirt-qemu account"};
}

}  // namespace vtm::libvirt
