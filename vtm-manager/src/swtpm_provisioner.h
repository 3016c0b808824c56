// VtpmProvisioner over a provisioning swtpm: starts the new vTPM's swtpm on its state
// directory with the VM's keys and uid, runs ProvisionVtpm against it, shuts it down.
#pragma once

#include "host_identity.h"
#include "manager.h"
#include "registry.h"

namespace vtm {

class SwtpmProvisioner : public VtpmProvisioner {
 public:
  SwtpmProvisioner(HostIdentity& host, Registry& registry) : host_(host), registry_(registry) {}
  Result<std::vector<CertRecord>> Provision(const VmRecord& vm, const std::string& tpm_state_dir,
                                            const SecretBytes& state_key, const SecretBytes& migration_key) override;

 private:
  HostIdentity& host_;
  Registry& registry_;
};

}  // namespace vtm
