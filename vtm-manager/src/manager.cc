// Lifecycle operations over the registry, the master key and the instance supervisor.
#include "manager.h"

#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <set>
#include <thread>

#include "instance_channel.h"
#include "vtm/crash_point.h"
#include "vtm/digest.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/log.h"
#include "vtm/subprocess.h"

namespace vtm {
namespace {
constexpr size_t kKeyLen = 32;
constexpr const char* kStateKey = "state-key";
constexpr const char* kMigrationKey = "migration-key";

// True if pid is a vtm-instance serving uuid (guards against pid reuse after a reboot).
bool IsInstanceOf(Env& env, int64_t pid, const std::string& uuid) {
  if (pid <= 0 || !env.ProcessAlive(static_cast<pid_t>(pid))) return false;
  auto cmdline = env.ReadFile("/proc/" + std::to_string(pid) + "/cmdline");
  if (!cmdline.ok()) return false;
  return cmdline->find("vtm-instance") != std::string::npos && cmdline->find(uuid) != std::string::npos;
}

// The pid of the vtm-instance serving a VM, asked over its manager socket (only root reaches
// it, so the answer is the instance's own); 0 if none answers. Used where a crash came between
// spawning an instance and recording its pid.
int64_t InstancePidOf(const VmPaths& paths) {
  auto status = InstanceStatus(paths.manager_socket);
  return status.ok() ? status->pid() : 0;
}

// Rollback protection of a vTPM's state: SHA-256 over swtpm's state files in tpm_dir (regular
// files named tpm2-*, by name: each name, NUL, its SHA-256), as recorded in the registry. A
// missing directory holds no state files (a vTPM whose state was lost does not match its record).
Result<std::string> StateDigestOf(const std::string& tpm_dir) {
  std::error_code ec;
  std::vector<std::string> names;
  if (!std::filesystem::exists(tpm_dir, ec) && !ec) return Sha256Digest("");
  for (const auto& entry : std::filesystem::directory_iterator(tpm_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("tpm2-", 0) == 0 && entry.is_regular_file(ec)) names.push_back(name);
  }
  if (ec) return Error(ErrorCode::kIo, "listing " + tpm_dir + ": " + ec.message());
  std::sort(names.begin(), names.end());
  std::string all;
  for (const std::string& name : names) {
    std::string path = tpm_dir;
    path.append("/").append(name);
    VTM_ASSIGN_OR_RETURN(std::string digest, Sha256OfFile(path));
    all.append(name).append(1, '\0').append(digest);
  }
  return Sha256Digest(all);
}
}  // namespace

Result<std::string> NormalizeUuid(const std::string& text) {
  static constexpr int kGroups[] = {8, 4, 4, 4, 12};
  std::string out;
  size_t pos = 0;
  for (int g = 0; g < 5; ++g) {
    for (int i = 0; i < kGroups[g]; ++i, ++pos) {
      if (pos >= text.size() || !std::isxdigit(static_cast<unsigned char>(text[pos]))) {
        return Error(ErrorCode::kInvalidArgument, "'" + text + "' is not a UUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
      }
      out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(text[pos]))));
    }
    if (g < 4) {
      if (pos >= text.size() || text[pos] != '-') {
        return Error(ErrorCode::kInvalidArgument, "'" + text + "' is not a UUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
      }
      out.push_back('-');
      ++pos;
    }
  }
  if (pos != text.size()) return Error(ErrorCode::kInvalidArgument, "'" + text + "' is not a UUID");
  return out;
}

Result<std::string> GenerateUuid() {
  uint8_t b[16];
  if (RAND_bytes(b, sizeof b) != 1) return Error(ErrorCode::kInternal, "random UUID failed");
  b[6] = static_cast<uint8_t>((b[6] & 0x0f) | 0x40);
  b[8] = static_cast<uint8_t>((b[8] & 0x3f) | 0x80);
  char buf[37];
  snprintf(buf, sizeof buf, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
           b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  return std::string(buf);
}

Status ValidateVmName(const std::string& name) {
  if (name.empty() || name.size() > 64 || name[0] == '-') {
    return Error(ErrorCode::kInvalidArgument, "VM name must be 1-64 characters and not start with '-'");
  }
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return Error(ErrorCode::kInvalidArgument, "VM name '" + name + "' may only contain letters, digits, '.', '_' and '-'");
    }
  }
  return OkStatus();
}

Manager::Manager(ManagerConfig config, Registry& registry, const MasterKey& master_key,
                 const std::string& instance_binary, VtpmProvisioner* provisioner, HostMeasurementLog* measurements)
    : config_(std::move(config)),
      registry_(registry),
      master_key_(master_key),
      provisioner_(provisioner),
      measurements_(measurements),
      supervisor_(
          instance_binary, [this](const std::string& uuid, const std::string& how) { OnInstanceExit(uuid, how); },
          config_.env) {}

VmPaths Manager::PathsFor(const std::string& uuid) const {
  VmPaths p;
  p.vm_dir = config_.state_dir + "/vms/" + uuid;
  p.tpm_dir = p.vm_dir + "/tpm";
  p.log_dir = p.vm_dir + "/log";
  p.run_dir = config_.run_dir + "/vms/" + uuid;
  p.tpm_socket = p.run_dir + "/tpm.sock";
  p.manager_socket = config_.run_dir + "/manager/" + uuid + ".sock";
  p.provisioning_record = p.vm_dir + "/provisioning-swtpm.process";
  return p;
}

Result<Manager::VmClaim> Manager::Claim(const std::string& uuid) {
  std::optional<VmClaim> claim = claimed_.Try(uuid);
  if (!claim) {
    return Error(ErrorCode::kFailedPrecondition, "another operation on the vTPM of VM " + uuid +
                                                     " is in progress; try again when it has finished");
  }
  return std::move(*claim);
}

Result<Manager::OwnedVm> Manager::ClaimVm(const std::string& vm) {
  VTM_ASSIGN_OR_RETURN(VmRecord named, registry_.Get(vm));
  VTM_ASSIGN_OR_RETURN(VmClaim claim, Claim(named.uuid));
  // Read again under the claim: what was read before it may be stale.
  VTM_ASSIGN_OR_RETURN(VmRecord rec, registry_.Get(named.uuid));
  return OwnedVm{std::move(claim), std::move(rec)};
}

