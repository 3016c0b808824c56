// Provisioning a vTPM through its own swtpm, before vtm-instance ever runs it.
#include "swtpm_provisioner.h"

#include "vtm/provisioning_swtpm.h"
#include "vtpm_provisioner.h"

namespace vtm {

Result<ProvisionedVtpm> SwtpmProvisioner::Provision(const VmRecord& vm, const std::string& tpm_state_dir,
                                                            const SecretBytes& state_key,
                                                            const SecretBytes& migration_key) {
  ProvisioningSwtpmOptions o;
  o.tpm_state_dir = tpm_state_dir;
  o.state_key = &state_key;
  o.migration_key = &migration_key;
  o.uid = vm.instance_uid;
  o.gid = vm.instance_uid;
  o.log_path = tpm_state_dir + "/../log/provisioning.log";
  o.extra_args = {"--seccomp", "action=kill"};
  o.label = "vTPM of VM " + vm.uuid;
  VTM_ASSIGN_OR_RETURN(auto swtpm, ProvisioningSwtpm::Start(o));
  auto provisioned = ProvisionVtpm(swtpm->tpm(), host_tpm_, host_ca_, registry_, vm.uuid, vm.service);
  Status down = swtpm->Shutdown();
  if (!provisioned.ok()) return provisioned;
  if (!down.ok()) return std::move(down).error().Context("saving the provisioned state of " + o.label);
  return provisioned;
}

}  // namespace vtm
