// The vTM Manager's lifecycle logic (ISO/IEC 27070 5.3): create, start, stop, delete and
// list the vTPM of each VM. Each operation commits its registry transition before the side
// effect it allows; Reconcile() finishes or undoes what a crash interrupted.
//
// Ownership: an operation on a VM first claims it in this process (a second operation on the
// same VM is refused at once, kFailedPrecondition), then wins each registry transition by
// the VM's generation (Registry::Transition), so of two concurrent callers exactly one acts
// and the other gets a clean error. The instance monitor, which owns nothing, marks a VM
// failed only by a compare-and-set on the generation it read.
//
// Thread safety: all methods may be called concurrently.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "instance_supervisor.h"
#include "master_key.h"
#include "measurement_log.h"
#include "peer_check.h"
#include "registry.h"
#include "vtm/claims.h"
#include "vtm/env.h"
#include "vtm/error.h"
#include "vtm/mutex.h"

namespace vtm {

// What provisioning made: the certificates issued (already recorded in the registry) and the
// vTPM's public identity.
struct ProvisionedVtpm {
  std::vector<CertRecord> certs;
  VtpmPublicIdentity identity;
};

// Where a VM's files live.
struct VmPaths {
  std::string vm_dir;   // <state>/vms/<uuid>        0711 root
  std::string tpm_dir;  // <state>/vms/<uuid>/tpm    0700 instance uid (encrypted swtpm state)
  std::string log_dir;  // <state>/vms/<uuid>/log    0700 instance uid
  std::string run_dir;  // <run>/vms/<uuid>
  std::string tpm_socket;  // <run>/vms/<uuid>/tpm.sock
  std::string manager_socket;  // <run>/manager/<uuid>.sock: vtmd's channel into the instance (root only)
  // <state>/vms/<uuid>/provisioning-swtpm.process: the provisioning swtpm while it runs
  // (RecordProcess), so an interrupted create can end it.
  std::string provisioning_record;
};

// Gives a freshly created vTPM its identity (EKs, AK, IK, certificates in NV) before any VM
// attaches. Implemented over a provisioning swtpm in vtmd, injectable for tests.
class VtpmProvisioner {
 public:
  virtual ~VtpmProvisioner() = default;
  virtual Result<ProvisionedVtpm> Provision(const VmRecord& vm, const VmPaths& paths,
                                                    const SecretBytes& state_key, const SecretBytes& migration_key) = 0;
  // Writes certs (and this host's CA chain) into the NV indices of the stopped vTPM: for a VM
  // that arrived by migration and was re-certified by this host's CA.
  virtual Status WriteCertificates(const VmRecord& vm, const VmPaths& paths, const SecretBytes& state_key,
                                   const SecretBytes& migration_key, const std::vector<CertRecord>& certs) = 0;
  // Has this host's CA certify the keys of vm's valid certificates anew (recorded, not yet
  // superseding the old ones).
  virtual Result<std::vector<CertRecord>> Reissue(const VmRecord& vm) = 0;
};

// The VM's two keys in clear (in memory only), e.g. to seal them to a migration destination.
struct VmSecrets {
  SecretBytes state_key;
  SecretBytes migration_key;
};

// A VM arriving by migration, as the destination opened it from its sealed package.
struct IncomingVm {
  std::string uuid;
  std::string name;
  std::string service;
  uint64_t generation = 0;
  VmSecrets keys;
  VtpmPublicIdentity identity;
  std::map<std::string, std::string> state_files;  // cold: the swtpm state files (encrypted by swtpm)
  bool live = false;
  std::string migration_id;
};

struct ManagerConfig {
  std::string state_dir;  // registry, sealed master key, vms/<uuid>/{tpm,log}
  std::string run_dir;    // vms/<uuid>/tpm.sock
  uint32_t instance_uid_base = 500000000;
  uint32_t instance_uid_count = 65536;
  uint32_t socket_uid = 0;  // owner of each VM's tpm.sock (the uid QEMU runs as)
  uint32_t socket_gid = 0;
  std::chrono::milliseconds ready_timeout{10000};
  std::chrono::milliseconds stop_grace{10000};
  // The swtpm binary instances run (an absolute path, so what is measured is what runs);
  // empty: vtm-instance's default from PATH.
  std::string swtpm_binary;
  // Files, clock and processes of the lifecycle (not owned; outlives the Manager).
  Env* env = Env::Default();
  // Which tpm.sock client an instance takes for its VM's QEMU (vtmd --qemu-peer-check).
  instance::PeerCheckMode qemu_peer_check = instance::PeerCheckMode::kWarn;
};

class Manager {
 public:
  // provisioner may be null: vTPMs are then created without identity (no certificates).
  // measurements may be null: instances are then launched unmeasured.
  Manager(ManagerConfig config, Registry& registry, const MasterKey& master_key, const std::string& instance_binary,
          VtpmProvisioner* provisioner, HostMeasurementLog* measurements = nullptr);

  VmPaths PathsFor(const std::string& uuid) const;

  // uuid may be empty (one is generated); name defaults to the uuid; service names the IK.
  Result<VmRecord> Create(const std::string& uuid, const std::string& name, const std::string& service = "");
  // Idempotent for scripts and hooks: starting a running vTPM succeeds and says so in *note.
  Result<VmRecord> Start(const std::string& vm, std::string* note = nullptr);
  // Idempotent likewise (a provisioned or stopped vTPM is left as it is, *note says so).
  // Refused while a QEMU is attached to the vTPM's socket, unless force: the guest would lose
  // its TPM.
  Result<VmRecord> Stop(const std::string& vm, bool force = false, std::string* note = nullptr);
  // Whether a QEMU is attached to the VM's running instance (asked over its manager channel).
  Result<bool> QemuAttached(const std::string& uuid) const;
  Status Delete(const std::string& vm);
  Result<std::vector<VmRecord>> List();
  Result<VmRecord> Show(const std::string& vm);
  Result<std::vector<CertRecord>> Certificates(const std::string& vm);
  // Certificate renewal: the host CA certifies the vTPM's keys anew (today's validity and CA),
  // the old certificates are revoked and the new ones reach the vTPM's NV at its next start
  // (at once if it is not running). Refused for a VM without identity or one that is moving.
  Result<std::vector<CertRecord>> RenewCertificates(const std::string& vm);