Result<VmRecord> Manager::Create(const std::string& uuid_in, const std::string& name_in, const std::string& service) {
  std::string uuid;
  if (uuid_in.empty()) {
    VTM_ASSIGN_OR_RETURN(uuid, GenerateUuid());
  } else {
    VTM_ASSIGN_OR_RETURN(uuid, NormalizeUuid(uuid_in));
  }
  std::string name = name_in.empty() ? uuid : name_in;
  VTM_RETURN_IF_ERROR(ValidateVmName(name));
  if (name != uuid && NormalizeUuid(name).ok()) {
    return Error(ErrorCode::kInvalidArgument, "a VM name may not look like a UUID");
  }
  if (!service.empty() && !ValidateVmName(service).ok()) {
    return Error(ErrorCode::kInvalidArgument,
                 "service name '" + service + "' must be 1-64 letters, digits, '.', '_' or '-'");
  }
  VTM_ASSIGN_OR_RETURN(VmClaim claim, Claim(uuid));

  VmRecord rec;
  rec.uuid = uuid;
  rec.name = name;
  rec.service = service;
  rec.state = VmState::kDefined;
  SecretBytes state_key, migration_key;
  {
    VTM_ASSIGN_OR_RETURN(state_key, RandomSecret(kKeyLen));
    VTM_ASSIGN_OR_RETURN(migration_key, RandomSecret(kKeyLen));
    VTM_ASSIGN_OR_RETURN(rec.wrapped_state_key, master_key_.Wrap(state_key, WrapLabel(uuid, kStateKey)));
    VTM_ASSIGN_OR_RETURN(rec.wrapped_migration_key, master_key_.Wrap(migration_key, WrapLabel(uuid, kMigrationKey)));
  }
  // The binding is committed first, as `defined`; a crash before `provisioned` is undone by
  // Reconcile, so a half-provisioned vTPM is never started.
  VTM_RETURN_IF_ERROR(registry_.Insert(&rec, config_.instance_uid_base, config_.instance_uid_count));
  CrashPoint("create.defined-recorded");
  VmPaths paths = PathsFor(uuid);
  Status dirs = MakeVmDirs(paths, rec.instance_uid);
  if (!dirs.ok()) {
    (void)Destroy(uuid, rec.generation);
    return std::move(dirs).error().Context("creating the directories of VM " + uuid);
  }
  CrashPoint("create.directories-made");
  if (provisioner_ != nullptr) {
    // Certificates are recorded as they are issued, so Destroy revokes any a failed
    // provisioning left behind.
    auto provisioned = provisioner_->Provision(rec, paths, state_key, migration_key);
    Status recorded = provisioned.ok() ? registry_.SetVtpmIdentity(uuid, provisioned->identity)
                                       : Status(provisioned.error());
    if (!recorded.ok()) {
      (void)Destroy(uuid, rec.generation);
      return std::move(recorded).error().Context("provisioning the vTPM of VM " + uuid);
    }
  }
  auto digest = StateDigestOf(paths.tpm_dir);
  if (!digest.ok()) {
    (void)Destroy(uuid, rec.generation);
    return std::move(digest).error().Context("recording the vTPM state of VM " + uuid);
  }
  auto provisioned = registry_.Transition(uuid, rec.generation, {VmState::kDefined}, VmState::kProvisioned,
                                          std::nullopt, std::nullopt, *digest);
  if (!provisioned.ok()) return std::move(provisioned).error().Context("recording the creation of VM " + uuid);
  CrashPoint("create.provisioned-recorded");
  LOG_INFO << "created vTPM for VM " << uuid << " (" << name << "), instance uid " << rec.instance_uid;
  return provisioned;
}

Result<VmRecord> Manager::Start(const std::string& vm, std::string* note) {
  VTM_ASSIGN_OR_RETURN(OwnedVm owned, ClaimVm(vm));
  const VmRecord& rec = owned.record;
  const std::string& uuid = rec.uuid;
  if (rec.state == VmState::kRunning) {
    if (note != nullptr) {
      *note = "the vTPM of VM " + uuid + " was already running (vtm-instance pid " +
              std::to_string(rec.instance_pid) + "); nothing changed";
    }
    return rec;
  }
  if (rec.state == VmState::kStarting) {
    return Error(ErrorCode::kFailedPrecondition, "the vTPM of VM " + uuid + " is already " + VmStateName(rec.state) +
                                                     " (vtm-instance pid " + std::to_string(rec.instance_pid) +
                                                     "); its socket is " + PathsFor(uuid).tpm_socket);
  }
  VTM_RETURN_IF_ERROR(CheckStateDigest(rec));
  // From here the state changes: its digest is unknown until the next clean stop.
  auto moved = registry_.Transition(uuid, rec.generation, {VmState::kProvisioned, VmState::kStopped, VmState::kFailed},
                                    VmState::kStarting, 0, "", "");
  if (!moved.ok()) {
    return std::move(moved).error().Context("cannot start the vTPM of VM " + uuid);
  }
  const uint64_t generation = moved->generation;
  CrashPoint("start.starting-recorded");
  auto fail = [&](Error err) -> Error {
    (void)registry_.Transition(uuid, generation, {VmState::kStarting}, VmState::kFailed, 0, err.message());
    return std::move(err).Context("starting the vTPM of VM " + uuid);
  };

  VmPaths paths = PathsFor(uuid);
  auto launch_or = LaunchFor(rec);
  if (!launch_or.ok()) return fail(std::move(launch_or).error());
  InstanceLaunch launch = std::move(launch_or).value();

  if (Status dirs = MakeVmDirs(paths, rec.instance_uid); !dirs.ok()) return fail(std::move(dirs).error());
  CrashPoint("start.directories-made");
  // A VM that arrived by migration gets this host's certificates into its NV before any guest
  // can read them.
  if (Status written = WritePendingCertificates(rec, launch); !written.ok()) return fail(std::move(written).error());

  // Measured before it runs: a launch that cannot be measured does not happen.
  if (Status measured = MeasureLaunch(*moved, launch); !measured.ok()) return fail(std::move(measured).error());
  auto pid = supervisor_.Launch(launch, config_.ready_timeout);
  if (!pid.ok()) return fail(std::move(pid).error());
  CrashPoint("start.instance-ready");
  // Fails if the instance died after READY and the monitor recorded it (it won the
  // generation): then the start failed.
  auto running = registry_.Transition(uuid, generation, {VmState::kStarting}, VmState::kRunning, *pid, "");
  if (!running.ok()) {
    (void)supervisor_.Stop(uuid, config_.stop_grace);
    return std::move(running).error().Context("recording the start of VM " + uuid);
  }
  CrashPoint("start.running-recorded");
  LOG_INFO << "started vTPM for VM " << uuid << ": vtm-instance pid " << *pid << ", socket " << paths.tpm_socket;
  return running;
}

