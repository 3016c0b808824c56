// Deep attestations per second with the host TPM throttled to 10 commands per second (a
// hardware TPM's pace; the HostTpmExecutor's throttle), with batching (one host quote per
// window) and without (window 0: one quote per request), and the latency a lone request adds.
// Real swtpm host TPM, host AK, measurement log and registry; prints a table, asserts nothing.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "attestation_rig.h"
#include "ra_client.h"

namespace vtm {
namespace {

constexpr const char* kVm = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

using Rig = testing::AttestationRig;

struct Run {
  double per_second = 0;
  uint64_t quotes = 0;
  uint64_t answered = 0;
  uint64_t failed = 0;
};

// `clients` threads ask for deep evidence in a loop for `seconds`.
Run Measure(Rig& rig, std::chrono::microseconds window, size_t max_batch, int clients, double seconds) {
  RaClientConfig c;
  c.quote_pcrs = PcrSelection::Parse("sha256:0,1,2,3,4,5,6,7,13").value();
  c.batch_window = window;
  c.max_batch = max_batch;
  RaClient ra(*rig.host, c);
  attest::Quote guest;
  guest.set_attest(std::string(100, 'a'));
  guest.set_signature(std::string(72, 's'));
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> ok{0}, bad{0};
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < clients; ++t) {
    threads.emplace_back([&, t] {
      for (uint64_t i = 0; !stop; ++i) {
        auto ev = ra.DeepEvidence(kVm, "nonce-" + std::to_string(t) + "-" + std::to_string(i), guest, "");
        (ev.ok() ? ok : bad)++;
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& th : threads) th.join();
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return Run{static_cast<double>(ok) / elapsed, ra.quotes_made(), ok, bad};
}

// Median latency of one request at a time (nothing else in flight; a pause longer than the
// throttle's interval between requests, so each finds the TPM idle).
double LoneLatencyMs(Rig& rig, std::chrono::microseconds window, int n) {
  RaClientConfig c;
  c.quote_pcrs = PcrSelection::Parse("sha256:0,1,2,3,4,5,6,7,13").value();
  c.batch_window = window;
  RaClient ra(*rig.host, c);
  std::vector<double> ms;
  for (int i = 0; i < n; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    auto t0 = std::chrono::steady_clock::now();
    (void)ra.HostEvidence("lone-nonce-" + std::to_string(i));
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int Main() {
  Rig rig;
  Status st = rig.Init();
  if (st.ok()) st = rig.AddVm(kVm, "bench", false);
  if (!st.ok()) {
    std::fprintf(stderr, "ra_batching_bench: %s\n", st.error().message().c_str());
    return 1;
  }
  std::printf("Deep attestations/s, host TPM throttled to 10 commands/s (swtpm + executor throttle)\n");
  std::printf("%-38s %8s %10s %8s %12s\n", "configuration", "clients", "answers", "quotes", "answers/s");
  rig.executor->SetThrottle(10);
  struct Case {
    const char* name;
    std::chrono::microseconds window;
    size_t max_batch;
    int clients;
  };
  for (const Case& k : {Case{"no batching (one quote per request)", std::chrono::microseconds(0), 1, 32},
                        Case{"batching, window 0 (queued requests)", std::chrono::microseconds(0), 4096, 512},
                        Case{"batching, window 10 ms", std::chrono::milliseconds(10), 4096, 512},
                        Case{"batching, window 50 ms", std::chrono::milliseconds(50), 4096, 512}}) {
    Run r = Measure(rig, k.window, k.max_batch, k.clients, 10.0);
    std::printf("%-38s %8d %10llu %8llu %12.1f%s\n", k.name, k.clients, static_cast<unsigned long long>(r.answered),
                static_cast<unsigned long long>(r.quotes), r.per_second, r.failed ? " (some failed)" : "");
  }
  std::printf("\nLatency of a lone request (median of 20), host TPM throttled to 10 commands/s\n");
  std::printf("%-34s %12s\n", "configuration", "median ms");
  for (auto w : {std::chrono::microseconds(0), std::chrono::microseconds(10000), std::chrono::microseconds(50000)}) {
    std::printf("%-34s %12.1f\n", ("window " + std::to_string(w.count() / 1000) + " ms").c_str(), LoneLatencyMs(rig, w, 20));
  }
  rig.executor->SetThrottle(0);
  std::printf("\nUnthrottled (swtpm's own pace), lone request\n");
  std::printf("%-34s %12.1f\n", "window 0 ms", LoneLatencyMs(rig, std::chrono::microseconds(0), 20));
  return 0;
}

}  // namespace
}  // namespace vtm

int main() { return vtm::Main(); }
