// Shared test fixtures: temporary directories and running commands with captured output.
#pragma once

#include <string>
#include <vector>

namespace vtm::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct CommandResult {
  int exit_code = -1;  // -1 when killed by a signal or not started
  std::string output;  // stdout and stderr interleaved
};

// Runs argv (no shell) with stdin from /dev/null; stdin_data, if any, is written to stdin.
CommandResult RunCommand(const std::vector<std::string>& argv, const std::string& stdin_data = "");

// Path of a binary built by this project, e.g. BuildPath("vtm-manager/vtmctl").
std::string BuildPath(const std::string& relative);

}  // namespace vtm::testing