Result<InstanceLaunch> Manager::LaunchFor(const VmRecord& rec) const {
  VmPaths paths = PathsFor(rec.uuid);
  InstanceLaunch launch;
  launch.config.vm_uuid = rec.uuid;
  launch.config.tpm_state_dir = paths.tpm_dir;
  launch.config.run_dir = paths.run_dir;
  launch.config.log_dir = paths.log_dir;
  launch.config.uid = launch.config.gid = rec.instance_uid;
  launch.config.socket_uid = config_.socket_uid;
  launch.config.socket_gid = config_.socket_gid;
  if (!config_.swtpm_binary.empty()) launch.config.swtpm_path = config_.swtpm_binary;
  launch.config.manager_socket = paths.manager_socket;
  launch.config.peer_check = config_.qemu_peer_check;
  VTM_ASSIGN_OR_RETURN(VmSecrets keys, UnwrapKeys(rec));
  launch.state_key = std::move(keys.state_key);
  launch.migration_key = std::move(keys.migration_key);
  return launch;
}

Result<VmSecrets> Manager::UnwrapKeys(const VmRecord& rec) const {
  VmSecrets keys;
  VTM_ASSIGN_OR_RETURN(keys.state_key, master_key_.Unwrap(rec.wrapped_state_key, WrapLabel(rec.uuid, kStateKey)));
  VTM_ASSIGN_OR_RETURN(keys.migration_key,
                       master_key_.Unwrap(rec.wrapped_migration_key, WrapLabel(rec.uuid, kMigrationKey)));
  return keys;
}

Status Manager::WritePendingCertificates(const VmRecord& rec, const InstanceLaunch& launch) {
  if (!rec.nv_certificates_pending || provisioner_ == nullptr) return OkStatus();
  VTM_ASSIGN_OR_RETURN(auto all, registry_.CertificatesOf(rec.uuid));
  std::vector<CertRecord> valid;
  for (auto& c : all) {
    if (c.revoked_at.empty()) valid.push_back(std::move(c));
  }
  Status written = provisioner_->WriteCertificates(rec, PathsFor(rec.uuid), launch.state_key, launch.migration_key, valid);
  if (!written.ok()) return std::move(written).error().Context("writing this host's certificates into its vTPM");
  CrashPoint("start.certificates-written");
  VTM_RETURN_IF_ERROR(registry_.SetNvCertificatesPending(rec.uuid, false));
  LOG_INFO << "VM " << rec.uuid << ": wrote " << valid.size() << " certificates of this host's CA into its vTPM's NV";
  return OkStatus();
}

Status Manager::MeasureLaunch(const VmRecord& rec, const InstanceLaunch& launch) {
  if (measurements_ == nullptr) return OkStatus();
  attest::InstanceLaunch m;
  m.set_vm_uuid(rec.uuid);
  m.set_generation(rec.generation);
  const std::string swtpm = launch.config.swtpm_path.find('/') == std::string::npos ? FindProgram(launch.config.swtpm_path)
                                                                                   : launch.config.swtpm_path;
  VTM_ASSIGN_OR_RETURN(std::string swtpm_digest, Sha256OfFile(swtpm));
  VTM_ASSIGN_OR_RETURN(std::string instance_digest, Sha256OfFile(supervisor_.instance_binary()));
  m.set_swtpm_sha256(swtpm_digest);
  m.set_vtm_instance_sha256(instance_digest);
  // The command line carries paths, uids and flags, never keys (those travel by pipe); NUL
  // separates arguments so no two command lines hash alike.
  std::string cmdline;
  for (const std::string& arg : supervisor_.CommandLine(launch)) cmdline += arg + '\0';
  m.set_launch_config_sha256(Sha256Digest(cmdline));
  m.set_ek_name(rec.vtpm.ek_name);
  m.set_ak_name(rec.vtpm.ak_name);
  m.set_ek_rsa_name(rec.vtpm.ek_rsa_name);
  return measurements_->Measure(attest::MEASUREMENT_TYPE_INSTANCE_LAUNCH, m.SerializeAsString());
}

Result<bool> Manager::QemuAttached(const std::string& uuid) const {
  VTM_ASSIGN_OR_RETURN(instance_api::StatusResponse status, InstanceStatus(PathsFor(uuid).manager_socket));
  return status.qemu_attached();
}

