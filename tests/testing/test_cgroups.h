// Cgroups a test makes and removes, to stand in for libvirt's per-domain cgroups: root may
// create a cgroup and move a process into it, the process itself (unprivileged) may not leave.
//
// Thread safety: one test thread.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

namespace vtm::testing {

class TestCgroups {
 public:
  // A directory of the test's own in the first cgroup2 hierarchy (else the first cgroup v1 one):
  // `base` below its root, vtm-test-<pid> if empty. An existing `base` is used, and left.
  explicit TestCgroups(const std::string& base = "");
  // Removes the cgroups made (they must be empty: the children ran to their end).
  ~TestCgroups();
  TestCgroups(const TestCgroups&) = delete;
  TestCgroups& operator=(const TestCgroups&) = delete;

  bool usable() const { return !base_.empty(); }
  // Makes <base>/<name>; returns its path, or "" on failure.
  std::string Make(const std::string& name);

 private:
  std::string base_;
  bool made_base_ = false;
  std::vector<std::string> made_;
};

struct ChildOutcome {
  pid_t pid = -1;
  int exit_code = -1;  // -1: did not exit normally
};

// Forks a child, moves it into `cgroup` before it runs `body`, and waits for its exit code.
ChildOutcome RunInCgroup(const std::string& cgroup, const std::function<int()>& body);

}  // namespace vtm::testing
