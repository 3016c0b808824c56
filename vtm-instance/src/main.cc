// Entry point of vtm-instance: parses vtmd's command line, reads the VM's keys from the
// keys pipe, blocks the signals the instance handles through a signalfd, and runs it.
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "instance.h"
#include "peer_check.h"
#include "vtm/log.h"
#include "vtm/net.h"
#include "vtm/secret.h"

namespace {

// Before the config is known, setup errors still have to reach vtmd if it named a ready fd.
int FailEarly(int ready_fd, const std::string& message) {
  LOG_ERROR << message;
  if (ready_fd > 2) {
    std::string line = "ERROR " + message + "\n";
    (void)vtm::WriteAll(ready_fd, line.data(), line.size());
    close(ready_fd);
  }
  return 1;
}

int ReadyFdFromArgs(const std::vector<std::string>& args) {
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == "--ready-fd") {
      char* end = nullptr;
      long fd = std::strtol(args[i + 1].c_str(), &end, 10);
      return (end != nullptr && *end == '\0' && fd > 2 && fd < 1024) ? static_cast<int>(fd) : -1;
    }
  }
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace vtm::instance;
  // Keys live in this process's memory for a moment: keep them out of core dumps and
  // away from ptrace by other processes of the same uid; swtpm, which holds them for the
  // VM's lifetime, inherits the zero core limit (exec would make it dumpable again).
  const auto hardened = vtm::KeepSecretsOutOfCoreDumps();
  signal(SIGPIPE, SIG_IGN);

  std::vector<std::string> args(argv + 1, argv + argc);
  if (!args.empty() && args[0] == kPeerInspectorFlag) return PeerInspectorMain(args);
  vtm::SetLogComponent("vtm-instance");
  auto config = ParseCommandLine(args);
  if (!config.ok()) {
    return FailEarly(ReadyFdFromArgs(args), "invalid command line: " + config.error().message());
  }
  vtm::SetLogComponent("vtm-instance[" + config->vm_uuid + "]");
  vtm::SetLogLevel(config->log_level);
  if (!hardened.ok()) return FailEarly(config->ready_fd, "VM " + config->vm_uuid + ": " + hardened.error().message());

  // Handled in the relay's poll loop; swtpm gets an empty mask back from Subprocess.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &mask, nullptr) != 0) {
    return FailEarly(config->ready_fd, "VM " + config->vm_uuid + ": blocking signals failed");
  }
  vtm::UniqueFd signal_fd(signalfd(-1, &mask, SFD_CLOEXEC));
  if (!signal_fd.valid()) return FailEarly(config->ready_fd, "VM " + config->vm_uuid + ": signalfd failed");

  auto keys = ReadInstanceKeys(config->keys_fd, std::chrono::seconds(10));
  close(config->keys_fd);
  if (!keys.ok()) return FailEarly(config->ready_fd, "VM " + config->vm_uuid + ": " + keys.error().message());

  LOG_INFO << "starting (state " << config->tpm_state_dir << ", run " << config->run_dir << ")";
  InstanceProcess instance(std::move(*config), std::move(*keys), std::move(signal_fd));
  return instance.Run();
}
