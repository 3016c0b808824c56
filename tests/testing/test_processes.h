// Processes in the shapes tests need: an orphan, as a killed owner leaves its helpers, and a
// guard that ends what a test left running when the test itself is killed.
//
// Thread safety: construct and call from one thread at a time, while the test has no other
// threads (both fork).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "vtm/subprocess.h"
#include "vtm/unique_fd.h"

namespace vtm::testing {

// Starts argv from an intermediate process that exits at once, so the new process is no
// child of the test (its parent becomes init or a subreaper), as when its owner was killed.
// Returns its pid, or -1 if it could not be started. The caller ends it (kill by pid).
pid_t SpawnOrphan(const std::vector<std::string>& argv, const SpawnOptions& options = {});

// Pids of processes whose command line contains every one of the given strings.
std::vector<pid_t> FindProcesses(const std::vector<std::string>& needles);

// Ends, when the test process dies without destroying it (ctest's timeout, kill -9, a crash),
// every process whose command line names dir (a test's own temporary directory), then removes
// dir. Nothing a test started then outlives it: neither its direct children (which ctest's
// timeout also kills) nor processes that were reparented away from it (a vtm-instance whose
// vtmd exited, an orphan) and that no kill of the test's process tree reaches.
//
// A watcher process, no child of the test (so a kill of the test's tree spares it), waits for
// the end of a pipe only the test holds. Destroying the guard tells it the test cleaned up
// itself; then it does nothing.
class OrphanGuard {
 public:
  explicit OrphanGuard(std::string dir);
  ~OrphanGuard();
  OrphanGuard(const OrphanGuard&) = delete;
  OrphanGuard& operator=(const OrphanGuard&) = delete;

 private:
  UniqueFd lifeline_;  // write end; its last close wakes the watcher
};

}  // namespace vtm::testing
