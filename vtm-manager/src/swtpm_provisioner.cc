// Provisioning a vTPM through its own swtpm, before vtm-instance ever runs it.
#include "swtpm_provisioner.h"

#include "vtm/crash_point.h"
#include "vtm/provisioning_swtpm.h"
#include "vtpm_provisioner.h"

namespace vtm {

namespace {
ProvisioningSwtpmOptions OptionsFor(const VmRecord& vm, const VmPaths& paths, const SecretBytes& state_key,
                                    const SecretBytes& migration_key, Env* env) {
  ProvisioningSwtpmOptions o;
  o.env = env;
  o.tpm_state_dir = paths.tpm_dir;
  o.state_key = &state_key;
  o.migration_key = &migration_key;
  o.uid = vm.instance_uid;
  o.gid = vm.instance_uid;
  o.log_path = paths.log_dir + "/provisioning.log";
  o.process_record = paths.provisioning_record;
  o.extra_args = {"--seccomp", "action=kill"};
  o.label = "vTPM of VM " + vm.uuid;
  return o;
}
}  // namespace

Result<ProvisionedVtpm> SwtpmProvisioner::Provision(const VmRecord& vm, const VmPaths& paths,
                                                    const SecretBytes& state_key, const SecretBytes& migration_key) {
  ProvisioningSwtpmOptions o = OptionsFor(vm, paths, state_key, migration_key, env_);
  VTM_ASSIGN_OR_RETURN(auto swtpm, ProvisioningSwtpm::Start(o));
  CrashPoint("create.provisioning-swtpm-started");
  auto provisioned = ProvisionVtpm(swtpm->tpm(), host_tpm_, host_ca_, registry_, vm.uuid, vm.service, *env_);
  Status down = swtpm->Shutdown();
  CrashPoint("create.provisioning-swtpm-shut-down");
  if (!provisioned.ok()) return provisioned;
  if (!down.ok()) return std::move(down).error().Context("saving the provisioned state of " + o.label);
  return provisioned;
}

Status SwtpmProvisioner::WriteCertificates(const VmRecord& vm, const VmPaths& paths, const SecretBytes& state_key,
                                           const SecretBytes& migration_key, const std::vector<CertRecord>& certs) {
  ProvisioningSwtpmOptions o = OptionsFor(vm, paths, state_key, migration_key, env_);
  VTM_ASSIGN_OR_RETURN(auto swtpm, ProvisioningSwtpm::Start(o));
  Status written = WriteVtpmCertificates(swtpm->tpm(), host_ca_, certs);
  Status down = swtpm->Shutdown();
  if (!written.ok()) return written;
  if (!down.ok()) return std::move(down).error().Context("saving the state of " + o.label);
  return OkStatus();
}

Result<std::vector<CertRecord>> SwtpmProvisioner::Reissue(const VmRecord& vm) {
  VTM_ASSIGN_OR_RETURN(auto certs, registry_.CertificatesOf(vm.uuid));
  std::vector<KindAndCertificate> valid;
  for (const auto& c : certs) {
    if (c.revoked_at.empty()) valid.emplace_back(c.kind, c.der);
  }
  auto spkis = SpkisOfCertificates(valid);
  if (!spkis.ok()) return std::move(spkis).error().Context("renewing the valid certificates of VM " + vm.uuid);
  return IssueVtpmCertificates(host_ca_, registry_, vm.uuid, vm.service, *spkis);
}

}  // namespace vtm
