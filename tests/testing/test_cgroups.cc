// Test-made cgroups (see test_cgroups.h).
#include "test_cgroups.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

namespace vtm::testing {

TestCgroups::TestCgroups(const std::string& base) {
  std::ifstream mounts("/proc/self/mounts");
  std::string dev, dir, type, rest, v2, v1;
  while (mounts >> dev >> dir >> type && std::getline(mounts, rest)) {
    if (type == "cgroup2" && v2.empty()) v2 = dir;
    if (type == "cgroup" && v1.empty()) v1 = dir;
  }
  std::string root = v2.empty() ? v1 : v2;
  if (root.empty()) return;
  base_ = root + "/" + (base.empty() ? "vtm-test-" + std::to_string(getpid()) : base);
  made_base_ = mkdir(base_.c_str(), 0755) == 0;
  struct stat st;
  if (!made_base_ && (errno != EEXIST || stat(base_.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))) base_.clear();
}

TestCgroups::~TestCgroups() {
  for (auto it = made_.rbegin(); it != made_.rend(); ++it) rmdir(it->c_str());
  if (made_base_) rmdir(base_.c_str());
}

std::string TestCgroups::Make(const std::string& name) {
  if (base_.empty()) return "";
  std::string path = base_ + "/" + name;
  if (mkdir(path.c_str(), 0755) != 0) return "";
  made_.push_back(path);
  return path;
}

ChildOutcome RunInCgroup(const std::string& cgroup, const std::function<int()>& body) {
  ChildOutcome out;
  int go[2];
  if (pipe2(go, O_CLOEXEC) != 0) return out;
  pid_t pid = fork();
  if (pid < 0) {
    close(go[0]);
    close(go[1]);
    return out;
  }
  if (pid == 0) {
    close(go[1]);
    char c;
    if (read(go[0], &c, 1) != 1) _exit(120);  // the parent could not place it
    _exit(body());
  }
  close(go[0]);
  out.pid = pid;
  bool placed = static_cast<bool>(std::ofstream(cgroup + "/cgroup.procs") << pid << std::flush);
  if (placed) (void)!write(go[1], "g", 1);
  close(go[1]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
  }
  if (WIFEXITED(status)) out.exit_code = WEXITSTATUS(status);
  return out;
}

}  // namespace vtm::testing
