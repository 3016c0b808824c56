// The host side of attestation as vtmd assembles it, for RA-client tests and benchmarks: an
// swtpm host TPM behind a HostTpmExecutor, host AK, host CA (tpm residency), measurement log
// (PCR 13), registry, and the VtmdAttestationHost over them, all in a temp directory.
// Thread safety: as the components'.
#pragma once

#include <memory>
#include <string>

#include "attestation_host.h"
#include "host_attestation_key.h"
#include "host_ca.h"
#include "measurement_log.h"
#include "registry.h"
#include "test_env.h"

namespace vtm::testing {

struct AttestationRig {
  TempDir dir;
  std::unique_ptr<SimulatedHostTpm> sim;
  std::unique_ptr<HostTpmExecutor> executor;
  std::unique_ptr<HostAttestationKey> ak;
  std::unique_ptr<MasterKey> master;
  std::unique_ptr<HostCa> ca;
  std::unique_ptr<HostMeasurementLog> log;
  std::unique_ptr<Registry> registry;
  std::unique_ptr<VtmdAttestationHost> host;

  ~AttestationRig();  // in dependency order
  Status Init();
  // A VM in the registry with a vTPM identity (the host EK and AK publics stand in for the
  // vTPM's: any TPM2B_PUBLIC names a key) and, if measure, its launch in the measurement log.
  Status AddVm(const std::string& uuid, const std::string& name, bool measure);
};

}  // namespace vtm::testing