  // At start-up: adopts instances that survived a vtmd restart, marks dead ones failed,
  // and completes interrupted deletions.
  Status Reconcile();
  // Rollback protection of vTPM state (vtmd --accept-vm-state-rollback): records the state of
  // a stopped vTPM as it is now, so a start that refused it (an older copy put back) accepts
  // it. Returns the new digest.
  Result<std::string> AcceptStateRollback(const std::string& vm);

  // Sealed migration (migration_engine.h drives these; each claims the VM for its length).
  Result<VmSecrets> UnwrapKeys(const VmRecord& rec) const;
  // Source: checks the VM can leave (live: running; cold: provisioned or stopped) and moves it
  // to migrating-out; the returned generation is the migration's fencing token.
  // *before: the state it left (where an abort returns it).
  Result<VmRecord> BeginMigrationOut(const std::string& vm, bool cold, VmState* before);
  // The swtpm state files of a VM that is not running (cold migration).
  Result<std::map<std::string, std::string>> ReadTpmState(const std::string& uuid) const;
  // Source, commit: fences a live instance (its QEMU session ends, no INIT or state export for
  // the rest of its life). Idempotent.
  Status FenceOutgoing(const std::string& uuid, uint64_t generation);
  // Source: true if uuid's instance lives and was never fenced (a fenced instance stays fenced
  // until it ends, and no instance of a migrating-out VM is started), so no commit can have
  // activated the destination; false if it is fenced or gone.
  Result<bool> OutgoingInstanceUnfenced(const std::string& uuid) const;
  // Source, commit: stops the instance, revokes the certificates, destroys state and keys and
  // leaves the tombstone, in that order.
  Status FinishMigrationOut(const std::string& uuid, uint64_t generation, const Tombstone& tombstone);
  // Source, abort: back to `before` (running only if its instance still runs, else failed).
  Result<VmRecord> AbortMigrationOut(const std::string& uuid, uint64_t generation, VmState before);
  // Destination: records the VM as incoming; cold: writes its state; live: starts an incoming
  // instance that admits only this migration's state.
  Result<VmRecord> ReceiveIncoming(const IncomingVm& vm);
  // Destination, commit: incoming -> running (live; refused until the state arrived) or stopped,
  // and migration_id received -> committed, in one transaction.
  Result<VmRecord> CommitIncoming(const std::string& uuid, bool live, const std::string& migration_id);
  // Destination, abort: ends the incoming instance and destroys what arrived.
  Status AbortIncoming(const std::string& uuid);
  // Whether the incoming instance of uuid has received the vTPM's permanent state.
  Result<bool> IncomingStateReceived(const std::string& uuid) const;

 private:
  // This process's claim on one VM for the length of an operation; released on destruction.
  using VmClaim = Claims::Claim;
  // A claimed VM as read after the claim (its generation is the token for the first
  // transition).
  struct OwnedVm {
    VmClaim claim;
    VmRecord record;
  };
  Result<VmClaim> Claim(const std::string& uuid);
  // Resolves a UUID or name, claims the VM and reads it.
  Result<OwnedVm> ClaimVm(const std::string& vm);

  void OnInstanceExit(const std::string& uuid, const std::string& how);
  // Removes a VM's files and row (its certificates are revoked), if the VM is still at
  // generation. For delete and for undoing an incomplete create.
  Status Destroy(const std::string& uuid, uint64_t generation, const std::optional<Tombstone>& tombstone = std::nullopt);
  // The launch of uuid's instance (keys unwrapped), as Start and an incoming migration run it.
  Result<InstanceLaunch> LaunchFor(const VmRecord& rec) const;
  Status WritePendingCertificates(const VmRecord& rec, const InstanceLaunch& launch);
  // kFailedPrecondition, saying what to do, if rec's state files differ from its recorded digest.
  Status CheckStateDigest(const VmRecord& rec) const;
  // Creates (or repairs) a VM's directories with their modes and owners.
  Status MakeVmDirs(const VmPaths& paths, uint32_t uid) const;
  // An adopted instance made its tpm.sock for the QEMU user of the vtmd that started it; when
  // that setting changed since, QEMU could not connect. Gives the socket to the current one.
  Status CorrectSocketOwner(const VmRecord& rec) const;

  ManagerConfig config_;
  Registry& registry_;
  const MasterKey& master_key_;
  // Measures what will run for rec (InstanceLaunch) into the host PCR, before it runs.
  Status MeasureLaunch(const VmRecord& rec, const InstanceLaunch& launch);

  VtpmProvisioner* provisioner_;
  HostMeasurementLog* measurements_;
  Claims claimed_;  // VM uuids an operation in this process owns
  // Last: its monitor thread calls OnInstanceExit, so it is destroyed (joined) first.
  InstanceSupervisor supervisor_;
};

// Checks a UUID in canonical 8-4-4-4-12 hex form (lower-cases it).
Result<std::string> NormalizeUuid(const std::string& text);
Result<std::string> GenerateUuid();
// Names: 1-64 characters of [A-Za-z0-9._-], not starting with '-'.
Status ValidateVmName(const std::string& name);

}  // namespace vtm