Result<VmRecord> Manager::Stop(const std::string& vm, bool force, std::string* note) {
  VTM_ASSIGN_OR_RETURN(OwnedVm owned, ClaimVm(vm));
  const VmRecord& rec = owned.record;
  const std::string& uuid = rec.uuid;
  if (rec.state == VmState::kFailed) {
    // The instance is already gone; stopping acknowledges the failure.
    return registry_.Transition(uuid, rec.generation, {VmState::kFailed}, VmState::kStopped, 0);
  }
  if (rec.state == VmState::kProvisioned || rec.state == VmState::kStopped) {
    if (note != nullptr) *note = "the vTPM of VM " + uuid + " was not running; nothing changed";
    return rec;
  }
  if (rec.state != VmState::kRunning) {
    return Error(ErrorCode::kFailedPrecondition, "the vTPM of VM " + uuid + " is " + VmStateName(rec.state) +
                                                     "; try again when that has finished");
  }
  if (!force) {
    // A QEMU that has just exited (libvirt's `release` follows right after) may still show
    // for a moment until the instance sees the hang-up.
    auto attached = QemuAttached(uuid);
    for (int i = 0; i < 20 && attached.ok() && *attached; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      attached = QemuAttached(uuid);
    }
    if (!attached.ok()) {
      return std::move(attached).error().Context("asking the instance of VM " + uuid +
                                                 " whether a QEMU uses it (`vtmctl stop --force " + uuid +
                                                 "` stops it regardless)");
    }
    if (*attached) {
      return Error(ErrorCode::kFailedPrecondition,
                   "a QEMU is attached to the vTPM of VM " + uuid + " (" + PathsFor(uuid).tpm_socket +
                       "): stopping it would take the TPM away from the running guest. Shut the VM down first "
                       "(virsh shutdown/destroy), or use `vtmctl stop --force " + uuid + "`");
    }
  }
  auto stopping = registry_.Transition(uuid, rec.generation, {VmState::kRunning}, VmState::kStopping);
  if (!stopping.ok()) return std::move(stopping).error().Context("cannot stop the vTPM of VM " + uuid);
  CrashPoint("stop.stopping-recorded");
  Status stopped = supervisor_.Stop(uuid, config_.stop_grace);
  if (!stopped.ok()) {
    (void)registry_.Transition(uuid, stopping->generation, {VmState::kStopping}, VmState::kFailed, std::nullopt,
                               stopped.error().message());
    return std::move(stopped).error().Context("stopping the vTPM of VM " + uuid);
  }
  CrashPoint("stop.instance-stopped");
  LOG_INFO << "stopped vTPM for VM " << uuid;
  // The state at rest, as the next start must find it (unknown if it cannot be read).
  auto digest = StateDigestOf(PathsFor(uuid).tpm_dir);
  if (!digest.ok())
    LOG_WARNING << "VM " << uuid << ": " << digest.error().message() << "; its state digest stays unknown";
  auto done = registry_.Transition(uuid, stopping->generation, {VmState::kStopping}, VmState::kStopped, 0, std::nullopt,
                                   digest.ok() ? *digest : std::string());
  if (done.ok()) CrashPoint("stop.stopped-recorded");
  return done;
}

Status Manager::Delete(const std::string& vm) {
  VTM_ASSIGN_OR_RETURN(OwnedVm owned, ClaimVm(vm));
  const VmRecord& rec = owned.record;
  const std::string& uuid = rec.uuid;
  if (rec.state == VmState::kRunning || rec.state == VmState::kStarting || rec.state == VmState::kStopping) {
    return Error(ErrorCode::kFailedPrecondition, "the vTPM of VM " + uuid + " is " + VmStateName(rec.state) +
                                                     "; stop it first with `vtmctl stop " + uuid + "`");
  }
  // `deleting` or `defined` with the claim won: an earlier deletion or an undone create
  // failed half-way (nobody else is at it); this one finishes it.
  auto deleting = registry_.Transition(uuid, rec.generation,
                                       {VmState::kProvisioned, VmState::kStopped, VmState::kFailed,
                                        VmState::kDeleting, VmState::kDefined},
                                       VmState::kDeleting);
  if (!deleting.ok()) return std::move(deleting).error().Context("cannot delete the vTPM of VM " + uuid);
  CrashPoint("delete.deleting-recorded");
  VTM_RETURN_IF_ERROR(Destroy(uuid, deleting->generation));
  LOG_INFO << "deleted vTPM for VM " << uuid << ": state and keys destroyed, certificates revoked";
  return OkStatus();
}

Status Manager::MakeVmDirs(const VmPaths& paths, uint32_t uid) const {
  // Every level above a VM's own directories must be traversable by its uid. Start makes them
  // again, so a VM whose directories were lost recovers them (the keys are in the registry).
  Env& env = *config_.env;
  const bool made_before = env.PathExists(paths.tpm_dir) && env.PathExists(paths.log_dir);
  VTM_RETURN_IF_ERROR(env.MakeDir(config_.run_dir + "/vms", 0711, 0, 0));
  // Instances' manager sockets: root only, apart from the per-VM dirs their uids own.
  VTM_RETURN_IF_ERROR(env.MakeDir(config_.run_dir + "/manager", 0700, 0, 0));
  VTM_RETURN_IF_ERROR(env.MakeDir(config_.state_dir + "/vms", 0711, 0, 0));
  VTM_RETURN_IF_ERROR(env.MakeDir(paths.vm_dir, 0711, 0, 0));
  VTM_RETURN_IF_ERROR(env.MakeDir(paths.tpm_dir, 0700, uid, uid));
  VTM_RETURN_IF_ERROR(env.MakeDir(paths.log_dir, 0700, uid, uid));
  // The names just made must survive a power cut as the registry row does (SQLite syncs it):
  // else a VM could be provisioned, or a cold migration committed, with its state directory
  // gone. Files written into tpm_dir sync tpm_dir themselves (WriteFileAtomic; swtpm). Only
  // when something was made: a directory fsync costs milliseconds on a busy disk, and most
  // starts find the directories there.
  if (made_before) return OkStatus();
  VTM_RETURN_IF_ERROR(env.SyncDir(config_.state_dir));
  VTM_RETURN_IF_ERROR(env.SyncDir(config_.state_dir + "/vms"));
  return env.SyncDir(paths.vm_dir);
}

Status Manager::CorrectSocketOwner(const VmRecord& rec) const {
  const VmPaths paths = PathsFor(rec.uuid);
  struct stat st;
  if (::stat(paths.tpm_socket.c_str(), &st) != 0) return ErrnoError("inspecting " + paths.tpm_socket);
  if (st.st_uid == config_.socket_uid && st.st_gid == config_.socket_gid) return OkStatus();
  if (::chown(paths.tpm_socket.c_str(), config_.socket_uid, config_.socket_gid) != 0) {
    return ErrnoError("giving " + paths.tpm_socket + " to the QEMU user (uid " + std::to_string(config_.socket_uid) + ")");
  }
  // vtm-instance makes its run dir 0711 only when QEMU runs as a uid of its own; a QEMU user
  // other than root and the instance's uid must be able to reach the socket through it.
  if (config_.socket_uid != 0 && config_.socket_uid != rec.instance_uid &&
      ::chmod(paths.run_dir.c_str(), 0711) != 0) {
    return ErrnoError("letting the QEMU user reach " + paths.run_dir);
  }
  LOG_WARNING << "VM " << rec.uuid << ": " << paths.tpm_socket << " belonged to uid " << st.st_uid << " gid "
              << st.st_gid << " (the QEMU user of the vtmd that started it); corrected to uid " << config_.socket_uid
              << " gid " << config_.socket_gid << " (--qemu-user changed)";
  return OkStatus();
}

