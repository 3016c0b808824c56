// Benchmarks for the vTPM lifecycle, each against its anchor in the same run:
//   1. start -> vTPM ready through vtmd (vtmctl start: key unwrap, vtm-instance, swtpm with
//      encrypted state, readiness) vs. starting a plain `swtpm socket` by hand and waiting for
//      its control socket;
//   2. memory: peak RSS of vtmd with N running vTPMs, and the per-VM processes' RSS next to a
//      plain swtpm's;
//   3. `vtmctl create` (both EKs, AK with credential activation, IK, four certificates signed
//      inside the host TPM, NV writes) vs. `swtpm_setup --tpm2 --create-ek-cert
//      --create-platform-cert` with swtpm_localca, and the sustained create rate.
// Prints a Markdown table. Not a test: nothing here asserts a time.
//   vtm_bench [--iterations N] [--vms N]
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <numeric>
#include <string>
#include <vector>

#include "vtm/fs.h"
#include "vtm/net.h"
#include "vtm/subprocess.h"
#include "vtmd_fixture.h"

using namespace std::chrono;
using vtm::testing::Field;
using vtm::testing::VtmdFixture;

namespace {

struct Stats {
  double median, p90, min;
};
Stats Summarize(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v[std::min(v.size() - 1, v.size() * 9 / 10)], v.front()};
}

long StatusKb(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::stol(line.substr(key.size() + 1));
  }
  return -1;
}

double PlainSwtpmStartMs(const std::string& dir) {
  std::string sock = dir + "/ctrl.sock";
  auto t0 = steady_clock::now();
  vtm::SpawnOptions o;
  auto p = vtm::Subprocess::Spawn({"swtpm", "socket", "--tpm2", "--tpmstate", "dir=" + dir, "--ctrl",
                                   "type=unixio,path=" + sock, "--log", "file=" + dir + "/log"},
                                  o);
  if (!p.ok()) return -1;
  auto c = vtm::ConnectUnixWithRetry(sock, seconds(10));
  double ms = duration<double, std::milli>(steady_clock::now() - t0).count();
  p->Terminate();
  return c.ok() ? ms : -1;
}

}  // namespace

