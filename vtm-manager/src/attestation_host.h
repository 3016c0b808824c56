// vtmd's side of the RA client: the AttestationHost over the host AK, the measurement log, the
// host CA and the registry. Quote and log are taken under the log's lock, so a host quote
// covers exactly the log entries that go with it.
//
// Thread safety: all methods may be called from any thread.
#pragma once

#include <string>

#include "host_attestation_key.h"
#include "host_ca.h"
#include "measurement_log.h"
#include "ra_client.h"
#include "registry.h"

namespace vtm {

class VtmdAttestationHost : public AttestationHost {
 public:
  VtmdAttestationHost(HostAttestationKey& ak, HostCa& ca, HostMeasurementLog& log, Registry& registry,
                      std::string host_name, bool simulated_host_tpm)
      : ak_(ak), ca_(ca), log_(log), registry_(registry), host_name_(std::move(host_name)), simulated_(simulated_host_tpm) {}

  Result<QuoteAndLog> QuoteWithLog(const PcrSelection& selection, const std::string& qualifying) override;
  attest::HostIdentity Identity() override;
  Result<attest::VtpmIdentity> Vtpm(const std::string& vm) override;
  Result<SecretBytes> ActivateCredential(const TpmCredential& credential) override;

 private:
  HostAttestationKey& ak_;
  HostCa& ca_;
  HostMeasurementLog& log_;
  Registry& registry_;
  const std::string host_name_;
  const bool simulated_;
};

}  // namespace vtm
