// Cost of the sealed-migration crypto core on simulated host TPMs (swtpm), one row per step
// of a migration's key transfer: the destination prepares an import key (TPM2_Create,
// TPM2_Load, TPM2_Certify by the host AK), the source verifies it (software), seals a live
// package (keys only) and a cold one (keys and a 20 KiB vTPM state), and the destination opens
// it (TPM2_Load, TPM2_ActivateCredential, AES-GCM). Anchor in the same run: one host-AK
// TPM2_Quote, a single TPM command through the same executor. Median and 90th percentile
// over the runs. Prints a table; asserts nothing.
//   migration_bench [--runs N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "host_attestation_key.h"
#include "migration_import_key.h"
#include "test_env.h"
#include "vtm/host_tpm.h"
#include "vtm/host_tpm_executor.h"
#include "vtm/migration_package.h"

namespace {

using Clock = std::chrono::steady_clock;
using vtm::Result;

struct Host {
  std::unique_ptr<vtm::SimulatedHostTpm> sim;
  std::unique_ptr<vtm::HostTpmExecutor> executor;
  std::unique_ptr<vtm::HostAttestationKey> ak;
  ~Host() {
    ak.reset();
    executor.reset();
    sim.reset();
  }
};

bool Start(Host& h, const std::string& dir) {
  auto sim = vtm::SimulatedHostTpm::Start(dir + "/host-tpm");
  if (!sim.ok()) return false;
  h.sim = std::move(sim).value();
  auto tpm = vtm::Tpm::OpenTcti(h.sim->tcti());
  if (!tpm.ok()) return false;
  h.executor = std::make_unique<vtm::HostTpmExecutor>(std::move(tpm).value());
  auto ak = vtm::HostAttestationKey::LoadOrCreate(*h.executor, dir + "/id", vtm::SecretBytes());
  if (!ak.ok()) return false;
  h.ak = std::move(ak).value();
  return true;
}

struct Row {
  std::string step;
  std::vector<double> ms;
  double jobs = 0;  // host-TPM jobs per run
};

void Print(const Row& r) {
  std::vector<double> v = r.ms;
  std::sort(v.begin(), v.end());
  const double median = v[v.size() / 2];
  const double p90 = v[std::min(v.size() - 1, v.size() * 9 / 10)];
  std::printf("| %-62s | %8.2f | %8.2f | %4.1f |\n", r.step.c_str(), median, p90, r.jobs);
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 30;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--runs") == 0) runs = std::max(1, std::atoi(argv[i + 1]));
  }
  vtm::testing::TempDir dir;
  Host source, dest;
  if (!Start(source, dir.path() + "/a") || !Start(dest, dir.path() + "/b")) {
    std::fprintf(stderr, "migration_bench: could not start the simulated host TPMs\n");
    return 1;
  }
  vtm::migration::KeyTransfer live;
  live.vm_uuid = "0b7e3c52-9a1f-4c55-8d2e-7f1a2b3c4d5e";
  live.generation = 1;
  live.state_key = vtm::RandomSecret(32).value();
  live.migration_key = vtm::RandomSecret(32).value();
  live.ek_public = std::string(90, 'e');
  live.ak_public = std::string(90, 'a');
  vtm::migration::KeyTransfer cold;
  cold.vm_uuid = live.vm_uuid;
  cold.generation = 1;
  cold.state_key = live.state_key.Clone();
  cold.migration_key = live.migration_key.Clone();
  cold.state_files["tpm2-00.permall"] = std::string(20 << 10, '\x42');

  Row create{"destination: CreateImportKey (create, load, certify)", {}, 0};
  Row verify{"source: VerifyImportKey (software)", {}, 0};
  Row seal_live{"source: SealForDestination, live (keys only)", {}, 0};
  Row seal_cold{"source: SealForDestination, cold (keys + 20 KiB state)", {}, 0};
  Row open_live{"destination: Parse + OpenSealedPackage, live (load, activate)", {}, 0};
  Row open_cold{"destination: Parse + OpenSealedPackage, cold", {}, 0};
  Row quote{"anchor: one host-AK TPM2_Quote (sha256:0)", {}, 0};
  auto timed = [](Row& row, vtm::HostTpmExecutor& ex, const std::function<bool()>& op) {
    const uint64_t jobs = ex.jobs_run();
    const auto t0 = Clock::now();
    const bool ok = op();
    row.ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    row.jobs = static_cast<double>(ex.jobs_run() - jobs);
    return ok;
  };
  auto selection = vtm::PcrSelection::Parse("sha256:0").value();
  for (int i = 0; i < runs; ++i) {
    const std::string id = "mig-" + std::to_string(i);
    vtm::ImportKey key;
    bool ok = timed(create, *dest.executor, [&] {
      auto k = vtm::CreateImportKey(*dest.ak, id, "nonce");
      if (k.ok()) key = std::move(k).value();
      return k.ok();
    });
    const std::string qualifying = vtm::migration::ImportKeyQualifying(id, "nonce");
    ok = ok && timed(verify, *source.executor, [&] {
      return vtm::migration::VerifyImportKey(key.pub.tpm2b_public, key.certify, dest.ak->ak_public().tpm2b_public,
                                             qualifying)
          .ok();
    });
    const vtm::migration::PackageHeader header{id, live.vm_uuid, 1, key.pub.name, "host-a", "host-b"};
    auto activate = [&](const vtm::TpmCredential& c) { return vtm::ActivateWithImportKey(*dest.ak, key.blob, c); };
    struct Kind {
      const vtm::migration::KeyTransfer* payload;
      Row* seal;
      Row* open;
    };
    for (const Kind& kind : {Kind{&live, &seal_live, &open_live}, Kind{&cold, &seal_cold, &open_cold}}) {
      std::string bytes;
      ok = ok && timed(*kind.seal, *source.executor, [&] {
        auto sealed = vtm::migration::SealForDestination(*kind.payload, header, key.pub.tpm2b_public);
        if (sealed.ok()) bytes = sealed->Serialize();
        return sealed.ok();
      });
      ok = ok && timed(*kind.open, *dest.executor, [&] {
        auto parsed = vtm::migration::SealedPackage::Parse(bytes);
        return parsed.ok() && vtm::migration::OpenSealedPackage(*parsed, header, activate).ok();
      });
    }
    ok = ok && timed(quote, *dest.executor, [&] { return dest.ak->Quote(selection, "nonce").ok(); });
    if (!ok) {
      std::fprintf(stderr, "migration_bench: a step failed in run %d\n", i);
      return 1;
    }
  }
  std::printf("sealed-migration crypto core, %d runs, simulated host TPMs (swtpm)\n\n", runs);
  std::printf("| %-62s | %8s | %8s | %4s |\n", "step", "median ms", "p90 ms", "TPM jobs");
  std::printf("|%s|%s|%s|%s|\n", std::string(64, '-').c_str(), std::string(10, '-').c_str(), std::string(10, '-').c_str(),
              std::string(6, '-').c_str());
  for (const Row* r : {&create, &verify, &seal_live, &seal_cold, &open_live, &open_cold, &quote}) Print(*r);
  return 0;
}
