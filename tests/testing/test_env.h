// Shared test fixtures: temporary directories, running commands with captured output, and
// the byte-string conversions tests compare TPM values with.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "vtm/secret.h"

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

// Bytes from the hex that guest scripts and tools print (a test failure if it is not hex).
// vtm::HexDecode without the Result, for tests.
std::string HexToBytes(std::string_view hex);
// SHA-256 of data (raw 32 bytes), as PCR extends and TPM names use it.
std::string Sha256(std::string_view data);
// A DER SubjectPublicKeyInfo as a PEM public key, the form tpm2-tools and openssl read.
std::string SpkiDerToPem(const std::string& der);
// A SecretBytes' bytes as a string, for comparisons in tests (the copy is not wiped).
std::string AsString(const SecretBytes& secret);

// A small PKI made with the openssl CLI (a tool we did not write), for TLS tests: dir/NAME.pem
// and dir/NAME.key (P-256, PEM, valid two days). Failures are test failures.
void MakeTestCa(const std::string& dir, const std::string& name);
void IssueTestCertificate(const std::string& dir, const std::string& name, const std::string& ca);

}  // namespace vtm::testing