Status Manager::Destroy(const std::string& uuid, uint64_t generation, const std::optional<Tombstone>& tombstone) {
  // Revoked first: if anything below fails, the identity is already dead.
  auto revoked = registry_.RevokeCertificatesOf(uuid);
  if (!revoked.ok()) return std::move(revoked).error();
  CrashPoint("destroy.certificates-revoked");
  VmPaths paths = PathsFor(uuid);
  // A create interrupted by a crash may have left its provisioning swtpm running.
  auto ended = config_.env->EndRecordedProcess(paths.provisioning_record);
  if (!ended.ok()) return std::move(ended).error();
  if (*ended > 0) LOG_WARNING << "ended the provisioning swtpm (pid " << *ended << ") of VM " << uuid;
  const bool had_dir = config_.env->PathExists(paths.vm_dir);
  VTM_RETURN_IF_ERROR(config_.env->RemoveTree(paths.vm_dir));
  // Durable before the row goes, or a power cut could bring back a directory no row owns.
  if (had_dir) VTM_RETURN_IF_ERROR(config_.env->SyncDir(config_.state_dir + "/vms"));
  CrashPoint("destroy.state-removed");
  VTM_RETURN_IF_ERROR(config_.env->RemoveTree(paths.run_dir));
  VTM_RETURN_IF_ERROR(config_.env->RemoveFile(paths.manager_socket));
  // Removing the row destroys the only (wrapped) copies of the VM's keys.
  return registry_.Remove(uuid, generation, tombstone);
}

Result<std::vector<CertRecord>> Manager::Certificates(const std::string& vm) {
  VTM_ASSIGN_OR_RETURN(VmRecord rec, registry_.Get(vm));
  return registry_.CertificatesOf(rec.uuid);
}

Result<std::vector<CertRecord>> Manager::RenewCertificates(const std::string& vm) {
  if (provisioner_ == nullptr) return Error(ErrorCode::kFailedPrecondition, "this vtmd creates vTPMs without identity");
  VTM_ASSIGN_OR_RETURN(OwnedVm owned, ClaimVm(vm));
  const VmRecord& rec = owned.record;
  if (rec.state != VmState::kProvisioned && rec.state != VmState::kStopped && rec.state != VmState::kRunning &&
      rec.state != VmState::kFailed) {
    return Error(ErrorCode::kFailedPrecondition, "the vTPM of VM " + rec.uuid + " is " + VmStateName(rec.state) +
                                                     "; its certificates can be renewed once it is at rest or running");
  }
  VTM_ASSIGN_OR_RETURN(std::vector<CertRecord> issued, provisioner_->Reissue(rec));
  CrashPoint("renew.issued");
  std::set<uint64_t> keep;
  for (const auto& c : issued) keep.insert(c.serial);
  VTM_RETURN_IF_ERROR(registry_.SupersedeCertificates(rec.uuid, keep));
  LOG_INFO << "VM " << rec.uuid << ": " << issued.size() << " certificates renewed, the old ones revoked; the new ones "
           << "reach the vTPM's NV at its next start";
  return issued;
}

Result<std::vector<VmRecord>> Manager::List() { return registry_.List(); }

Result<VmRecord> Manager::Show(const std::string& vm) { return registry_.Get(vm); }

void Manager::OnInstanceExit(const std::string& uuid, const std::string& how) {
  std::string log = PathsFor(uuid).log_dir;
  // `starting` too: an instance can die between READY and Start() recording it as running;
  // this transition then takes the generation from Start(), whose own transition fails and
  // reports it. The monitor owns nothing: it retries on the generation it reads while the VM
  // is still in a state whose instance could have been this one.
  const std::set<VmState> live = {VmState::kRunning, VmState::kStarting};
  std::string message = "vtm-instance " + how + " unexpectedly; see " + log + "/instance.log and ";
  message += log + "/swtpm.log";
  for (int attempt = 0; attempt < 5; ++attempt) {
    auto rec = registry_.Get(uuid);
    if (!rec.ok() || !live.count(rec->state)) return;
    auto r = registry_.Transition(uuid, rec->generation, live, VmState::kFailed, 0, message);
    if (r.ok()) return;
    if (r.error().code() != ErrorCode::kFailedPrecondition) {
      LOG_WARNING << "recording the exit of VM " << uuid << ": " << r.error().message();
      return;
    }
  }
}

Result<VmRecord> Manager::BeginMigrationOut(const std::string& vm, bool cold, VmState* before) {
  VTM_ASSIGN_OR_RETURN(OwnedVm owned, ClaimVm(vm));
  const VmRecord& rec = owned.record;
  const std::set<VmState> can_leave =
      cold ? std::set<VmState>{VmState::kProvisioned, VmState::kStopped} : std::set<VmState>{VmState::kRunning};
  if (rec.state == VmState::kMigratingOut) {
    return Error(ErrorCode::kFailedPrecondition, "the vTPM of VM " + rec.uuid +
                                                     " is being migrated already: `vtmctl migrate status` shows the "
                                                     "open migration (commit or abort it first)");
  }
  if (!can_leave.count(rec.state)) {
    return Error(ErrorCode::kFailedPrecondition,
                 "the vTPM of VM " + rec.uuid + " is " + VmStateName(rec.state) + "; " +
                     (cold ? "a cold migration moves a stopped vTPM (`vtmctl stop` it first, or migrate it live)"
                           : "a live migration moves a running vTPM (use --cold for a stopped one)"));
  }
  *before = rec.state;
  auto moved = registry_.Transition(rec.uuid, rec.generation, can_leave, VmState::kMigratingOut);
  if (!moved.ok()) return std::move(moved).error().Context("cannot migrate the vTPM of VM " + rec.uuid);
  CrashPoint("migrate.source-migrating-out");
  return moved;
}

