// Two real vtmds on one machine for migration tests: a source (host-a) and a destination
// (host-b), each with its own simulated host TPM and state directory, under one fleet CA
// (made with openssl) that certifies both host CAs; the destination listens for migrations on a
// free loopback port, the source appraises destinations with a policy learned (vtm-verify
// learn) from the destination's own evidence. Every process ends with the rig.
#pragma once

#include <string>
#include <vector>

#include "test_env.h"
#include "vtm/tls.h"
#include "vtmd_fixture.h"

namespace vtm::testing {

class MigrationRig {
 public:
  // Runs the whole set-up; false (with the reason in *error) if any step failed.
  bool SetUp(std::string* error);
  // Restarts the source with another destination policy file (policy.json: the learned one).
  // A vtmd that died (a crash point) is started again without stopping it first: pass
  // running=false.
  bool RestartSource(const std::string& policy_path, std::string* error, bool running = true);
  // extra: more vtmd flags for the destination (this start only).
  bool RestartDestination(std::string* error, bool running = true, const std::vector<std::string>& extra = {});
  std::string P(const std::string& name) const { return dir.path() + "/" + name; }
  CommandResult Verify(std::vector<std::string> args) const;
  // A TLS identity the fleet CA issued (CN and URI SAN as given): a peer of the test's making.
  TlsCredentials FleetPeer(const std::string& name, const std::string& cn, const std::string& uri);
  std::string Logs() const;

  TempDir dir;
  VtmdFixture a, b;          // source, destination
  std::string destination;   // 127.0.0.1:PORT of b's migration endpoint

 private:
  bool JoinFleet(VtmdFixture& f, const std::string& tag, std::string* error);
  bool StartDestination(std::string* error, const std::vector<std::string>& extra = {});
  bool WritePolicyFromDestination(const std::string& path, std::string* error);
};

}  // namespace vtm::testing
