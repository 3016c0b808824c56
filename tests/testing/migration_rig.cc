// The two-host migration rig: fleet CA, host CA certificates, policy, both vtmds.
#include "migration_rig.h"

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "test_processes.h"
#include "vtm/fs.h"

namespace vtm::testing {
namespace {

// A field of /proc/<pid>/status, leading tabs removed; "" if the process is gone.
std::string ProcStatus(pid_t pid, const std::string& key) {
  auto status = ReadFile("/proc/" + std::to_string(pid) + "/status");
  std::string v = status.ok() ? Field(*status, key) : "";
  v.erase(0, v.find_first_not_of('\t'));
  return v;
}

// The NUL-separated command line; "" if the process is gone.
std::string ProcCmdline(pid_t pid) {
  auto cmdline = ReadFile("/proc/" + std::to_string(pid) + "/cmdline");
  return cmdline.ok() ? *cmdline : "";
}

// The file name of argv[0].
std::string ProgramName(pid_t pid) {
  const std::string cmdline = ProcCmdline(pid);
  const std::string arg0 = cmdline.substr(0, cmdline.find('\0'));
  return arg0.substr(arg0.rfind('/') + 1);
}

bool Ok(const CommandResult& r, const std::string& what, std::string* error) {
  if (r.exit_code == 0) return true;
  *error = what + " failed (" + std::to_string(r.exit_code) + "): " + r.output;
  return false;
}

}  // namespace

bool MigrationRig::SetUp(std::string* error) {
  if (!Ok(RunCommand({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                      "-keyout", P("fleet.key"), "-out", P("fleet.pem"), "-subj", "/CN=fleet root", "-days", "90"}),
          "making the fleet CA", error)) {
    return false;
  }
  if (!WriteFileAtomic(P("ca-ext.cnf"), "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
                       0644)
           .ok()) {
    *error = "writing ca-ext.cnf";
    return false;
  }
  for (VtmdFixture* f : {&a, &b}) {
    if (!f->StartVtmd()) {
      *error = "starting vtmd: " + f->VtmdLog();
      return false;
    }
    if (!JoinFleet(*f, f == &a ? "a" : "b", error)) return false;
    f->StopVtmd();
  }
  if (!StartDestination(error)) return false;
  if (!WritePolicyFromDestination(P("policy.json"), error)) return false;
  return RestartSource(P("policy.json"), error, /*running=*/false);
}

bool MigrationRig::RestartDestination(std::string* error, bool running, const std::vector<std::string>& extra) {
  if (running) b.StopVtmd();
  return StartDestination(error, extra);
}

bool MigrationRig::RestartSource(const std::string& policy_path, std::string* error, bool running) {
  if (running) a.StopVtmd();
  if (!a.StartVtmd({"--host-name", "host-a", "--migration-peer-ca", P("fleet.pem"), "--migration-policy", policy_path})) {
    *error = "starting the source vtmd: " + a.VtmdLog();
    return false;
  }
  return true;
}

bool MigrationRig::JoinFleet(VtmdFixture& f, const std::string& tag, std::string* error) {
  auto csr = f.Vtmctl({"ca", "csr"});
  if (!Ok(csr, "vtmctl ca csr", error)) return false;
  if (!WriteFileAtomic(P(tag + ".csr"), csr.output, 0644).ok()) return false;
  if (!Ok(RunCommand({"openssl", "x509", "-req", "-in", P(tag + ".csr"), "-CA", P("fleet.pem"), "-CAkey", P("fleet.key"),
                      "-CAcreateserial", "-out", P(tag + "-ca.pem"), "-days", "90", "-extfile", P("ca-ext.cnf"),
                      // The CSR carries the TPM2_Certify evidence of the CA key: verifiers need it.
                      "-copy_extensions", "copy"}),
          "signing the host CA", error)) {
    return false;
  }
  return Ok(f.Vtmctl({"ca", "install", P(tag + "-ca.pem"), P("fleet.pem")}), "vtmctl ca install", error);
}

bool MigrationRig::StartDestination(std::string* error, const std::vector<std::string>& extra) {
  // The first start picks a free port; later starts keep it (sources recorded it).
  const std::string listen = destination.empty() ? "127.0.0.1:0" : destination;
  std::vector<std::string> args = {"--host-name", "host-b", "--migration-peer-ca", P("fleet.pem"), "--migration-listen",
                                   listen};
  args.insert(args.end(), extra.begin(), extra.end());
  if (!b.StartVtmd(args)) {
    *error = "starting the destination vtmd: " + b.VtmdLog();
    return false;
  }
  if (!destination.empty()) return true;
  std::smatch m;
  const std::string log = b.VtmdLog();
  if (!std::regex_search(log, m, std::regex("migration endpoint on 127.0.0.1:0 \\(port ([0-9]+)\\)"))) {
    *error = "no migration endpoint in the destination's log: " + log;
    return false;
  }
  destination = "127.0.0.1:" + m[1].str();
  return true;
}

CommandResult MigrationRig::Verify(std::vector<std::string> args) const {
  args.insert(args.begin(), BuildPath("attest/vtm-verify"));
  return RunCommand(args);
}

bool MigrationRig::WritePolicyFromDestination(const std::string& path, std::string* error) {
  auto nonce = Verify({"nonce"});
  if (!Ok(nonce, "vtm-verify nonce", error)) return false;
  if (!Ok(b.Vtmctl({"attest", "host", "--nonce", nonce.output.substr(0, nonce.output.find('\n')), "--output",
                    P("b-host.pb")}),
          "vtmctl attest host on the destination", error)) {
    return false;
  }
  auto learned = Verify({"learn", "--evidence", P("b-host.pb"), "--host-ek-ca",
                         b.state_dir() + "/../host-tpm/test-manufacturer-ca.pem", "--host-ca-issuer", P("fleet.pem")});
  if (!Ok(learned, "vtm-verify learn", error)) return false;
  return WriteFileAtomic(path, learned.output, 0644).ok();
}

TlsCredentials MigrationRig::FleetPeer(const std::string& name, const std::string& cn, const std::string& uri) {
  (void)WriteFileAtomic(P(name + ".ext"), "subjectAltName=URI:" + uri + "\nextendedKeyUsage=serverAuth,clientAuth\n", 0644);
  (void)RunCommand({"openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                    P(name + ".key"), "-out", P(name + ".csr"), "-subj", "/CN=" + cn + "/O=vtm"});
  (void)RunCommand({"openssl", "x509", "-req", "-in", P(name + ".csr"), "-CA", P("fleet.pem"), "-CAkey", P("fleet.key"),
                    "-CAcreateserial", "-out", P(name + ".pem"), "-days", "90", "-extfile", P(name + ".ext")});
  auto creds = ReadTlsCredentialFiles(P(name + ".pem"), P(name + ".key"), P("fleet.pem"));
  return creds.ok() ? std::move(creds).value() : TlsCredentials{};
}

std::string MigrationRig::Logs() const {
  return "---- source vtmd log ----\n" + a.VtmdLog() + "---- destination vtmd log ----\n" + b.VtmdLog();
}

std::pair<std::string, std::string> LastMigrationOf(VtmdFixture& host, const std::string& uuid) {
  std::pair<std::string, std::string> last;
  std::istringstream in(host.Vtmctl({"migrate", "status"}).output);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, vm, role, mode, state;
    fields >> id >> vm >> role >> mode >> state;
    if (vm == uuid) last = {id, state};
  }
  return last;
}

pid_t RecordedInstancePid(VtmdFixture& host, const std::string& uuid) {
  auto shown = host.Vtmctl({"show", uuid});
  return shown.exit_code == 0
             ? static_cast<pid_t>(std::strtol(Field(shown.output, "instance pid").c_str(), nullptr, 10))
             : 0;
}

bool ProcessRunning(pid_t pid) {
  const std::string state = ProcStatus(pid, "State");
  return !state.empty() && state[0] != 'Z';
}

bool KillAndWait(pid_t pid) {
  if (pid <= 0 || kill(pid, SIGKILL) != 0) return false;
  for (int i = 0; i < 200 && ProcessRunning(pid); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(25));
  return !ProcessRunning(pid);
}

std::string VmProcessProblems(const std::string& uuid, const VtmdFixture& holder, pid_t recorded, size_t* instances,
                              const std::vector<std::string>& allowed) {
  std::string problem;
  for (int attempt = 0; attempt < 50; ++attempt) {
    problem.clear();
    *instances = 0;
    for (pid_t pid : FindProcesses({uuid})) {
      if (!ProcessRunning(pid)) continue;
      const std::string name = ProgramName(pid);
      const pid_t parent = static_cast<pid_t>(std::strtol(ProcStatus(pid, "PPid").c_str(), nullptr, 10));
      if (name == "vtm-instance") {
        ++*instances;
        if (pid != recorded) {
          problem += "vtm-instance " + std::to_string(pid) + " is not the one the VM's host recorded; ";
        }
        if (ProcCmdline(pid).find(holder.run_dir()) == std::string::npos) {
          problem += "vtm-instance " + std::to_string(pid) + " runs outside the VM's host; ";
        }
      } else if (name == "swtpm") {
        if (parent != recorded || recorded <= 0) {
          problem += "swtpm " + std::to_string(pid) + " has no owning instance; ";
        }
      } else if (ProcCmdline(pid).find("--peer-inspector") != std::string::npos) {
        // The instance's peer inspector (exec'd as /proc/self/exe): part of the recorded instance.
        if (parent != recorded || recorded <= 0) {
          problem += "peer inspector " + std::to_string(pid) + " has no owning instance; ";
        }
      } else if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
        problem += name + " " + std::to_string(pid) + " names the VM; ";
      }
    }
    if (problem.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return problem;
}

}  // namespace vtm::testing