Result<std::map<std::string, std::string>> Manager::ReadTpmState(const std::string& uuid) const {
  std::map<std::string, std::string> files;
  const std::string dir = PathsFor(uuid).tpm_dir;
  auto names = config_.env->ListFiles(dir);
  if (!names.ok()) return std::move(names).error().Context("reading the vTPM state of VM " + uuid);
  for (const std::string& name : *names) {
    if (name.rfind("tpm2-", 0) != 0) continue;  // swtpm's state files; not its lock
    std::string path = dir;
    path.append("/").append(name);
    VTM_ASSIGN_OR_RETURN(files[name], config_.env->ReadFile(path));
  }
  if (!files.count("tpm2-00.permall")) {
    return Error(ErrorCode::kFailedPrecondition, "the vTPM of VM " + uuid + " has no permanent state in " + dir);
  }
  return files;
}

Status Manager::FenceOutgoing(const std::string& uuid, uint64_t generation) {
  VTM_ASSIGN_OR_RETURN(VmClaim claim, Claim(uuid));
  VTM_ASSIGN_OR_RETURN(VmRecord rec, registry_.Get(uuid));
  if (rec.state != VmState::kMigratingOut || rec.generation != generation) {
    return Error(ErrorCode::kFailedPrecondition, "VM " + uuid + " is " + VmStateName(rec.state) + " at generation " +
                                                     std::to_string(rec.generation) + ", not the migrating-out generation " +
                                                     std::to_string(generation));
  }
  if (!IsInstanceOf(*config_.env, rec.instance_pid, uuid)) return OkStatus();  // cold, or already gone: nothing can run it
  return FenceInstance(PathsFor(uuid).manager_socket, "migration of VM " + uuid + " is committing");
}

Result<bool> Manager::OutgoingInstanceUnfenced(const std::string& uuid) const {
  VTM_ASSIGN_OR_RETURN(VmRecord rec, registry_.Get(uuid));
  if (rec.state != VmState::kMigratingOut || !IsInstanceOf(*config_.env, rec.instance_pid, uuid)) return false;
  VTM_ASSIGN_OR_RETURN(instance_api::StatusResponse status, InstanceStatus(PathsFor(uuid).manager_socket));
  return status.mode() != instance_api::MODE_FENCED;
}

Status Manager::FinishMigrationOut(const std::string& uuid, uint64_t generation, const Tombstone& tombstone) {
  VTM_ASSIGN_OR_RETURN(VmClaim claim, Claim(uuid));
  VTM_ASSIGN_OR_RETURN(VmRecord rec, registry_.Get(uuid));
  if (rec.state != VmState::kMigratingOut || rec.generation != generation) {
    return Error(ErrorCode::kFailedPrecondition, "VM " + uuid + " is " + VmStateName(rec.state) +
                                                     " at generation " + std::to_string(rec.generation) +
                                                     "; the migration does not own it");
  }
  if (rec.instance_pid > 0 && IsInstanceOf(*config_.env, rec.instance_pid, uuid)) {
    if (!supervisor_.Watching(uuid)) VTM_RETURN_IF_ERROR(supervisor_.Adopt(uuid, static_cast<pid_t>(rec.instance_pid)));
    VTM_RETURN_IF_ERROR(supervisor_.Stop(uuid, config_.stop_grace));
  }
  CrashPoint("migrate.source-instance-stopped");
  VTM_RETURN_IF_ERROR(Destroy(uuid, generation, tombstone));
  LOG_INFO << "VM " << uuid << " migrated to " << tombstone.destination << " (migration " << tombstone.migration_id
           << "): its state and keys here are destroyed, its certificates revoked, a tombstone kept";
  return OkStatus();
}

Result<VmRecord> Manager::AbortMigrationOut(const std::string& uuid, uint64_t generation, VmState before) {
  VTM_ASSIGN_OR_RETURN(VmClaim claim, Claim(uuid));
  VTM_ASSIGN_OR_RETURN(VmRecord rec, registry_.Get(uuid));
  if (rec.state != VmState::kMigratingOut) return rec;  // already back (a repeated abort)
  VmState to = before;
  std::string error;
  if (before == VmState::kRunning && !IsInstanceOf(*config_.env, rec.instance_pid, uuid)) {
    to = VmState::kFailed;
    error = "vtm-instance ended while the VM was migrating out";
  }
  auto back = registry_.Transition(uuid, generation, {VmState::kMigratingOut}, to, std::nullopt,
                                   error.empty() ? std::nullopt : std::optional<std::string>(error));
  if (back.ok() && to == VmState::kRunning && !supervisor_.Watching(uuid)) {
    (void)supervisor_.Adopt(uuid, static_cast<pid_t>(rec.instance_pid));
  }
  return back;
}

namespace {
// swtpm's state file names: a package must not write anywhere else.
bool IsTpmStateFileName(const std::string& name) {
  if (name.rfind("tpm2-", 0) != 0 || name.size() > 64) return false;
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_') return false;
  }
  return name.find("..") == std::string::npos;
}
}  // namespace

