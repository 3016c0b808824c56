// Appraisal throughput of vtm_attest's verifier against its anchor, in one run: deep and host
// appraisals per second on one core with the chain cache warm (one Verifier reused), the same
// with a fresh Verifier per appraisal (every certificate and TPM2_Certify checked again; keys
// already built from TPM public areas stay in the process-wide key cache), and one
// `tpm2_checkquote` process per quote (which checks only the quote). Real swtpm quotes and
// certificates (tests/testing/attest_world.h). Two columns: per second of wall time, and per
// CPU-second (this process's, plus its finished children's for the anchor), which is what "per
// core" means on a machine that other work shares. Prints a table; asserts nothing.
//   attest_bench [--seconds S] [--only deep|host]   (--only: one warm-cache row, for profiling)
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <string>

#include "attest_world.h"
#include "test_env.h"
#include "tpm2_tools.h"

namespace {

using Clock = std::chrono::steady_clock;

// CPU seconds (user + system) of this process and, with children, of its waited-for children.
double CpuSeconds(bool children) {
  auto seconds_of = [](int who) {
    rusage u{};
    getrusage(who, &u);
    return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
  };
  return seconds_of(RUSAGE_SELF) + (children ? seconds_of(RUSAGE_CHILDREN) : 0);
}

struct Rates {
  double wall = 0;  // operations per second of wall time
  double cpu = 0;   // operations per CPU-second
};

// Runs op repeatedly for `seconds` of wall time (at least `min_runs` times).
Rates Rate(double seconds, int min_runs, const std::function<bool()>& op, bool children = false) {
  const auto start = Clock::now();
  const double cpu_start = CpuSeconds(children);
  int runs = 0;
  while (runs < min_runs || std::chrono::duration<double>(Clock::now() - start).count() < seconds) {
    if (!op()) {
      std::fprintf(stderr, "attest_bench: an operation failed\n");
      return {};
    }
    ++runs;
  }
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  const double cpu = CpuSeconds(children) - cpu_start;
  return {runs / wall, cpu > 0 ? runs / cpu : 0};
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 3;
  std::string only;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--seconds") seconds = std::atof(argv[i + 1]);
    if (std::string(argv[i]) == "--only") only = argv[i + 1];
  }
  using namespace vtm::attest;  // NOLINT(google-build-using-namespace)
  namespace world_ns = vtm::attest::testing;
  vtm::testing::TempDir tmp;
  world_ns::AttestWorld world;
  world.Build(tmp.path());
  const DeepEvidence deep = world.MakeDeep();
  const HostEvidence host = world.MakeHost();
  auto verifier = world_ns::Must(Verifier::Create(world.policy_));
  if (!verifier->AppraiseDeep(deep, world.nonce_, world.now_).trusted) {
    std::fprintf(stderr, "attest_bench: the evidence is not trusted\n%s",
                 verifier->AppraiseDeep(deep, world.nonce_, world.now_).ToText().c_str());
    return 1;
  }
  if (!only.empty()) {
    const bool is_deep = only == "deep";
    const Rates r = Rate(seconds, 50, [&] {
      return is_deep ? verifier->AppraiseDeep(deep, world.nonce_, world.now_).trusted
                     : verifier->AppraiseHost(host, world.nonce_, world.now_).trusted;
    });
    std::printf("%s, chain cache warm: %.0f per second, %.0f per CPU-second\n", is_deep ? "deep" : "host", r.wall,
                r.cpu);
    return 0;
  }
  const Rates deep_cached =
      Rate(seconds, 50, [&] { return verifier->AppraiseDeep(deep, world.nonce_, world.now_).trusted; });
  const Rates host_cached =
      Rate(seconds, 50, [&] { return verifier->AppraiseHost(host, world.nonce_, world.now_).trusted; });
  const Rates deep_cold = Rate(seconds, 20, [&] {
    auto fresh = world_ns::Must(Verifier::Create(world.policy_));
    return fresh->AppraiseDeep(deep, world.nonce_, world.now_).trusted;
  });
  const Rates checkquote = Rate(
      seconds, 10,
      [&] {
        return vtm::testing::Tpm2Checkquote(deep.guest_quote(), world.vtpm_ak_pub_.tpm2b_public, world.nonce_,
                                            tmp.path())
                   .exit_code == 0;
      },
      /*children=*/true);
  std::printf("%-58s %12s %14s\n", "appraisal (one thread)", "per second", "per CPU-second");
  std::printf("%-58s %12.0f %14.0f\n", "deep, chain cache warm (host + guest quote, 3 logs)", deep_cached.wall,
              deep_cached.cpu);
  std::printf("%-58s %12.0f %14.0f\n", "host, chain cache warm (host quote, 3 logs)", host_cached.wall,
              host_cached.cpu);
  std::printf("%-58s %12.0f %14.0f\n", "deep, fresh verifier (all certificates and certify)", deep_cold.wall,
              deep_cold.cpu);
  std::printf("%-58s %12.1f %14.1f\n", "anchor: one tpm2_checkquote process per quote", checkquote.wall,
              checkquote.cpu);
  return 0;
}
