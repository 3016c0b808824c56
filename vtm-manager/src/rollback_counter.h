// The host TPM's NV counter that anchors the registry against rollback (Registry::Anchor): an
// owner-range NV index of type counter whose auth value is derived from the master key, so only
// a vtmd that unsealed the master key (this host, in its sealed PCR state) can move it, while
// anyone with owner auth can read it (tpm2_nvread -C o).
//
// Thread safety: as the HostTpmExecutor it runs on (every method may be called from any thread).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "registry.h"
#include "vtm/error.h"
#include "vtm/host_tpm_executor.h"
#include "vtm/secret.h"

namespace vtm {

// The default index, in the owner range (TCG "Registry of Reserved TPM 2.0 Handles": 0x01800000
// - 0x01bfffff is for the owner; vtmd's own certificate indices are elsewhere). vtmd.conf:
// rollback-nv-index.
inline constexpr uint32_t kDefaultRollbackNvIndex = 0x01800a7d;
inline constexpr char kRollbackCounterAuthLabel[] = "rollback counter";
inline constexpr char kRegistryMacLabel[] = "registry mac";

class HostNvCounter final : public MonotonicCounter {
 public:
  // Opens the counter at nv_index, using auth for every increment and read. If it is not
  // defined, defines it (owner auth) and *created is set; a counter without a value yet (a
  // crash right after defining it) counts as created too. Either way it is given its first value.
  static Result<std::unique_ptr<HostNvCounter>> OpenOrDefine(HostTpmExecutor& tpm, uint32_t nv_index, SecretBytes auth,
                                                             bool* created);

  Result<uint64_t> Read() override;
  Status Increment() override;
  std::string Describe() const override;

 private:
  HostNvCounter(HostTpmExecutor& tpm, uint32_t nv_index, SecretBytes auth)
      : tpm_(tpm), nv_index_(nv_index), auth_(std::move(auth)) {}
  HostTpmExecutor& tpm_;
  const uint32_t nv_index_;
  const SecretBytes auth_;
};

}  // namespace vtm
