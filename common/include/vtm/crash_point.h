// Test seam for crash consistency: named points in vtmd's operations where a test makes the
// process die by SIGKILL, exactly as `kill -9` or a power cut would, to show that every step
// recovers (tests/integration/vtmd_kill_test.cc).
//   VTM_CRASH_AT=<name>     the process kills itself the first time it reaches point <name>
//   VTM_CRASH_TRACE=<file>  the name of every point reached is appended to <file>, one a line,
//                           so a test can enumerate the points of an operation
// Both are read once, at the first point reached. Unset (production), a point costs a branch.
//
// Thread safety: CrashPoint may be called from any thread.
#pragma once

#include <string_view>

namespace vtm {

void CrashPoint(std::string_view name);

}  // namespace vtm
