// The two-host migration rig: fleet CA, host CA certificates, policy, both vtmds.
#include "migration_rig.h"

#include <regex>

#include "vtm/fs.h"

namespace vtm::testing {
namespace {

bool Ok(const CommandResult& r, const std::string& what, std::string* error) {
  if (r.exit_code == 0) return true;
  *error = what + " failed (" + std::to_string(r.exit_code) + "): " + r.output;
  return false;
}

}  // namespace

bool MigrationRig::SetUp(std::string* error) {
  if (!Ok(RunCommand({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                      "-keyout", P("fleet.key"), "-out", P("fleet.pem"), "-subj", "/CN=fleet root", "-days", "2"}),
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
                      "-CAcreateserial", "-out", P(tag + "-ca.pem"), "-days", "2", "-extfile", P("ca-ext.cnf"),
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
                    "-CAcreateserial", "-out", P(name + ".pem"), "-days", "2", "-extfile", P(name + ".ext")});
  auto creds = ReadTlsCredentialFiles(P(name + ".pem"), P(name + ".key"), P("fleet.pem"));
  return creds.ok() ? std::move(creds).value() : TlsCredentials{};
}

std::string MigrationRig::Logs() const {
  return "---- source vtmd log ----\n" + a.VtmdLog() + "---- destination vtmd log ----\n" + b.VtmdLog();
}

}  // namespace vtm::testing
