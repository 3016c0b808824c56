// VtpmProvisioner over a provisioning swtpm: starts the new vTPM's swtpm on its state
// directory with the VM's keys and uid, runs ProvisionVtpm against it, shuts it down.
#pragma once

#include "host_ca.h"
#include "manager.h"
#include "registry.h"
#include "vtm/env.h"

namespace vtm {

class SwtpmProvisioner : public VtpmProvisioner {
 public:
  // env (not owned) spawns the provisioning swtpm and dates the certificates.
  SwtpmProvisioner(HostTpmExecutor& host_tpm, HostCa& host_ca, Registry& registry, Env* env = Env::Default())
      : host_tpm_(host_tpm), host_ca_(host_ca), registry_(registry), env_(env) {}
  Result<ProvisionedVtpm> Provision(const VmRecord& vm, const VmPaths& paths,
                                            const SecretBytes& state_key, const SecretBytes& migration_key) override;
  Status WriteCertificates(const VmRecord& vm, const VmPaths& paths, const SecretBytes& state_key,
                           const SecretBytes& migration_key, const std::vector<CertRecord>& certs) override;
  Result<std::vector<CertRecord>> Reissue(const VmRecord& vm) override;

 private:
  HostTpmExecutor& host_tpm_;
  HostCa& host_ca_;
  Registry& registry_;
  Env* const env_;
};

}  // namespace vtm
