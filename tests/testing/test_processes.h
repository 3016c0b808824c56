// Processes in the shapes tests need that Subprocess does not make: an orphan, as a killed
// owner leaves its helpers.
//
// Thread safety: call from one thread at a time (fork).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "vtm/subprocess.h"

namespace vtm::testing {

// Starts argv from an intermediate process that exits at once, so the new process is no
// child of the test (its parent becomes init or a subreaper), as when its owner was killed.
// Returns its pid, or -1 if it could not be started. The caller ends it (kill by pid).
pid_t SpawnOrphan(const std::vector<std::string>& argv, const SpawnOptions& options = {});

}  // namespace vtm::testing
