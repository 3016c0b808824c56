// Builds the attestation rig over a fresh simulated host TPM.
#include "attestation_rig.h"

namespace vtm::testing {

AttestationRig::~AttestationRig() {
  host.reset();
  log.reset();
  ca.reset();
  ak.reset();
  executor.reset();
}

Status AttestationRig::Init() {
  VTM_ASSIGN_OR_RETURN(sim, SimulatedHostTpm::Start(dir.path() + "/host-tpm"));
  VTM_ASSIGN_OR_RETURN(auto tpm, Tpm::OpenTcti(sim->tcti()));
  executor = std::make_unique<HostTpmExecutor>(std::move(tpm));
  VTM_ASSIGN_OR_RETURN(SecretBytes key, RandomSecret(32));
  master = std::make_unique<MasterKey>(MasterKey::FromBytes(std::move(key)));
  VTM_ASSIGN_OR_RETURN(SecretBytes ak_auth, master->DeriveAuth(kHostAkAuthLabel));
  VTM_ASSIGN_OR_RETURN(ak, HostAttestationKey::LoadOrCreate(*executor, dir.path() + "/id", ak_auth));
  VTM_ASSIGN_OR_RETURN(PcrSelection sel, PcrSelection::Parse("sha256:0"));
  VTM_ASSIGN_OR_RETURN(ca, HostCa::LoadOrCreate(*ak, dir.path() + "/id", "test-host", CaResidency::kTpm, *master, sel));
  VTM_ASSIGN_OR_RETURN(log, HostMeasurementLog::Open(*executor, dir.path() + "/measurement-log.pb", 13, "boot-1"));
  VTM_ASSIGN_OR_RETURN(registry, Registry::Open(dir.path() + "/registry.db"));
  host = std::make_unique<VtmdAttestationHost>(*ak, *ca, *log, *registry, "test-host", true);
  return OkStatus();
}

Status AttestationRig::AddVm(const std::string& uuid, const std::string& name, bool measure) {
  VmRecord rec;
  rec.uuid = uuid;
  rec.name = name;
  rec.wrapped_state_key = rec.wrapped_migration_key = "x";
  VTM_RETURN_IF_ERROR(registry->Insert(&rec, 70000, 100));
  VtpmPublicIdentity id;
  id.ek_public = ak->ek_public().tpm2b_public;
  id.ak_public = ak->ak_public().tpm2b_public;
  VTM_RETURN_IF_ERROR(registry->SetVtpmIdentity(uuid, id));
  if (!measure) return OkStatus();
  attest::InstanceLaunch launch;
  launch.set_vm_uuid(uuid);
  launch.set_swtpm_sha256(std::string(32, 's'));
  return log->Measure(attest::MEASUREMENT_TYPE_INSTANCE_LAUNCH, launch.SerializeAsString());
}

}  // namespace vtm::testing
