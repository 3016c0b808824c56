// Parsing and printing of vtm-instance's command line; reading the keys pipe.
#include "instance_config.h"

#include <poll.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>

namespace vtm::instance {
namespace {

constexpr size_t kSunPathMax = sizeof(sockaddr_un::sun_path) - 1;
Result<unsigned long> ParseNumber(const std::string& option, const std::string& text, int base, unsigned long max) {

  if (text.empty()) return Error(ErrorCode::kInvalidArgument, option + " needs a value");
  errno = 0;
  char* end = nullptr;
  unsigned long v = std::strtoul(text.c_str(), &end, base);
  if (errno != 0 || *end != '\0' || text[0] == '-' || v > max) {
    return Error(ErrorCode::kInvalidArgument, option + ": not a valid number: " + text);
  }
  return v;
}

Status CheckPath(const std::string& option, const std::string& path) {
  if (path.empty() || path[0] != '/') {
    return Error(ErrorCode::kInvalidArgument, option + " must be an absolute path: " + path);
  }
  // swtpm splits its option values at commas; a comma in a path would change its meaning.
  if (path.find(',') != std::string::npos) {
    return Error(ErrorCode::kInvalidArgument, option + " must not contain ',': " + path);
  }
  return OkStatus();
}

bool LooksLikeUuid(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) || c == '-'; });
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Command line and keys

std::vector<std::string> ToCommandLine(const InstanceConfig& c) {
  char mode[8];
  snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(c.socket_mode));
  std::vector<std::string> args = {"--vm",         c.vm_uuid,
                                   "--tpm-state-dir", c.tpm_state_dir,
                                   "--run-dir",    c.run_dir,
                                   "--log-dir",    c.log_dir,
                                   "--uid",        std::to_string(c.uid),
                                   "--gid",        std::to_string(c.gid),
                                   "--socket-uid", std::to_string(c.socket_uid),
                                   "--socket-gid", std::to_string(c.socket_gid),
                                   "--keys-fd",    std::to_string(c.keys_fd),
                                   "--ready-fd",   std::to_string(c.ready_fd)};
  // Options at their defaults are left out, so `ps` shows what is particular to this VM.
  const InstanceConfig defaults;
  if (c.socket_mode != defaults.socket_mode) args.insert(args.end(), {"--socket-mode", mode});
  if (c.swtpm_path != defaults.swtpm_path) args.insert(args.end(), {"--swtpm", c.swtpm_path});
  if (c.peer_check != defaults.peer_check)
    args.insert(args.end(), {"--qemu-peer-check", PeerCheckModeName(c.peer_check)});
  if (!c.seccomp) args.push_back("--no-seccomp");
  if (!c.manager_socket.empty()) args.insert(args.end(), {"--manager-socket", c.manager_socket});
  if (c.incoming) args.push_back("--incoming");
  static const char* kLevels[] = {"debug", "info", "warning", "error"};
  if (c.log_level != defaults.log_level) args.insert(args.end(), {"--log-level", kLevels[static_cast<int>(c.log_level)]});
  return args;
}

