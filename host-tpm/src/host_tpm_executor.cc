// Throttle and counters of the host-TPM executor.
#include "vtm/host_tpm_executor.h"

#include <thread>

namespace vtm {

void HostTpmExecutor::SetThrottle(double commands_per_second) {
  std::lock_guard<std::mutex> lock(mu_);
  min_interval_ = commands_per_second > 0
                      ? std::chrono::nanoseconds(static_cast<int64_t>(1e9 / commands_per_second))
                      : std::chrono::nanoseconds(0);
  next_allowed_ = std::chrono::steady_clock::now();
}

uint64_t HostTpmExecutor::jobs_run() const {
  std::lock_guard<std::mutex> lock(mu_);
  return jobs_run_;
}

void HostTpmExecutor::WaitForThrottleLocked() {
  if (min_interval_.count() == 0) return;
  // Sleeping with the lock held is the point: the TPM is busy for the whole interval.
  auto now = std::chrono::steady_clock::now();
  if (now < next_allowed_) std::this_thread::sleep_until(next_allowed_);
  next_allowed_ = std::max(now, next_allowed_) + min_interval_;
}

}  // namespace vtm
