// Appraisal throughput of vtm_attest's verifier against its anchor, in one run: deep and host
// appraisals per second on one core with the chain cache warm (one Verifier reused), the same
// with a fresh Verifier per appraisal (every certificate and TPM2_Certify checked again), and
// one `tpm2_checkquote` process per quote (which checks only the quote). Real swtpm quotes
// and certificates (tests/testing/attest_world.h). Prints a table; asserts nothing.
//   attest_bench [--seconds S]
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>

#include "attest_world.h"
#include "test_env.h"
#include "tpm2_tools.h"

namespace {

using Clock = std::chrono::steady_clock;

// Runs op repeatedly for `seconds` (at least `min_runs` times); returns operations per second.
double Rate(double seconds, int min_runs, const std::function<bool()>& op) {
  const auto start = Clock::now();
  int runs = 0;
  while (runs < min_runs || std::chrono::duration<double>(Clock::now() - start).count() < seconds) {
    if (!op()) {
      std::fprintf(stderr, "attest_bench: an operation failed\n");
      return 0;
    }
    ++runs;
  }
  return runs / std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 3;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--seconds") seconds = std::atof(argv[i + 1]);
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
  const double deep_cached = Rate(seconds, 50, [&] { return verifier->AppraiseDeep(deep, world.nonce_, world.now_).trusted; });
  const double host_cached = Rate(seconds, 50, [&] { return verifier->AppraiseHost(host, world.nonce_, world.now_).trusted; });
  const double deep_cold = Rate(seconds, 20, [&] {
    auto fresh = world_ns::Must(Verifier::Create(world.policy_));
    return fresh->AppraiseDeep(deep, world.nonce_, world.now_).trusted;
  });
  const double checkquote = Rate(seconds, 10, [&] {
    return vtm::testing::Tpm2Checkquote(deep.guest_quote(), world.vtpm_ak_pub_.tpm2b_public, world.nonce_, tmp.path())
               .exit_code == 0;
  });
  std::printf("%-58s %12s\n", "appraisal (one core)", "per second");
  std::printf("%-58s %12.0f\n", "deep, chain cache warm (host + guest quote, 3 logs)", deep_cached);
  std::printf("%-58s %12.0f\n", "host, chain cache warm (host quote, 3 logs)", host_cached);
  std::printf("%-58s %12.0f\n", "deep, fresh verifier (all certificates and certify)", deep_cold);
  std::printf("%-58s %12.1f\n", "anchor: one tpm2_checkquote process per quote", checkquote);
  return 0;
}
