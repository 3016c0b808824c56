// Two real vtmds on one machine for migration tests: a source (host-a) and a destination
// (host-b), each with its own simulated host TPM and state directory, under one fleet CA
// (made with openssl) that certifies both host CAs; the destination listens for migrations on a
// free loopback port, the source appraises destinations with a policy learned (vtm-verify
// learn) from the destination's own evidence. Every process ends with the rig.
#pragma once

#include <sys/types.h>

#include <string>
#include <utility>
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

// What the fault tests of a live migration check after each fault (with a fake QEMU in
// migration_live_fault_test, with real QEMU in migration_qemu_fault_test).

// The migration of uuid that host knows last (`vtmctl migrate status`): {id, state}, empty if none.
std::pair<std::string, std::string> LastMigrationOf(VtmdFixture& host, const std::string& uuid);
// The pid of uuid's vtm-instance that host recorded (`vtmctl show`); 0 if none.
pid_t RecordedInstancePid(VtmdFixture& host, const std::string& uuid);
// Alive and not a zombie.
bool ProcessRunning(pid_t pid);
// SIGKILL to pid, then waits (up to 5 s) until it is gone; false if it could not be killed.
bool KillAndWait(pid_t pid);
// The vtm-instance and swtpm processes of uuid, checked against what owns them: every
// vtm-instance is holder's recorded one (0: none may run), every swtpm and peer inspector a
// child of it; any other process naming the VM is a problem too, unless its program's name is in
// allowed (e.g. the test's own QEMUs, whose tpm socket paths name the VM). Waits up to 5 s for the
// dying to go. Returns what is wrong ("" if nothing) and the number of vtm-instances in *instances.
std::string VmProcessProblems(const std::string& uuid, const VtmdFixture& holder, pid_t recorded, size_t* instances,
                              const std::vector<std::string>& allowed = {});

}  // namespace vtm::testing
