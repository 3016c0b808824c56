// SpawnOrphan: fork, spawn, report the pid through a pipe, exit.
#include "test_processes.h"

#include <sys/wait.h>
#include <unistd.h>

namespace vtm::testing {

pid_t SpawnOrphan(const std::vector<std::string>& argv, const SpawnOptions& options) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  pid_t middle = fork();
  if (middle < 0) {
    close(fds[0]);
    close(fds[1]);
    return -1;
  }
  if (middle == 0) {
    close(fds[0]);
    auto child = Subprocess::Spawn(argv, options);
    pid_t pid = child.ok() ? child->Release() : -1;
    (void)!write(fds[1], &pid, sizeof pid);
    _exit(0);
  }
  close(fds[1]);
  pid_t pid = -1;
  if (read(fds[0], &pid, sizeof pid) != static_cast<ssize_t>(sizeof pid)) pid = -1;
  close(fds[0]);
  int status = 0;
  waitpid(middle, &status, 0);
  return pid;
}

}  // namespace vtm::testing
