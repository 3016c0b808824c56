// The one door to the host TPM (the way ChromiumOS trunks sends every TPM byte through one
// transceiver): vtmd opens the host TPM once and every host-TPM job - master-key seal/unseal,
// PCR extends of measured launch, quotes, CA signatures, credential activation - runs through
// Run(), one job at a time, in arrival order of the lock. Components keep no lock of their own
// around the TPM; objects they keep loaded (the host AK, the CA key) are flushed through Run()
// too (DropKey).
//
// A throttle (SetThrottle) spaces jobs out to at most N per second, so benchmarks can run
// against a TPM as slow as a hardware one; each Run() counts as one command (the jobs the RA
// client sends, TPM2_Quote and TPM2_PCR_Extend, are one TPM command each).
//
// Thread safety: all methods may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "vtm/tpm.h"

namespace vtm {

class HostTpmExecutor {
 public:
  explicit HostTpmExecutor(std::unique_ptr<Tpm> tpm) : tpm_(std::move(tpm)) {}
  ~HostTpmExecutor() = default;
  HostTpmExecutor(const HostTpmExecutor&) = delete;
  HostTpmExecutor& operator=(const HostTpmExecutor&) = delete;

  // Runs job(Tpm&) with exclusive use of the host TPM and returns what it returns. TpmKeys the
  // job creates must be destroyed inside the job or later through DropKey.
  template <typename Job>
  auto Run(Job&& job) -> decltype(job(std::declval<Tpm&>())) {
    std::lock_guard<std::mutex> lock(mu_);
    WaitForThrottleLocked();
    ++jobs_run_;
    return job(*tpm_);
  }

  // Flushes a key this executor's TPM holds (a TpmKey kept beyond one job).
  void DropKey(TpmKey& key) {
    std::lock_guard<std::mutex> lock(mu_);
    key = TpmKey();
  }

  // At most commands_per_second jobs per second from now on (0: no limit). For benchmarks.
  void SetThrottle(double commands_per_second);
  // Jobs run so far (tests and benchmarks count host-TPM round trips with it).
  uint64_t jobs_run() const;

 private:
  void WaitForThrottleLocked();

  mutable std::mutex mu_;
  std::unique_ptr<Tpm> tpm_;
  uint64_t jobs_run_ = 0;
  std::chrono::nanoseconds min_interval_{0};
  std::chrono::steady_clock::time_point next_allowed_{};
};

}  // namespace vtm
