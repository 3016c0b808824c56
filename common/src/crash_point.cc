// Crash points: armed and traced through the environment, read once.
#include "vtm/crash_point.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace vtm {
namespace {

struct CrashConfig {
  std::string crash_at;
  std::string trace_path;
};

const CrashConfig& Config() {
  static const CrashConfig config = [] {
    CrashConfig c;
    if (const char* at = std::getenv("VTM_CRASH_AT")) c.crash_at = at;
    if (const char* trace = std::getenv("VTM_CRASH_TRACE")) c.trace_path = trace;
    return c;
  }();
  return config;
}

}  // namespace

void CrashPoint(std::string_view name) {
  const CrashConfig& config = Config();
  if (!config.trace_path.empty()) {
    int fd = ::open(config.trace_path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) {
      std::string line(name);
      line += '\n';
      (void)!::write(fd, line.data(), line.size());
      ::close(fd);
    }
  }
  if (!config.crash_at.empty() && name == config.crash_at) ::kill(::getpid(), SIGKILL);
}

}  // namespace vtm
