// VtpmProvisioner over a provisioning swtpm: starts the new vTPM's swtpm on its state
// directory with the VM's keys and uid, runs ProvisionVtpm against it, shuts it down.
#pragma once

#include "host_ca.h"
#include "manager.h"
#include "registry.h"

namespace vtm {

class SwtpmProvisioner : public VtpmProvisioner {
 public:
  SwtpmProvisioner(HostTpmExecutor& host_tpm, HostCa& host_ca, Registry& registry)
      : host_tpm_(host_tpm), host_ca_(host_ca), registry_(registry) {}
  Result<ProvisionedVtpm> Provision(const VmRecord& vm, const VmPaths& paths,
                                            const SecretBytes& state_key, const SecretBytes& migration_key) override;
  Status WriteCertificates(const VmRecord& vm, const VmPaths& paths, const SecretBytes& state_key,
                           const SecretBytes& migration_key, const std::vector<CertRecord>& certs) override;
  Result<std::vector<CertRecord>> Reissue(const VmRecord& vm) override;

 private:
  HostTpmExecutor& host_tpm_;
  HostCa& host_ca_;
  Registry& registry_;
};

}  // namespace vtm
