// Registry write latency with rollback protection (an HMAC over the registry sealed with each
// write, and a monotonic counter incremented after it) against the same registry without it,
// in the same run, at 1, 100 and 1000 VMs (each with four certificates, as vtmd issues).
//
// The counter is in memory here and takes a configurable time per increment
// (VTM_BENCH_NV_MS, default 3: what one NV increment of swtpm took on this machine, see
// docs/architecture.md), so the table shows what the caller of a write waits for; the real NV
// cost is in migration_downtime_bench and vtm_bench, which run swtpm as the host TPM.
//
//   build/bench/registry_bench
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "registry.h"

namespace vtm {
namespace {

class SlowCounter final : public MonotonicCounter {
 public:
  explicit SlowCounter(std::chrono::microseconds cost) : cost_(cost) {}
  Result<uint64_t> Read() override { return value_; }
  Status Increment() override {
    std::this_thread::sleep_for(cost_);
    ++value_;
    return OkStatus();
  }
  std::string Describe() const override { return "an in-memory counter"; }

 private:
  const std::chrono::microseconds cost_;
  uint64_t value_ = 7;
};

std::string Uuid(int i) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "00000000-0000-4000-8000-%012d", i);
  return buf;
}

struct Latency {
  double p50_ms = 0, p99_ms = 0;
};

Latency Summarize(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms[std::min(ms.size() - 1, ms.size() * 99 / 100)]};
}

// A registry with `vms` VMs, each with four certificates of ~700 bytes; then `writes` state
// transitions of one VM, timed one by one, `gap` apart (longer than an increment: what one
// write costs its caller when the counter thread has finished the previous one).
Latency Run(const std::string& dir, int vms, MonotonicCounter* counter, int writes, std::chrono::microseconds gap) {
  const std::string path = dir + "/registry-" + std::to_string(vms) + (counter ? "-anchored" : "-plain") + ".db";
  auto reg = Registry::Open(path);
  if (!reg.ok()) {
    std::fprintf(stderr, "%s\n", reg.error().message().c_str());
    std::exit(1);
  }
  Registry& r = **reg;
  if (counter != nullptr) {
    SecretBytes key(32);
    std::fill(key.data(), key.data() + key.size(), uint8_t{0x5a});
    if (auto a = r.Anchor(std::move(key), counter, /*counter_is_new=*/true, false); !a.ok()) {
      std::fprintf(stderr, "%s\n", a.error().message().c_str());
      std::exit(1);
    }
  }
  for (int i = 0; i < vms; ++i) {
    VmRecord v;
    v.uuid = Uuid(i);
    v.name = "vm" + std::to_string(i);
    v.wrapped_state_key = std::string(60, 's');
    v.wrapped_migration_key = std::string(60, 'm');
    if (!r.Insert(&v, 100000, 1 << 20).ok()) std::exit(1);
    std::vector<CertRecord> certs;
    for (const char* kind : {"ek-ecc", "ek-rsa", "ak", "ik"}) {
      CertRecord c;
      auto serial = r.NewSerial();
      if (!serial.ok()) std::exit(1);
      c.serial = *serial;
      c.vm_uuid = v.uuid;
      c.kind = kind;
      c.der = std::string(700, 'c');
      certs.push_back(c);
    }
    if (!r.AddCertificates(certs).ok()) std::exit(1);
  }
  auto first = r.Get(Uuid(0));
  if (!first.ok()) std::exit(1);
  uint64_t generation = first->generation;
  VmState from = first->state;
  std::vector<double> ms;
  for (int i = 0; i < writes; ++i) {
    std::this_thread::sleep_for(gap);  // as writes come in a running vtmd: apart
    const VmState to = from == VmState::kStopped ? VmState::kRunning : VmState::kStopped;
    auto t0 = std::chrono::steady_clock::now();
    auto moved = r.Transition(Uuid(0), generation, {from}, to);
    auto t1 = std::chrono::steady_clock::now();
    if (!moved.ok()) {
      std::fprintf(stderr, "%s\n", moved.error().message().c_str());
      std::exit(1);
    }
    generation = moved->generation;
    from = to;
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  return Summarize(std::move(ms));
}

}  // namespace
}  // namespace vtm

int main() {
  using namespace vtm;
  const char* nv = std::getenv("VTM_BENCH_NV_MS");
  const double nv_ms = nv ? std::atof(nv) : 3.0;
  char tmpl[] = "/tmp/vtm-registry-bench.XXXXXX";
  const char* dir = mkdtemp(tmpl);
  if (dir == nullptr) return 1;
  constexpr int kWrites = 60;
  std::printf("registry write (one VM's state transition), %d writes each, %.1f ms apart; counter increment %.1f ms\n",
              kWrites, 2 * nv_ms, nv_ms);
  std::printf("%-6s | %-22s | %-22s | %s\n", "VMs", "plain p50 / p99 ms", "anchored p50 / p99 ms", "added p50 ms");
  for (int vms : {1, 100, 1000}) {
    const std::chrono::microseconds cost(static_cast<int64_t>(nv_ms * 1000));
    Latency plain = Run(dir, vms, nullptr, kWrites, 2 * cost);
    SlowCounter counter(cost);
    Latency anchored = Run(dir, vms, &counter, kWrites, 2 * cost);
    std::printf("%-6d | %8.2f / %-11.2f | %8.2f / %-11.2f | %.2f\n", vms, plain.p50_ms, plain.p99_ms, anchored.p50_ms,
                anchored.p99_ms, anchored.p50_ms - plain.p50_ms);
  }
  std::filesystem::remove_all(dir);
  return 0;
}