int main(int argc, char** argv) {
  int iterations = 20, vms = 100;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--iterations") iterations = std::stoi(argv[i + 1]);
    if (a == "--vms") vms = std::stoi(argv[i + 1]);
  }
  VtmdFixture f;
  if (!f.StartVtmd()) {
    std::cerr << "vtmd did not start:\n" << f.VtmdLog();
    return 1;
  }
  std::printf("# vtm benchmarks (%d iterations, %d VMs)\n\n", iterations, vms);

  // 1. start -> ready.
  std::vector<double> vtm_ms, plain_ms;
  if (f.Vtmctl({"create", "--name", "bench"}).exit_code != 0) return 1;
  for (int i = 0; i < iterations; ++i) {
    auto t0 = steady_clock::now();
    auto r = f.Vtmctl({"start", "bench"});
    double ms = duration<double, std::milli>(steady_clock::now() - t0).count();
    if (r.exit_code != 0) {
      std::cerr << r.output;
      return 1;
    }
    // Ready means QEMU can connect now.
    if (!vtm::ConnectUnix(Field(r.output, "tpm socket")).ok()) return 1;
    vtm_ms.push_back(ms);
    f.Vtmctl({"stop", "bench"});
    vtm::testing::TempDir d;
    plain_ms.push_back(PlainSwtpmStartMs(d.path()));
  }
  auto v = Summarize(vtm_ms), p = Summarize(plain_ms);
  std::printf("| start -> vTPM ready | median ms | p90 ms | min ms |\n|---|---|---|---|\n");
  std::printf("| `vtmctl start` (vtmd: unwrap keys, vtm-instance, swtpm, encrypted state) | %.1f | %.1f | %.1f |\n",
              v.median, v.p90, v.min);
  std::printf("| plain `swtpm socket` by hand, until its control socket accepts | %.1f | %.1f | %.1f |\n\n", p.median,
              p.p90, p.min);
  f.Vtmctl({"delete", "bench"});

  // 3. create (identity provisioning) vs swtpm_setup + swtpm_localca.
  {
    std::vector<double> create_ms, setup_ms;
    vtm::testing::TempDir d;
    const std::string localca = d.path() + "/localca";
    vtm::MakeDir(localca, 0700).ok();
    std::ofstream(d.path() + "/swtpm_setup.conf") << "create_certs_tool = /usr/bin/swtpm_localca\n"
                                                  << "create_certs_tool_config = " << d.path() << "/localca.conf\n"
                                                  << "create_certs_tool_options = " << d.path() << "/localca.options\n"
                                                  << "active_pcr_banks = sha256\n";
    std::ofstream(d.path() + "/localca.conf") << "statedir = " << localca << "\nsigningkey = " << localca
                                              << "/signkey.pem\nissuercert = " << localca
                                              << "/issuercert.pem\ncertserial = " << localca << "/certserial\n";
    std::ofstream(d.path() + "/localca.options")
        << "--platform-manufacturer vtm-bench\n--platform-version 2.1\n--platform-model QEMU\n";
    for (int i = 0; i < iterations; ++i) {
      auto t0 = steady_clock::now();
      auto r = f.Vtmctl({"create", "--name", "c" + std::to_string(i), "--service", "bench"});
      create_ms.push_back(duration<double, std::milli>(steady_clock::now() - t0).count());
      if (r.exit_code != 0) {
        std::cerr << r.output;
        return 1;
      }
      std::string state = d.path() + "/st" + std::to_string(i);
      vtm::MakeDir(state, 0700).ok();
      t0 = steady_clock::now();
      auto s = vtm::testing::RunCommand({"swtpm_setup", "--tpm2", "--tpm-state", state, "--config",
                                         d.path() + "/swtpm_setup.conf", "--create-ek-cert", "--create-platform-cert",
                                         "--overwrite"});
      setup_ms.push_back(duration<double, std::milli>(steady_clock::now() - t0).count());
      if (s.exit_code != 0) {
        std::cerr << "swtpm_setup failed:\n" << s.output;
        return 1;
      }
    }
    auto c = Summarize(create_ms), s = Summarize(setup_ms);
    std::printf("| create a vTPM with its identity | median ms | p90 ms | min ms |\n|---|---|---|---|\n");
    std::printf("| `vtmctl create` (ECC+RSA EKs, AK + credential activation, IK + certify, 4 certs signed in the "
                "host TPM, 5 NV writes) | %.1f | %.1f | %.1f |\n",
                c.median, c.p90, c.min);
    std::printf("| `swtpm_setup --tpm2 --create-ek-cert --create-platform-cert` (swtpm_localca) | %.1f | %.1f | %.1f |\n",
                s.median, s.p90, s.min);
    // The same creates with the CA key in the `sealed` residency (signatures in software).
    std::vector<double> sealed_ms;
    {
      VtmdFixture sealed;
      if (!sealed.StartVtmd({"--ca-residency", "sealed"})) {
        std::cerr << sealed.VtmdLog();
        return 1;
      }
      for (int i = 0; i < iterations; ++i) {
        auto t0 = steady_clock::now();
        if (sealed.Vtmctl({"create", "--name", "s" + std::to_string(i), "--service", "bench"}).exit_code != 0) return 1;
        sealed_ms.push_back(duration<double, std::milli>(steady_clock::now() - t0).count());
      }
    }
    auto sealed_stats = Summarize(sealed_ms);
    std::printf("| `vtmctl create`, CA key `sealed` (software, bound by a host quote) | %.1f | %.1f | %.1f |\n",
                sealed_stats.median, sealed_stats.p90, sealed_stats.min);
    std::printf("| ratio `tpm` CA / swtpm_setup (median) | %.2f | | |\n\n", c.median / s.median);
    // Sustained: back-to-back creates, nothing prepared in advance.
    int burst = std::max(10, iterations);
    auto b0 = steady_clock::now();
    for (int i = 0; i < burst; ++i) {
      if (f.Vtmctl({"create", "--name", "burst" + std::to_string(i)}).exit_code != 0) return 1;
    }
    double secs = duration<double>(steady_clock::now() - b0).count();
    std::printf("| sustained `vtmctl create`, %d back to back | %.1f creates/s |\n|---|---|\n\n", burst, burst / secs);
    for (int i = 0; i < iterations; ++i) f.Vtmctl({"delete", "c" + std::to_string(i)});
    for (int i = 0; i < burst; ++i) f.Vtmctl({"delete", "burst" + std::to_string(i)});
  }

  // 2. memory with N running vTPMs.
  long vtmd_before = StatusKb(f.vtmd_pid(), "VmRSS");
  auto t0 = steady_clock::now();
  for (int i = 0; i < vms; ++i) {
    std::string name = "vm" + std::to_string(i);
    if (f.Vtmctl({"create", "--name", name}).exit_code != 0 || f.Vtmctl({"start", name}).exit_code != 0) {
      std::cerr << "starting " << name << " failed\n" << f.VtmdLog();
      return 1;
    }
  }
  double all_s = duration<double>(steady_clock::now() - t0).count();
  long vtmd_rss = StatusKb(f.vtmd_pid(), "VmRSS"), vtmd_hwm = StatusKb(f.vtmd_pid(), "VmHWM");
  long inst_rss = 0, swtpm_rss = 0;
  auto instances = vtm::testing::FindProcesses({"vtm-instance", f.run_dir()});
  auto swtpms = vtm::testing::FindProcesses({vtm::testing::kSwtpmProcess, f.state_dir() + "/vms/"});
  for (pid_t pid : instances) inst_rss += StatusKb(pid, "VmRSS");
  for (pid_t pid : swtpms) swtpm_rss += StatusKb(pid, "VmRSS");
  long plain_rss = -1;
  {
    vtm::testing::TempDir d;
    vtm::SpawnOptions o;
    auto sp = vtm::Subprocess::Spawn({"swtpm", "socket", "--tpm2", "--tpmstate", "dir=" + d.path(), "--ctrl",
                                      "type=unixio,path=" + d.path() + "/c.sock", "--flags", "not-need-init,startup-clear"},
                                     o);
    if (sp.ok() && vtm::ConnectUnixWithRetry(d.path() + "/c.sock", seconds(10)).ok()) plain_rss = StatusKb(sp->pid(), "VmRSS");
  }
  std::printf("| memory with %d running vTPMs | value |\n|---|---|\n", vms);
  std::printf("| vtmd RSS before / with %d running | %ld KiB / %ld KiB |\n", vms, vtmd_before, vtmd_rss);
  std::printf("| vtmd peak RSS (VmHWM) | %ld KiB |\n", vtmd_hwm);
  std::printf("| vtm-instance RSS, mean per VM (%zu processes) | %ld KiB |\n", instances.size(),
              instances.empty() ? 0 : inst_rss / static_cast<long>(instances.size()));
  std::printf("| swtpm RSS, mean per VM (%zu processes) | %ld KiB |\n", swtpms.size(),
              swtpms.empty() ? 0 : swtpm_rss / static_cast<long>(swtpms.size()));
  std::printf("| plain swtpm RSS (anchor, after start-up) | %ld KiB |\n", plain_rss);
  std::printf("| create + start of all %d, sequential | %.1f s |\n", vms, all_s);
  return 0;
}