Result<VmRecord> Manager::ReceiveIncoming(const IncomingVm& vm) {
  VTM_ASSIGN_OR_RETURN(std::string uuid, NormalizeUuid(vm.uuid));
  VTM_RETURN_IF_ERROR(ValidateVmName(vm.name));
  for (const auto& [name, bytes] : vm.state_files) {
    if (!IsTpmStateFileName(name)) {
      return Error(ErrorCode::kInvalidArgument, "the package names a state file '" + name + "' that is not swtpm's");
    }
  }
  if (!vm.live && !vm.state_files.count("tpm2-00.permall")) {
    return Error(ErrorCode::kInvalidArgument, "the cold package carries no permanent vTPM state (tpm2-00.permall)");
  }
  VTM_ASSIGN_OR_RETURN(VmClaim claim, Claim(uuid));
  VmRecord rec;
  rec.uuid = uuid;
  rec.name = vm.name;
  rec.service = vm.service;
  rec.state = VmState::kIncoming;
  rec.generation = vm.generation;
  rec.nv_certificates_pending = true;
  VTM_ASSIGN_OR_RETURN(rec.wrapped_state_key, master_key_.Wrap(vm.keys.state_key, WrapLabel(uuid, kStateKey)));
  VTM_ASSIGN_OR_RETURN(rec.wrapped_migration_key, master_key_.Wrap(vm.keys.migration_key, WrapLabel(uuid, kMigrationKey)));
  VTM_RETURN_IF_ERROR(registry_.Insert(&rec, config_.instance_uid_base, config_.instance_uid_count));
  CrashPoint("migrate.destination-incoming-recorded");
  rec.vtpm = vm.identity;
  auto undo = [&](Error e) -> Error {
    (void)supervisor_.Stop(uuid, config_.stop_grace);
    (void)Destroy(uuid, rec.generation);
    return std::move(e).Context("receiving VM " + uuid);
  };
  if (Status st = registry_.SetVtpmIdentity(uuid, vm.identity); !st.ok()) return undo(std::move(st).error());
  const VmPaths paths = PathsFor(uuid);
  if (Status st = MakeVmDirs(paths, rec.instance_uid); !st.ok()) return undo(std::move(st).error());
  for (const auto& [name, bytes] : vm.state_files) {
    const std::string path = paths.tpm_dir + "/" + name;
    Status st = config_.env->WriteFileAtomic(path, bytes, 0600);
    if (!st.ok()) return undo(std::move(st).error());
    st = config_.env->ChangeOwner(path, rec.instance_uid, rec.instance_uid);
    if (!st.ok()) return undo(std::move(st).error());
  }
  if (!vm.live) {
    LOG_INFO << "VM " << uuid << " arrives (cold, migration " << vm.migration_id << "): state written, not active";
    return rec;
  }
  auto launch = LaunchFor(rec);
  if (!launch.ok()) return undo(std::move(launch).error());
  launch->config.incoming = true;
  if (Status measured = MeasureLaunch(rec, *launch); !measured.ok()) return undo(std::move(measured).error());
  auto pid = supervisor_.Launch(*launch, config_.ready_timeout);
  if (!pid.ok()) return undo(std::move(pid).error());
  CrashPoint("migrate.destination-instance-ready");
  auto recorded = registry_.Transition(uuid, rec.generation, {VmState::kIncoming}, VmState::kIncoming, *pid);
  if (!recorded.ok()) return undo(std::move(recorded).error());
  if (Status admitted = AdmitIncoming(paths.manager_socket, vm.migration_id, vm.generation); !admitted.ok()) {
    Error e = std::move(admitted).error();
    (void)supervisor_.Stop(uuid, config_.stop_grace);
    (void)Destroy(uuid, recorded->generation);
    return std::move(e).Context("admitting migration " + vm.migration_id);
  }
  LOG_INFO << "VM " << uuid << " arrives (live, migration " << vm.migration_id << "): incoming instance pid " << *pid
           << " waits for QEMU's stream on " << paths.tpm_socket;
  return recorded;
}

Result<bool> Manager::IncomingStateReceived(const std::string& uuid) const {
  VTM_ASSIGN_OR_RETURN(instance_api::StatusResponse status, InstanceStatus(PathsFor(uuid).manager_socket));
  constexpr uint32_t kPermanentBlob = 1u << 1;  // PTM_BLOB_TYPE_PERMANENT
  // QEMU's post_load sends INIT after the last blob (the instance turns active): a QEMU that
  // died half-way through loading the state leaves the instance incoming.
  return (status.imported_blob_types() & kPermanentBlob) != 0 && status.mode() == instance_api::MODE_ACTIVE;
}

Result<VmRecord> Manager::CommitIncoming(const std::string& uuid, bool live, const std::string& migration_id) {
  VTM_ASSIGN_OR_RETURN(VmClaim claim, Claim(uuid));
  VTM_ASSIGN_OR_RETURN(VmRecord rec, registry_.Get(uuid));
  if (rec.state == (live ? VmState::kRunning : VmState::kStopped)) {
    // Committed already; a registry written before the two records moved together may have
    // the migration's own still to write.
    (void)registry_.UpdateMigration(migration_id, {"received"}, "committed");
    return rec;
  }
  if (rec.state != VmState::kIncoming) {
    return Error(ErrorCode::kFailedPrecondition, "VM " + uuid + " is " + VmStateName(rec.state) + ", not incoming");
  }
  if (live) {
    auto received = IncomingStateReceived(uuid);
    if (!received.ok()) return std::move(received).error().Context("asking the incoming instance of VM " + uuid);
    if (!*received) {
      return Error(ErrorCode::kFailedPrecondition,
                   "the incoming instance of VM " + uuid +
                       " has not received the vTPM state yet: commit only after QEMU's migration completed");
    }
  }
  // A cold arrival's state is at rest: its digest is what the first start must find.
  std::optional<std::string> digest;
  if (!live) {
    VTM_ASSIGN_OR_RETURN(digest, StateDigestOf(PathsFor(uuid).tpm_dir));
  }
  // One transaction (one fsync) for the VM and its migration: on a live migration the guest
  // waits for it.
  auto done = registry_.TransitionWithMigration(uuid, rec.generation, {VmState::kIncoming},
                                                live ? VmState::kRunning : VmState::kStopped, migration_id,
                                                {"received"}, "committed", digest);
  if (done.ok()) CrashPoint("migrate.destination-committed");
  return done;
}

