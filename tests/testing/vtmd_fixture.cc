// VtmdFixture: real vtmd, real host-TPM swtpm, temp dirs, guaranteed cleanup.
#include "vtmd_fixture.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "simulated_manufacturer.h"
#include "vtm/fs.h"
#include "vtm/tpm.h"
#include "vtm/net.h"

namespace vtm::testing {

VtmdFixture::VtmdFixture() {
  state_dir_ = dir_.path() + "/state";
  run_dir_ = dir_.path() + "/run";
  socket_ = run_dir_ + "/vtmd.sock";
  log_ = dir_.path() + "/vtmd.log";
  // Per-VM uids must be able to traverse to their directories (mkdtemp makes 0700).
  chmod(dir_.path().c_str(), 0711);
  auto tpm = SimulatedHostTpm::Start(dir_.path() + "/host-tpm");
  if (!tpm.ok()) throw std::runtime_error("simulated host TPM: " + tpm.error().ToString());
  host_tpm_ = std::move(tpm).value();
  // The factory step of a real TPM: an EK certificate from a (test) manufacturer.
  auto conn = Tpm::OpenTcti(host_tpm_->tcti());
  if (!conn.ok()) throw std::runtime_error("host TPM: " + conn.error().ToString());
  auto made = ManufactureSimulatedHostTpm(**conn, dir_.path() + "/host-tpm");
  if (!made.ok()) throw std::runtime_error("manufacturing the host TPM: " + made.error().ToString());
}

VtmdFixture::~VtmdFixture() {
  // Stop every instance this test's vtmd started, then vtmd. Instances are found by the
  // test's unique run dir, so nothing outside the test is touched.
  if (vtmd_.running()) {
    auto list = Vtmctl({"list"});
    std::istringstream in(list.output);
    std::string line;
    while (std::getline(in, line)) {
      if (line.find(" running ") != std::string::npos) Vtmctl({"stop", line.substr(0, 36)});
    }
    StopVtmd();
  }
  for (pid_t pid : FindProcesses({"vtm-instance", run_dir_})) kill(pid, SIGKILL);
  for (pid_t pid : FindProcesses({kSwtpmProcess, state_dir_ + "/vms/"})) kill(pid, SIGKILL);
  for (pid_t pid : FindProcesses({kSwtpmProcess, state_dir_ + "/simulated-host-tpm"})) kill(pid, SIGKILL);
  // In sanitizer builds vtmd reports into its log (TSan: and exits); a report fails the test
  // even when it came at shutdown, after the test's own checks.
  const std::string log = VtmdLog();
  for (const char* report : {"WARNING: ThreadSanitizer", "ERROR: AddressSanitizer", "runtime error:"}) {
    if (auto at = log.find(report); at != std::string::npos) {
      ADD_FAILURE() << "vtmd's log holds a sanitizer report:\n" << log.substr(at > 200 ? at - 200 : 0, 6000);
      break;
    }
  }
}

std::vector<std::string> VtmdFixture::VtmdArgv(const std::vector<std::string>& extra) const {
  std::vector<std::string> argv = {BuildPath("vtm-manager/vtmd"), "--config", "/dev/null",
                                   "--state-dir", state_dir_, "--run-dir", run_dir_,
                                   "--socket", socket_, "--host-tpm", host_tpm_->tcti(),
                                   "--group", "", "--instance-uid-base", "61000"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

bool VtmdFixture::StartVtmd(const std::vector<std::string>& extra_args) {
  SpawnOptions opts;
  opts.output_file = log_;
  opts.parent_death_signal = SIGKILL;  // a test killed by ctest's timeout takes vtmd with it
  const char* path = getenv("PATH");
  opts.env = {std::string("PATH=") + (path ? path : "/usr/sbin:/usr/bin:/sbin:/bin")};
  opts.env.insert(opts.env.end(), vtmd_env_.begin(), vtmd_env_.end());
  auto p = Subprocess::Spawn(VtmdArgv(extra_args), opts);
  if (!p.ok()) return false;
  vtmd_ = std::move(p).value();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    if (!vtmd_.running()) return false;
    if (ConnectUnix(socket_).ok()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

int VtmdFixture::StopVtmd() { return vtmd_.Terminate(std::chrono::seconds(20)); }

int VtmdFixture::WaitVtmdExit(std::chrono::milliseconds timeout) {
  auto st = vtmd_.Wait(timeout);
  return st.ok() ? *st : StopVtmd();
}

bool VtmdFixture::RebootHostTpm() {
  EXPECT_FALSE(vtmd_.running()) << "stop vtmd before rebooting the host TPM";
  host_tpm_.reset();
  auto tpm = SimulatedHostTpm::Start(dir_.path() + "/host-tpm");
  EXPECT_TRUE(tpm.ok()) << tpm.error().ToString();
  if (!tpm.ok()) return false;
  host_tpm_ = std::move(tpm).value();
  return true;
}

CommandResult VtmdFixture::RunVtmdExpectingExit(const std::vector<std::string>& extra_args) {
  return RunCommand(VtmdArgv(extra_args));
}

CommandResult VtmdFixture::Vtmctl(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {BuildPath("vtm-manager/vtmctl"), "--socket", socket_};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv);
}

CommandResult VtmdFixture::VtmctlAs(const std::vector<std::string>& setpriv_args, const std::vector<std::string>& args) {
  std::vector<std::string> with_socket = {"--socket", socket_};
  with_socket.insert(with_socket.end(), args.begin(), args.end());
  return RunBuiltAs(setpriv_args, "vtm-manager/vtmctl", with_socket);
}

CommandResult VtmdFixture::RunBuiltAs(const std::vector<std::string>& setpriv_args, const std::string& build_path,
                                      const std::vector<std::string>& args) {
  const std::string copy = dir_.path() + "/" + std::filesystem::path(build_path).filename().string();
  if (!PathExists(copy)) {
    std::error_code ec;
    std::filesystem::copy_file(BuildPath(build_path), copy, ec);
    chmod(copy.c_str(), 0755);
  }
  std::vector<std::string> argv = {"setpriv"};
  argv.insert(argv.end(), setpriv_args.begin(), setpriv_args.end());
  argv.push_back(copy);
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv);
}

std::string VtmdFixture::CertificatePublicKeyPem(const std::string& vm, const std::string& kind) {
  auto cert = Vtmctl({"certs", vm, "--kind", kind});
  EXPECT_EQ(cert.exit_code, 0) << cert.output;
  auto pub = RunCommand({"openssl", "x509", "-pubkey", "-noout"}, cert.output);
  EXPECT_EQ(pub.exit_code, 0) << pub.output;
  return cert.exit_code == 0 && pub.exit_code == 0 ? pub.output : std::string();
}

std::string VtmdFixture::VtmdLog() const {
  auto text = ReadFile(log_);
  return text.ok() ? *text : "";
}

bool VtmdFixture::WaitForVtmdLog(const std::string& text, std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (VtmdLog().find(text) == std::string::npos) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

long ProcessUid(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Uid:", 0) == 0) return std::stol(line.substr(4));
  }
  return -1;
}

std::string Field(const std::string& output, const std::string& key) {
  std::istringstream in(output);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::string v = line.substr(key.size() + 1);
      v.erase(0, v.find_first_not_of(' '));
      return v;
    }
  }
  return "";
}

}  // namespace vtm::testing
