// Crash consistency, swept (issue 10): vtmd is SIGKILLed at every crash point one lifecycle
// (create, renew-certs, start, stop, delete) passes — the points are enumerated by a traced run of that
// lifecycle (VTM_CRASH_TRACE), not listed by hand — and after each crash a restarted vtmd must
// hold the invariants: it starts without help; the VM is either gone or in a resting state;
// registry and state directory agree; at most one instance, and one exactly when the VM is
// running; no process nobody owns; the measurement log still replays to its PCR. Then the lifecycle can be finished
// (stop, delete) and leaves nothing behind.
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <filesystem>
#include <functional>
#include <set>
#include <sstream>
#include <thread>

#include "test_processes.h"
#include "vtm.pb.h"
#include "vtm/fs.h"
#include "vtmd_fixture.h"

namespace vtm::testing {
namespace {

constexpr const char* kUuid = "5a0c3e1d-7b2f-4c8e-9d6a-1f2e3d4c5b6a";

// The lifecycle; stops at the first command that fails (the crash). Returns how many succeeded.
constexpr int kLifecycleSteps = 5;
int Lifecycle(VtmdFixture& f) {
  int done = 0;
  for (const std::vector<std::string>& cmd :
       std::vector<std::vector<std::string>>{{"create", "--uuid", kUuid, "--name", "sweep"},
                                             {"renew-certs", "sweep"},
                                             {"start", "sweep"},
                                             {"stop", "sweep"},
                                             {"delete", "sweep"}}) {
    if (f.Vtmctl(cmd).exit_code != 0) break;
    ++done;
  }
  return done;
}

bool VmDirExists(const VtmdFixture& f) {
  std::error_code ec;
  return std::filesystem::exists(f.state_dir() + "/vms/" + kUuid, ec);
}

size_t Instances(const VtmdFixture& f) { return FindProcesses({"vtm-instance", f.run_dir()}).size(); }
size_t Swtpms(const VtmdFixture& f) { return FindProcesses({kSwtpmProcess, f.state_dir() + "/vms/"}).size(); }

// Instances that vtmd ends asynchronously (a stop in flight when it died) may take a moment.
void WaitForProcesses(const VtmdFixture& f, size_t instances, size_t swtpms) {
  for (int i = 0; i < 100 && (Instances(f) != instances || Swtpms(f) != swtpms); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

void CheckInvariants(VtmdFixture& f, const std::string& point) {
  SCOPED_TRACE("after a crash at " + point);
  auto list = f.Vtmctl({"list"});
  ASSERT_EQ(list.exit_code, 0) << list.output;
  // The measurement log still replays to the host PCR (an entry written ahead of a crash that
  // kept it from being extended is dropped at start).
  auto host = f.Vtmctl({"host"});
  EXPECT_NE(host.output.find(", log consistent: "), std::string::npos) << host.output;
  auto shown = f.Vtmctl({"show", kUuid});
  if (shown.exit_code == 3) {  // gone: nothing of it is left
    EXPECT_FALSE(VmDirExists(f)) << "state directory of a VM the registry does not know";
    WaitForProcesses(f, 0, 0);
    EXPECT_EQ(Instances(f), 0u);
    EXPECT_EQ(Swtpms(f), 0u);
    return;
  }
  ASSERT_EQ(shown.exit_code, 0) << shown.output;
  const std::string state = Field(shown.output, "state");
  static const std::set<std::string> kResting = {"provisioned", "running", "stopped", "failed"};
  EXPECT_TRUE(kResting.count(state)) << "VM left in state " << state << "\n" << shown.output;
  EXPECT_TRUE(VmDirExists(f)) << "the registry knows a VM whose state directory is gone";
  const size_t want = state == "running" ? 1 : 0;
  WaitForProcesses(f, want, want);
  EXPECT_EQ(Instances(f), want) << state;
  EXPECT_EQ(Swtpms(f), want) << state;
  if (state == "running") {
    const std::string pid = Field(shown.output, "instance pid");
    auto instances = FindProcesses({"vtm-instance", f.run_dir()});
    ASSERT_EQ(instances.size(), 1u);
    EXPECT_EQ(pid, std::to_string(instances[0])) << "the registry names another instance than the one running";
  }
}

// Finishes the lifecycle from wherever the crash left it; nothing may remain.
void Finish(VtmdFixture& f, const std::string& point) {
  SCOPED_TRACE("finishing after a crash at " + point);
  auto shown = f.Vtmctl({"show", kUuid});
  if (shown.exit_code == 0) {
    const std::string state = Field(shown.output, "state");
    if (state == "running" || state == "failed") {
      auto stopped = f.Vtmctl({"stop", kUuid});
      EXPECT_EQ(stopped.exit_code, 0) << stopped.output;
    }
    auto deleted = f.Vtmctl({"delete", kUuid});
    EXPECT_EQ(deleted.exit_code, 0) << deleted.output;
  }
  EXPECT_EQ(f.Vtmctl({"show", kUuid}).exit_code, 3);
  EXPECT_FALSE(VmDirExists(f));
  WaitForProcesses(f, 0, 0);
  EXPECT_EQ(Instances(f), 0u);
  EXPECT_EQ(Swtpms(f), 0u);
  // And the same VM can be made again.
  auto again = f.Vtmctl({"create", "--uuid", kUuid, "--name", "sweep"});
  EXPECT_EQ(again.exit_code, 0) << again.output;
}

// The crash points a trace file (VTM_CRASH_TRACE) names after its first `offset` bytes that
// start with `prefix`, each once, in the order first reached.
size_t TraceSize(const std::string& path) {
  auto text = ReadFile(path);
  return text.ok() ? text->size() : 0;
}
std::vector<std::string> PointsTracedSince(const std::string& path, size_t offset, const std::string& prefix) {
  std::vector<std::string> points;
  auto text = ReadFile(path);
  if (!text.ok() || text->size() < offset) return points;
  std::istringstream in(text->substr(offset));
  std::set<std::string> seen;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.rfind(prefix, 0) == 0 && seen.insert(line).second) points.push_back(line);
  }
  return points;
}

// One sweep: what differs between the operations swept. setup and operation return false on
// a failure (they run where a fatal assertion could not stop the sweep); check asserts.
struct CrashSweep {
  std::vector<std::string> vtmd_args;  // for every start of vtmd
  size_t min_points = 1;               // fewer traced points: the tracing is broken
  std::string point_prefix;            // only the traced points whose name starts so
  // Brings a fresh vtmd to where the operation begins (and may note what check compares with).
  std::function<bool(VtmdFixture&)> setup = [](VtmdFixture&) { return true; };
  // The operation; true if it completed.
  std::function<bool(VtmdFixture&)> operation;
  // What must hold of the vtmd restarted (in the same state directory) after the crash at point.
  std::function<void(VtmdFixture&, const std::string& point)> check;
};

// Enumerates the crash points the operation passes (a traced run of setup and operation, the
// points of the operation only), then for each point: a fresh vtmd that is SIGKILLed there,
// setup, the operation (which must not complete), vtmd restarted in the same state directory,
// and the sweep's check. Stops at the first point whose check fails, with vtmd's log.
void SweepCrashPoints(const CrashSweep& sweep) {
  std::vector<std::string> points;
  {
    TempDir t;
    const std::string trace = t.path() + "/trace";
    VtmdFixture f;
    f.SetVtmdEnvironment({"VTM_CRASH_TRACE=" + trace});
    ASSERT_TRUE(f.StartVtmd(sweep.vtmd_args)) << f.VtmdLog();
    ASSERT_TRUE(sweep.setup(f)) << f.VtmdLog();
    const size_t before = TraceSize(trace);
    ASSERT_TRUE(sweep.operation(f)) << f.VtmdLog();
    points = PointsTracedSince(trace, before, sweep.point_prefix);
  }
  std::cerr << "crash sweep " << ::testing::UnitTest::GetInstance()->current_test_info()->name() << ": "
            << points.size() << " crash points:";
  for (const std::string& point : points) std::cerr << " " << point;
  std::cerr << "\n";
  ASSERT_GE(points.size(), sweep.min_points);
  for (const std::string& point : points) {
    SCOPED_TRACE("crash at " + point);
    VtmdFixture f;
    f.SetVtmdEnvironment({"VTM_CRASH_AT=" + point});
    ASSERT_TRUE(f.StartVtmd(sweep.vtmd_args)) << f.VtmdLog();
    ASSERT_TRUE(sweep.setup(f)) << f.VtmdLog();
    EXPECT_FALSE(sweep.operation(f)) << "the operation did not reach " << point;
    const int st = f.WaitVtmdExit();
    ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << point << ": " << DescribeWaitStatus(st);
    f.SetVtmdEnvironment({});
    ASSERT_TRUE(f.StartVtmd(sweep.vtmd_args)) << "vtmd does not start again after a crash at " << point << "\n"
                                              << f.VtmdLog();
    sweep.check(f, point);
    if (::testing::Test::HasFailure()) {
      std::cerr << "---- vtmd log (crash at " << point << ") ----\n" << f.VtmdLog();
      break;
    }
    std::cerr << "crash at " << point << ": recovered\n";
  }
}

TEST(CrashSweepTest, EveryCrashPointOfTheLifecycleRecovers) {
  // The issue asks for at least 20 distinct points; every one the lifecycle passes is tried.
  SweepCrashPoints({.min_points = 20,
                    .operation = [](VtmdFixture& f) { return Lifecycle(f) == kLifecycleSteps; },
                    .check =
                        [](VtmdFixture& f, const std::string& point) {
                          CheckInvariants(f, point);
                          Finish(f, point);
                        }});
}

// The host CA as `vtmctl --json ca show` reports it.
api::CaInfo CaInfoOf(VtmdFixture& f) {
  api::Response resp;
  auto json = f.Vtmctl({"--json", "ca", "show"});
  EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(json.output, &resp).ok()) << json.output;
  return resp.ca();
}

// A fleet root CA made by openssl in dir (fleet.key, fleet.pem) and the extensions it gives a
// host CA certificate (ext.cnf).
void MakeFleetCa(const std::string& dir) {
  ASSERT_EQ(
      RunCommand({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                  "-keyout", dir + "/fleet.key", "-out", dir + "/fleet.pem", "-subj", "/CN=fleet root", "-days", "30"})
          .exit_code,
      0);
  ASSERT_TRUE(WriteFileAtomic(dir + "/ext.cnf",
                              "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
                              0644)
                  .ok());
}

// `vtmctl ca install` with a fleet chain, killed at each of its crash points (enumerated by a
// traced installation): after the restart the host CA is either the old certificate without a
// chain or the new one with its chain, never a mix, and what it issues verifies with openssl
// accordingly; the installation can then be repeated. Re-installing the self-signed
// certificate (no chain) drops the fleet chain, also across a restart.
TEST(CrashSweepTest, EveryCrashPointOfCaInstallRecovers) {
  TempDir t;
  auto p = [&](const std::string& n) { return t.path() + "/" + n; };
  ASSERT_NO_FATAL_FAILURE(MakeFleetCa(t.path()));
  const std::string fleet_pem = *ReadFile(p("fleet.pem"));
  std::string self_signed;
  SweepCrashPoints({
      .min_points = 2,
      .point_prefix = "ca.install",
      // The self-signed CA certificate, and the fleet CA's certificate for its key at host-ca.pem.
      .setup =
          [&](VtmdFixture& f) {
            self_signed = f.Vtmctl({"ca", "show"}).output;
            auto csr = f.Vtmctl({"ca", "csr"});
            if (csr.exit_code != 0 || !WriteFileAtomic(p("host-ca.csr"), csr.output, 0644).ok()) return false;
            return RunCommand({"openssl", "x509", "-req", "-in", p("host-ca.csr"), "-CA", p("fleet.pem"), "-CAkey",
                               p("fleet.key"), "-CAcreateserial", "-out", p("host-ca.pem"), "-days", "30", "-extfile",
                               p("ext.cnf")})
                       .exit_code == 0;
          },
      .operation =
          [&](VtmdFixture& f) {
            return f.Vtmctl({"ca", "install", p("host-ca.pem"), p("fleet.pem")}).exit_code == 0;
          },
      .check =
          [&](VtmdFixture& f, const std::string&) {
            // `ca show` prints the CA certificate, then its chain.
            const std::string now = f.Vtmctl({"ca", "show"}).output;
            const bool installed = now.rfind(*ReadFile(p("host-ca.pem")), 0) == 0;
            if (!installed) {
              EXPECT_EQ(now, self_signed);
            }
            EXPECT_EQ(CaInfoOf(f).chain_pem(), installed ? fleet_pem : "") << "certificate and chain disagree";
            ASSERT_EQ(f.Vtmctl({"create", "--name", "after"}).exit_code, 0) << f.VtmdLog();
            ASSERT_TRUE(WriteFileAtomic(p("ca-now.pem"), now, 0644).ok());
            auto listed = f.Vtmctl({"certs", "after", "--kind", "ek-ecc"});
            ASSERT_TRUE(WriteFileAtomic(p("ek.pem"), listed.output, 0644).ok());
            auto verified = installed ? RunCommand({"openssl", "verify", "-CAfile", p("fleet.pem"), "-untrusted",
                                                    p("ca-now.pem"), p("ek.pem")})
                                      : RunCommand({"openssl", "verify", "-CAfile", p("ca-now.pem"), p("ek.pem")});
            EXPECT_EQ(verified.exit_code, 0) << verified.output;

            // Repeating the installation finishes it; the self-signed certificate again drops the chain.
            ASSERT_EQ(f.Vtmctl({"ca", "install", p("host-ca.pem"), p("fleet.pem")}).exit_code, 0) << f.VtmdLog();
            EXPECT_EQ(CaInfoOf(f).chain_pem(), fleet_pem);
            ASSERT_TRUE(WriteFileAtomic(p("self.pem"), self_signed, 0644).ok());
            ASSERT_EQ(f.Vtmctl({"ca", "install", p("self.pem")}).exit_code, 0) << f.VtmdLog();
            EXPECT_EQ(CaInfoOf(f).chain_pem(), "");
            f.StopVtmd();
            ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
            EXPECT_EQ(f.Vtmctl({"ca", "show"}).output, self_signed);
            EXPECT_EQ(CaInfoOf(f).chain_pem(), "") << "a stale fleet chain came back after a restart";
          },
  });
}

// `vtmctl ca rotate` (self-signed host CA, two VMs), killed at each crash point it passes
// (enumerated by a traced rotation: the key made, its certificate written, each file step of
// the switch, each VM's re-issue, the revocation, the final CRL). After the restart the old CA
// is still in use with nothing lost (its certificates verify with openssl as before) and
// `ca rotate` run again completes the rotation, or vtmd completed it at start. Either way the
// new key's certificates of both VMs verify with openssl, the old key's final CRL revokes the
// old ones, and what the CA issues next verifies, also after another restart.
void SweepCaRotation(const std::vector<std::string>& vtmd_args) {
  TempDir t;
  auto p = [&](const std::string& n) { return t.path() + "/" + n; };
  auto openssl_ok = [](const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"openssl"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = RunCommand(argv);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.exit_code == 0;
  };
  std::string old_ca;
  SweepCrashPoints({
      .vtmd_args = vtmd_args,
      .min_points = 8,
      // Two VMs; the old CA certificate and one certificate it issued.
      .setup =
          [&](VtmdFixture& f) {
            if (f.Vtmctl({"create", "--name", "a"}).exit_code != 0 ||
                f.Vtmctl({"create", "--name", "b"}).exit_code != 0) {
              return false;
            }
            old_ca = f.Vtmctl({"ca", "show"}).output;
            return WriteFileAtomic(p("old-ca.pem"), old_ca, 0644).ok() &&
                   WriteFileAtomic(p("old-a.pem"), f.Vtmctl({"certs", "a", "--kind", "ek-ecc"}).output, 0644).ok();
          },
      .operation =
          [](VtmdFixture& f) {
            return f.Vtmctl({"ca", "rotate"}).exit_code == 0;
          },
      .check =
          [&](VtmdFixture& f, const std::string&) {
            std::string now = f.Vtmctl({"ca", "show"}).output;
            if (now == old_ca) {
              // The old CA, nothing lost; the command again completes the rotation.
              openssl_ok({"verify", "-CAfile", p("old-ca.pem"), p("old-a.pem")});
              auto again = f.Vtmctl({"ca", "rotate"});
              ASSERT_EQ(again.exit_code, 0) << again.output << f.VtmdLog();
              now = f.Vtmctl({"ca", "show"}).output;
              ASSERT_NE(now, old_ca);
            } else {
              EXPECT_EQ(CaInfoOf(f).rotation(), "") << "vtmd did not complete the interrupted rotation at start";
            }
            ASSERT_TRUE(WriteFileAtomic(p("ca-now.pem"), now, 0644).ok());
            auto final_crl = f.Vtmctl({"ca", "crl", "--retired"});
            ASSERT_EQ(final_crl.exit_code, 0) << final_crl.output;
            ASSERT_TRUE(WriteFileAtomic(p("final.crl"), final_crl.output, 0644).ok());
            ASSERT_TRUE(WriteFileAtomic(p("crl.pem"), f.Vtmctl({"ca", "crl"}).output, 0644).ok());
            auto revoked = RunCommand({"openssl", "verify", "-crl_check", "-CRLfile", p("final.crl"), "-CAfile",
                                       p("old-ca.pem"), p("old-a.pem")});
            EXPECT_NE(revoked.output.find("certificate revoked"), std::string::npos) << revoked.output;
            for (const char* vm : {"a", "b"}) {
              auto listed = f.Vtmctl({"certs", vm});
              size_t valid = 0;
              std::istringstream in(listed.output);
              for (std::string line; std::getline(in, line);) {
                if (line.rfind("# ", 0) == 0 && line.find("REVOKED") == std::string::npos) ++valid;
              }
              EXPECT_EQ(valid, 4u) << vm << "\n" << listed.output;
              ASSERT_TRUE(WriteFileAtomic(p("ek.pem"), f.Vtmctl({"certs", vm, "--kind", "ek-ecc"}).output, 0644).ok());
              openssl_ok({"verify", "-crl_check", "-CRLfile", p("crl.pem"), "-CAfile", p("ca-now.pem"), p("ek.pem")});
            }
            ASSERT_EQ(f.Vtmctl({"create", "--name", "after"}).exit_code, 0) << f.VtmdLog();
            ASSERT_TRUE(
                WriteFileAtomic(p("after.pem"), f.Vtmctl({"certs", "after", "--kind", "ik"}).output, 0644).ok());
            openssl_ok({"verify", "-CAfile", p("ca-now.pem"), p("after.pem")});
            f.StopVtmd();
            ASSERT_TRUE(f.StartVtmd(vtmd_args)) << f.VtmdLog();
            EXPECT_EQ(f.Vtmctl({"ca", "show"}).output, now);
          },
  });
}

TEST(CrashSweepTest, EveryCrashPointOfCaRotationRecovers) { SweepCaRotation({}); }

// In the `sealed` residency the key is two files (the wrapped key and its host quote), renamed
// one after the other in the switch.
TEST(CrashSweepTest, EveryCrashPointOfASealedCaRotationRecovers) { SweepCaRotation({"--ca-residency", "sealed"}); }

// The same under a fleet CA, where the chain changes with the certificate: `ca rotate` (the
// new key and its CSR), then `ca install` of the fleet's certificate for the new key, killed at
// each point the two pass. After the restart the host CA is the old certificate with the old
// chain and `ca csr --pending` / `ca install` (or, with no key pending, `ca rotate` first)
// completes the rotation, or it is the new certificate with the fleet chain and complete; the
// VM's new certificates chain to the fleet root (openssl) and the final CRL revokes the old.
TEST(CrashSweepTest, EveryCrashPointOfAFleetCaRotationRecovers) {
  TempDir t;
  auto p = [&](const std::string& n) { return t.path() + "/" + n; };
  ASSERT_NO_FATAL_FAILURE(MakeFleetCa(t.path()));
  const std::string fleet_pem = *ReadFile(p("fleet.pem"));
  auto fleet_sign = [&](const std::string& csr_text, const std::string& out) {
    if (!WriteFileAtomic(p("req.csr"), csr_text, 0644).ok()) return false;
    return RunCommand({"openssl", "x509", "-req", "-in", p("req.csr"), "-CA", p("fleet.pem"), "-CAkey", p("fleet.key"),
                       "-CAcreateserial", "-out", out, "-days", "30", "-extfile", p("ext.cnf")})
               .exit_code == 0;
  };
  // ca rotate, then ca install of the fleet's certificate for the new key.
  auto rotate = [&](VtmdFixture& f) {
    auto csr = f.Vtmctl({"ca", "rotate"});
    return csr.exit_code == 0 && fleet_sign(csr.output, p("new-ca.pem")) &&
           f.Vtmctl({"ca", "install", p("new-ca.pem"), p("fleet.pem")}).exit_code == 0;
  };
  std::string old_ca;
  SweepCrashPoints({
      .min_points = 8,
      // A host CA under the fleet, and one VM; the old CA and one certificate it issued.
      .setup =
          [&](VtmdFixture& f) {
            if (!fleet_sign(f.Vtmctl({"ca", "csr"}).output, p("old-ca.pem")) ||
                f.Vtmctl({"ca", "install", p("old-ca.pem"), p("fleet.pem")}).exit_code != 0 ||
                f.Vtmctl({"create", "--name", "a"}).exit_code != 0) {
              return false;
            }
            old_ca = f.Vtmctl({"ca", "show"}).output;
            return WriteFileAtomic(p("old-a.pem"), f.Vtmctl({"certs", "a", "--kind", "ik"}).output, 0644).ok();
          },
      .operation = rotate,
      .check =
          [&](VtmdFixture& f, const std::string&) {
            std::string now = f.Vtmctl({"ca", "show"}).output;
            if (now == old_ca) {
              EXPECT_EQ(CaInfoOf(f).chain_pem(), fleet_pem) << "the old certificate without its chain";
              if (CaInfoOf(f).rotation() == "pending") {
                ASSERT_TRUE(fleet_sign(f.Vtmctl({"ca", "csr", "--pending"}).output, p("new-ca.pem")));
                auto installed = f.Vtmctl({"ca", "install", p("new-ca.pem"), p("fleet.pem")});
                ASSERT_EQ(installed.exit_code, 0) << installed.output << f.VtmdLog();
              } else {
                ASSERT_TRUE(rotate(f)) << f.VtmdLog();
              }
              now = f.Vtmctl({"ca", "show"}).output;
              ASSERT_NE(now, old_ca);
            }
            const api::CaInfo info = CaInfoOf(f);
            EXPECT_EQ(info.rotation(), "") << "the rotation is not complete";
            EXPECT_EQ(info.chain_pem(), fleet_pem) << "certificate and chain disagree";
            ASSERT_TRUE(WriteFileAtomic(p("ca-now.pem"), info.certificate_pem(), 0644).ok());
            auto final_crl = f.Vtmctl({"ca", "crl", "--retired"});
            ASSERT_EQ(final_crl.exit_code, 0) << final_crl.output;
            ASSERT_TRUE(WriteFileAtomic(p("final.crl"), final_crl.output, 0644).ok());
            auto revoked = RunCommand({"openssl", "verify", "-crl_check", "-CRLfile", p("final.crl"), "-CAfile",
                                       p("fleet.pem"), "-untrusted", p("old-ca.pem"), p("old-a.pem")});
            EXPECT_NE(revoked.output.find("certificate revoked"), std::string::npos) << revoked.output;
            ASSERT_TRUE(WriteFileAtomic(p("ik.pem"), f.Vtmctl({"certs", "a", "--kind", "ik"}).output, 0644).ok());
            auto verified = RunCommand(
                {"openssl", "verify", "-CAfile", p("fleet.pem"), "-untrusted", p("ca-now.pem"), p("ik.pem")});
            EXPECT_EQ(verified.exit_code, 0) << verified.output;
            f.StopVtmd();
            ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
            EXPECT_EQ(f.Vtmctl({"ca", "show"}).output, now);
          },
  });
}

}  // namespace
}  // namespace vtm::testing
