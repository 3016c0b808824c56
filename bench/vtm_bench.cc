// Benchmarks for the vTPM lifecycle, each against its anchor in the same run:
//   1. start -> vTPM ready through vtmd (vtmctl start: key unwrap, vtm-instance, swtpm with
//      encrypted state, readiness) vs. starting a plain `swtpm socket` by hand and waiting for
//      its control socket;
//   2. memory: peak RSS of vtmd with N running vTPMs, and the per-VM processes' RSS next to a
//      plain swtpm's.
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
  auto swtpms = vtm::testing::FindProcesses({"swtpm", f.state_dir() + "/vms/"});
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
