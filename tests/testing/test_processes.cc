// SpawnOrphan and OrphanGuard: fork, and for the guard a watcher that outlives the test.
#include "test_processes.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "vtm/fs.h"

namespace vtm::testing {

pid_t SpawnOrphan(const std::vector<std::string>& argv, const SpawnOptions& options) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return -1;
  UniqueFd read_end(fds[0]), write_end(fds[1]);
  pid_t middle = fork();
  if (middle < 0) return -1;
  if (middle == 0) {
    auto child = Subprocess::Spawn(argv, options);
    pid_t pid = child.ok() ? child->Release() : -1;
    (void)!write(write_end.get(), &pid, sizeof pid);
    _exit(0);
  }
  write_end.reset();
  pid_t pid = -1;
  if (read(read_end.get(), &pid, sizeof pid) != static_cast<ssize_t>(sizeof pid)) pid = -1;
  int status = 0;
  waitpid(middle, &status, 0);
  return pid;
}

std::vector<pid_t> FindProcesses(const std::vector<std::string>& needles) {
  std::vector<pid_t> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    std::string name = e.path().filename().string();
    if (name.empty() || !isdigit(static_cast<unsigned char>(name[0]))) continue;
    auto cmd = ReadFile(e.path().string() + "/cmdline");
    if (!cmd.ok()) continue;
    bool all = true;
    for (const auto& n : needles) all = all && cmd->find(n) != std::string::npos;
    if (all) out.push_back(static_cast<pid_t>(std::stol(name)));
  }
  return out;
}

OrphanGuard::OrphanGuard(std::string dir) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return;
  UniqueFd read_end(fds[0]), write_end(fds[1]);
  pid_t middle = fork();
  if (middle < 0) return;
  if (middle == 0) {
    // The watcher: a grandchild whose parent exits now, so it is no descendant of the test.
    if (fork() != 0) _exit(0);
    write_end.reset();
    setsid();
    // Nothing of the test's but the lifeline: no other guard's lifeline kept open, no pipe of
    // ctest's held past the test's end.
    std::vector<int> inherited;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
      inherited.push_back(std::atoi(e.path().filename().c_str()));
    }
    for (int fd : inherited) {
      if (fd > 2 && fd != read_end.get()) close(fd);
    }
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (int fd = 0; fd <= 2; ++fd) dup2(null, fd);
    // Only the test holds the write end: EOF means the test is gone; a byte, that it cleaned up.
    char byte = 0;
    ssize_t n;
    do {
      n = read(read_end.get(), &byte, 1);
    } while (n < 0 && errno == EINTR);
    if (n == 1) _exit(0);
    // Kill until none is left: one may have started another before it died.
    for (int round = 0; round < 50; ++round) {
      std::vector<pid_t> left = FindProcesses({dir});
      if (left.empty()) break;
      for (pid_t pid : left) kill(pid, SIGKILL);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    std::filesystem::remove_all(dir, ec);
    _exit(0);
  }
  read_end.reset();
  int status = 0;
  waitpid(middle, &status, 0);
  lifeline_ = std::move(write_end);
}

OrphanGuard::~OrphanGuard() {
  if (!lifeline_.valid()) return;
  char done = 1;
  (void)!write(lifeline_.get(), &done, 1);
}

}  // namespace vtm::testing