Result<InstanceConfig> ParseCommandLine(const std::vector<std::string>& args) {
  InstanceConfig c;
  bool have_uid = false, have_gid = false, have_keys = false, have_ready = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& opt = args[i];
    if (opt == "--no-seccomp") {
      c.seccomp = false;
      continue;
    }
    if (opt == "--incoming") {
      c.incoming = true;
      continue;
    }
    if (i + 1 >= args.size()) return Error(ErrorCode::kInvalidArgument, opt + " needs a value");
    const std::string& val = args[++i];
    if (opt == "--vm") {
      if (!LooksLikeUuid(val)) return Error(ErrorCode::kInvalidArgument, "--vm must be a UUID: " + val);
      c.vm_uuid = val;
    } else if (opt == "--tpm-state-dir") {
      VTM_RETURN_IF_ERROR(CheckPath(opt, val));
      c.tpm_state_dir = val;
    } else if (opt == "--run-dir") {
      VTM_RETURN_IF_ERROR(CheckPath(opt, val));
      c.run_dir = val;
    } else if (opt == "--log-dir") {
      VTM_RETURN_IF_ERROR(CheckPath(opt, val));
      c.log_dir = val;
    } else if (opt == "--uid") {
      VTM_ASSIGN_OR_RETURN(c.uid, ParseNumber(opt, val, 10, 0xfffffffe));
      have_uid = true;
    } else if (opt == "--gid") {
      VTM_ASSIGN_OR_RETURN(c.gid, ParseNumber(opt, val, 10, 0xfffffffe));
      have_gid = true;
    } else if (opt == "--socket-uid") {
      VTM_ASSIGN_OR_RETURN(c.socket_uid, ParseNumber(opt, val, 10, 0xfffffffe));
    } else if (opt == "--socket-gid") {
      VTM_ASSIGN_OR_RETURN(c.socket_gid, ParseNumber(opt, val, 10, 0xfffffffe));
    } else if (opt == "--socket-mode") {
      VTM_ASSIGN_OR_RETURN(c.socket_mode, ParseNumber(opt, val, 8, 0777));
    } else if (opt == "--keys-fd") {
      VTM_ASSIGN_OR_RETURN(c.keys_fd, ParseNumber(opt, val, 10, 65535));
      have_keys = true;
    } else if (opt == "--ready-fd") {
      VTM_ASSIGN_OR_RETURN(c.ready_fd, ParseNumber(opt, val, 10, 65535));
      have_ready = true;
    } else if (opt == "--manager-socket") {
      VTM_RETURN_IF_ERROR(CheckPath(opt, val));
      c.manager_socket = val;
    } else if (opt == "--qemu-peer-check") {
      VTM_ASSIGN_OR_RETURN(c.peer_check, ParsePeerCheckMode(val));
    } else if (opt == "--swtpm") {
      if (val.empty()) return Error(ErrorCode::kInvalidArgument, "--swtpm needs a path");
      c.swtpm_path = val;
    } else if (opt == "--log-level") {
      if (val == "debug")
        c.log_level = LogLevel::kDebug;
      else if (val == "info")
        c.log_level = LogLevel::kInfo;
      else if (val == "warning")
        c.log_level = LogLevel::kWarning;
      else if (val == "error")
        c.log_level = LogLevel::kError;
      else
        return Error(ErrorCode::kInvalidArgument, "--log-level must be debug, info, warning or error");
    } else {
      return Error(ErrorCode::kInvalidArgument, "unknown option " + opt);
    }
  }
  if (c.vm_uuid.empty()) return Error(ErrorCode::kInvalidArgument, "--vm is required");
  if (c.tpm_state_dir.empty()) return Error(ErrorCode::kInvalidArgument, "--tpm-state-dir is required");
  if (c.run_dir.empty()) return Error(ErrorCode::kInvalidArgument, "--run-dir is required");
  if (c.log_dir.empty()) return Error(ErrorCode::kInvalidArgument, "--log-dir is required");
  if (!have_uid || !have_gid) return Error(ErrorCode::kInvalidArgument, "--uid and --gid are required");
  if (!have_keys) return Error(ErrorCode::kInvalidArgument, "--keys-fd is required");
  if (!have_ready) return Error(ErrorCode::kInvalidArgument, "--ready-fd is required");
  if (c.keys_fd <= 2 || c.ready_fd <= 2 || c.keys_fd == c.ready_fd) {
    return Error(ErrorCode::kInvalidArgument, "--keys-fd and --ready-fd must be distinct fds above 2");
  }
  for (const auto& p : {c.TpmSocketPath(), c.SwtpmCtrlSocketPath(), c.manager_socket}) {
    if (p.size() > kSunPathMax) {
      return Error(ErrorCode::kInvalidArgument, "--run-dir is too long for a unix socket path (max " +
                                                    std::to_string(kSunPathMax) + " bytes): " + p);
    }
  }
  return c;
}

Result<InstanceKeys> ReadInstanceKeys(int fd, std::chrono::milliseconds timeout) {
  SecretBytes buf(2 * kKeySize + 1);  // one spare byte detects a writer sending too much
  size_t got = 0;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return Error(ErrorCode::kUnavailable, "timed out reading the keys from --keys-fd (got " + std::to_string(got) +
                                                " of " + std::to_string(2 * kKeySize) + " bytes and no EOF)");
    }
    pollfd p{fd, POLLIN, 0};
    int r = poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return ErrnoError("waiting for the keys on --keys-fd");
    if (r == 0) continue;
    ssize_t n = read(fd, buf.data() + got, buf.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("reading the keys from --keys-fd");
    if (n == 0) break;
    got += static_cast<size_t>(n);
    if (got > 2 * kKeySize) {
      return Error(ErrorCode::kInvalidArgument,
                   "--keys-fd carried more than " + std::to_string(2 * kKeySize) + " bytes");
    }
  }
  if (got != 2 * kKeySize) {
    return Error(ErrorCode::kInvalidArgument, "--keys-fd carried " + std::to_string(got) + " bytes, expected " +
                                                  std::to_string(2 * kKeySize) +
                                                  " (32-byte state key, 32-byte migration key)");
  }
  InstanceKeys keys;
  keys.state_key = SecretBytes(buf.data(), kKeySize);
  keys.migration_key = SecretBytes(buf.data() + kKeySize, kKeySize);
  return keys;
}

}  // namespace vtm::instance