Status Manager::AbortIncoming(const std::string& uuid) {
  VTM_ASSIGN_OR_RETURN(VmClaim claim, Claim(uuid));
  auto rec = registry_.Get(uuid);
  if (!rec.ok()) return rec.error().code() == ErrorCode::kNotFound ? OkStatus() : Status(std::move(rec).error());
  if (rec->state != VmState::kIncoming) {
    return Error(ErrorCode::kFailedPrecondition, "VM " + uuid + " is " + VmStateName(rec->state) +
                                                     " here: its migration committed and cannot be aborted");
  }
  if (rec->instance_pid > 0 && IsInstanceOf(*config_.env, rec->instance_pid, uuid)) {
    if (!supervisor_.Watching(uuid)) VTM_RETURN_IF_ERROR(supervisor_.Adopt(uuid, static_cast<pid_t>(rec->instance_pid)));
    VTM_RETURN_IF_ERROR(supervisor_.Stop(uuid, config_.stop_grace));
  } else if (int64_t pid = InstancePidOf(PathsFor(uuid)); pid > 0) {
    if (supervisor_.Adopt(uuid, static_cast<pid_t>(pid)).ok()) VTM_RETURN_IF_ERROR(supervisor_.Stop(uuid, config_.stop_grace));
  }
  VTM_RETURN_IF_ERROR(Destroy(uuid, rec->generation));
  LOG_INFO << "VM " << uuid << ": incoming migration aborted; its instance, state and keys here are destroyed";
  return OkStatus();
}

Status Manager::CheckStateDigest(const VmRecord& rec) const {
  if (rec.state_sha256.empty()) return OkStatus();  // not stopped cleanly: nothing to compare
  const std::string dir = PathsFor(rec.uuid).tpm_dir;
  VTM_ASSIGN_OR_RETURN(std::string now, StateDigestOf(dir));
  if (now == rec.state_sha256) return OkStatus();
  return Error(ErrorCode::kFailedPrecondition,
               "the vTPM state of VM " + rec.uuid + " in " + dir +
                   " is not the state vtmd recorded when it was last "
                   "at rest (SHA-256 " +
                   HexEncode(now) + ", recorded " + HexEncode(rec.state_sha256) +
                   "): an older copy was put back or it was changed outside vtmd, and a guest would see an earlier "
                   "TPM. vtmd does not start it. Put back the newest copy of that directory; to accept the state as it "
                   "is instead, restart vtmd once with --accept-vm-state-rollback " +
                   rec.uuid + " (see the operator guide)");
}

Result<std::string> Manager::AcceptStateRollback(const std::string& vm) {
  VTM_ASSIGN_OR_RETURN(OwnedVm owned, ClaimVm(vm));
  const VmRecord& rec = owned.record;
  if (rec.state != VmState::kStopped && rec.state != VmState::kProvisioned && rec.state != VmState::kFailed) {
    return Error(ErrorCode::kFailedPrecondition,
                 "VM " + rec.uuid + " is " + VmStateName(rec.state) + "; only a stopped vTPM's state can be accepted");
  }
  VTM_ASSIGN_OR_RETURN(std::string digest, StateDigestOf(PathsFor(rec.uuid).tpm_dir));
  VTM_RETURN_IF_ERROR(registry_.SetStateDigest(rec.uuid, rec.generation, digest));
  LOG_WARNING << "--accept-vm-state-rollback: ACCEPTED the vTPM state of VM " << rec.uuid << " as it is now (SHA-256 "
              << HexEncode(digest) << ", was recorded " << HexEncode(rec.state_sha256) << ")";
  return digest;
}

Status Manager::Reconcile() {
  VTM_ASSIGN_OR_RETURN(auto vms, registry_.List());
  for (const auto& rec : vms) {
    switch (rec.state) {
      case VmState::kRunning:
        if (IsInstanceOf(*config_.env, rec.instance_pid, rec.uuid)) {
          VTM_RETURN_IF_ERROR(supervisor_.Adopt(rec.uuid, static_cast<pid_t>(rec.instance_pid)));
          LOG_INFO << "adopted running vTPM of VM " << rec.uuid << " (pid " << rec.instance_pid << ")";
          if (Status owner = CorrectSocketOwner(rec); !owner.ok()) {
            LOG_WARNING << "VM " << rec.uuid << ": " << owner.error().message()
                        << "; QEMU may not be able to connect: stop and start the vTPM";
          }
        } else {
          (void)registry_.Transition(rec.uuid, rec.generation, {VmState::kRunning}, VmState::kFailed, 0,
                                     "vtm-instance ended while vtmd was not running");
          LOG_WARNING << "the vTPM of VM " << rec.uuid << " ended while vtmd was down; marked failed";
        }
        break;
      case VmState::kStarting:
      case VmState::kStopping:
        // Interrupted half-way: the instance's readiness or exit was never recorded. Leave no
        // unrecorded process behind.
        if (int64_t pid = InstancePidOf(PathsFor(rec.uuid)); pid > 0) {
          if (supervisor_.Adopt(rec.uuid, static_cast<pid_t>(pid)).ok()) {
            (void)supervisor_.Stop(rec.uuid, config_.stop_grace);
          }
        }
        (void)registry_.Transition(rec.uuid, rec.generation, {rec.state}, VmState::kStopped, 0,
                                   std::string("vtmd stopped while the vTPM was ") + VmStateName(rec.state));
        LOG_WARNING << "VM " << rec.uuid << " was " << VmStateName(rec.state) << " when vtmd stopped; now stopped";
        break;
      case VmState::kDeleting:
        LOG_WARNING << "finishing the interrupted deletion of VM " << rec.uuid;
        VTM_RETURN_IF_ERROR(Destroy(rec.uuid, rec.generation));
        break;
      case VmState::kDefined:
        LOG_WARNING << "undoing the interrupted creation of VM " << rec.uuid;
        VTM_RETURN_IF_ERROR(Destroy(rec.uuid, rec.generation));
        break;
      case VmState::kMigratingOut:
      case VmState::kIncoming:
        // The migration engine finishes or undoes these (its own records say how far each
        // got); a live instance is watched again meanwhile.
        if (IsInstanceOf(*config_.env, rec.instance_pid, rec.uuid)) {
          VTM_RETURN_IF_ERROR(supervisor_.Adopt(rec.uuid, static_cast<pid_t>(rec.instance_pid)));
        }
        LOG_WARNING << "VM " << rec.uuid << " is " << VmStateName(rec.state)
                    << " (a migration was in progress); `vtmctl migrate status` shows it";
        break;
      default:
        break;
    }
  }
  return OkStatus();
}

}  // namespace vtm
