// vtmd: the vTM Manager daemon. Opens the host TPM, unseals the master key, opens the
// registry, adopts surviving instances and serves the API until SIGTERM/SIGINT. Instances
// keep running across a vtmd restart, so VMs never lose their TPM when the daemon is updated.
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include "api_server.h"
#include "api_service.h"
#include "attestation_endpoint.h"
#include "attestation_host.h"
#include "ca_rotation.h"
#include "host_attestation_key.h"
#include "host_ca.h"
#include "host_tls.h"
#include "manager.h"
#include "master_key.h"
#include "measurement_log.h"
#include "migration_engine.h"
#include "migration_peer.h"
#include "owner_auth.h"
#include "registry.h"
#include "rollback_counter.h"
#include "simulated_manufacturer.h"
#include "swtpm_provisioner.h"
#include "vtm/digest.h"
#include "vtm/fs.h"
#include "vtm/host_tpm.h"
#include "vtm/host_tpm_executor.h"
#include "vtm/libvirt.h"
#include "vtm/log.h"
#include "vtm/secret.h"
#include "vtm/subprocess.h"
#include "vtm/tpm.h"

namespace vtm {
namespace {

constexpr const char* kUsage = R"(usage: vtmd [options]

Runs the vTPM manager daemon. Options may also be given in a config file as
"name = value" lines (--config); the command line wins.

  --config FILE            read options from FILE (default /etc/vtm/vtmd.conf if it exists)
  --state-dir DIR          registry, sealed master key, VM state (default /var/lib/vtm)
  --run-dir DIR            sockets (default /run/vtm)
  --socket PATH            API socket (default <run-dir>/vtmd.sock)
  --host-tpm SPEC          auto | simulated | a TCTI string such as device:/dev/tpmrm0 or
                           swtpm:host=127.0.0.1,port=2321 (default auto: the device if
                           /dev/tpmrm0 exists, else a SIMULATED host TPM)
  --host-pcrs SEL          host PCRs the master key is sealed to (default sha256:0,1,2,3,4,5,6,7)
  --owner-auth-file FILE   the host TPM's owner hierarchy password (mode 0600, root's); without
                           it, the systemd credential "vtm-owner-auth" if there is one, else
                           none. Never give a password on the command line or in the environment
  --group NAME             members may use the API besides root (default vtm, if it exists)
  --qemu-user USER         owner of each VM's tpm.sock, the user QEMU runs as (default: the
                           user libvirt runs QEMU as: `user` in --libvirt-qemu-conf, else
                           libvirt-qemu if that account exists, else root)
  --libvirt-qemu-conf FILE libvirt's QEMU driver config (default /etc/libvirt/qemu.conf)
  --qemu-peer-check MODE   which client of a VM's tpm.sock is taken for its QEMU: require
                           (only one proven to be it: in cgroup partition /machine/vtm<uuid
                           hex digits> or under AppArmor profile libvirt-<uuid>), warn
                           (default: refuse another VM's proven QEMU, accept an unproven one
                           with a warning) or off (plain QEMU outside libvirt)
  --instance-uid-base N    first uid for per-VM processes (default 500000000)
  --instance-uid-count N   size of that uid range (default 65536)
  --ca-residency MODE      tpm: the CA key that signs vTPM certificates lives inside the host
                           TPM (default); sealed: a software key wrapped by the master key and
                           bound to the host AK by one quote, for hosts whose TPM signs slowly
  --ca-cert-days N         validity of the self-signed host CA certificate, set when it is
                           created (default 0: no expiry)
  --cert-days N            validity of every vTPM certificate (EK, AK, IK) issued from now on,
                           never beyond the CA certificate's (default 0: no expiry, RFC 5280)
  --measure-pcr N          host PCR (sha256 bank) vtmd extends its own start and every
                           instance launch into, with a replayable log in the state dir
                           (default 13; see docs/attestation.md for why)
  --attest-pcrs SEL        host PCRs each host quote covers (default sha256:0-7, 10 and
                           the --measure-pcr)
  --attest-batch-window-us N  requests arriving within N microseconds share one host quote
                           (default 2000; 0: one quote per request)
  --attest-max-batch N     a batch is quoted at once when it has N requests (default 4096)
  --attest-listen HOST:PORT  serve remote verifiers over mutual TLS 1.3 there (default: off;
                           only the local socket)
  --attest-verifier-ca FILE  PEM: verifiers' client certificates must chain to it (needed
                           with --attest-listen)
  --migration-peer-ca FILE PEM: the fleet CA; vtmd peers in a migration present certificates
                           from their host CAs that chain to it (needed for any migration)
  --migration-listen HOST:PORT  accept incoming migrations there (mutual TLS 1.3; default off)
  --migration-policy FILE  the attestation policy (vtm-verify learn) a destination must meet
                           before this host seals a VM to it (needed to migrate VMs away)
  --migration-prepare-ttl SECONDS  a migration this host prepared as destination that its
                           source has not sent within this time is aborted and its import key
                           dropped (default 600)
  --rollback-nv-index N    the host TPM NV counter index that anchors the registry against
                           rollback (owner range; default 0x01800a7d)
  --accept-registry-rollback  start once with the registry as it is although it is an older
                           copy or was changed outside vtmd, re-anchoring it (command line only)
  --accept-vm-state-rollback UUID  accept the vTPM state of a stopped VM as it is now, although it
                           is not the state recorded when it stopped (command line only)
  --host-name NAME         this host's name in its certificates and evidence (default: the
                           system host name)
  --log-level LEVEL        debug | info | warning | error (default info)
  --help
)";

struct Options {
  std::string state_dir = "/var/lib/vtm";
  std::string run_dir = "/run/vtm";
  std::string socket;
  std::string host_tpm = "auto";
  std::string host_pcrs = "sha256:0,1,2,3,4,5,6,7";
  std::string owner_auth_file;
  std::string group;
  bool group_given = false;
  std::string qemu_user;  // empty: libvirt's, see DetectQemuUser
  std::string libvirt_qemu_conf = "/etc/libvirt/qemu.conf";
  std::string qemu_peer_check = "warn";
  uint32_t uid_base = 500000000;
  uint32_t uid_count = 65536;
  std::string log_level = "info";
  std::string ca_residency = "tpm";
  uint32_t ca_cert_days = 0;
  uint32_t cert_days = 0;
  uint32_t measure_pcr = 13;
  std::string attest_pcrs;  // empty: the default above
  uint32_t attest_batch_window_us = 2000;
  uint32_t attest_max_batch = 4096;
  std::string attest_listen;
  std::string attest_verifier_ca;
  std::string migration_peer_ca;
  std::string migration_listen;
  std::string migration_policy;
  uint32_t migration_prepare_ttl = 600;
  std::string host_name;
  uint32_t rollback_nv_index = kDefaultRollbackNvIndex;
  bool accept_registry_rollback = false;
  std::vector<std::string> accept_vm_state;  // --accept-vm-state-rollback, repeatable
};

// The effective configuration as vtmd measures it: one "name = value" line per option, in a
// fixed order (so the same configuration always has the same digest).
std::string CanonicalConfig(const Options& o) {
  std::ostringstream out;
  out << "state-dir = " << o.state_dir << "\n"
      << "run-dir = " << o.run_dir << "\n"
      << "socket = " << o.socket << "\n"
      << "host-tpm = " << o.host_tpm << "\n"
      << "host-pcrs = " << o.host_pcrs << "\n"
      << "group = " << o.group << "\n"
      << "qemu-user = " << o.qemu_user << "\n"
      << "qemu-peer-check = " << o.qemu_peer_check << "\n"
      << "instance-uid-base = " << o.uid_base << "\n"
      << "instance-uid-count = " << o.uid_count << "\n"
      << "ca-residency = " << o.ca_residency << "\n"
      << "ca-cert-days = " << o.ca_cert_days << "\n"
      << "cert-days = " << o.cert_days << "\n"
      << "measure-pcr = " << o.measure_pcr << "\n"
      << "attest-pcrs = " << o.attest_pcrs << "\n"
      << "attest-batch-window-us = " << o.attest_batch_window_us << "\n"
      << "attest-max-batch = " << o.attest_max_batch << "\n"
      << "attest-listen = " << o.attest_listen << "\n"
      << "attest-verifier-ca = " << o.attest_verifier_ca << "\n"
      << "migration-peer-ca = " << o.migration_peer_ca << "\n"
      << "migration-listen = " << o.migration_listen << "\n"
      << "migration-policy = " << o.migration_policy << "\n"
      << "migration-prepare-ttl = " << o.migration_prepare_ttl << "\n"
      << "host-name = " << o.host_name << "\n"
      << "rollback-nv-index = " << o.rollback_nv_index << "\n";
  return out.str();
}

constexpr unsigned long kMaxCertDays = 36500;  // a hundred years; beyond, say 0 (no expiry)

Status PeerCheckModeValid(const std::string& value) {
  auto mode = instance::ParsePeerCheckMode(value);
  if (!mode.ok()) return std::move(mode).error().Context("--qemu-peer-check");
  return OkStatus();
}

Status Apply(Options* o, const std::string& name, const std::string& value) {
  auto number = [&](uint32_t* out, unsigned long max = 0xFFFFFFFFul) -> Status {
    try {
      size_t used = 0;
      unsigned long v = std::stoul(value, &used);
      if (used != value.size() || v > max) throw std::out_of_range(value);
      *out = static_cast<uint32_t>(v);
      return OkStatus();
    } catch (const std::exception&) {
      return Error(ErrorCode::kInvalidArgument,
                   "--" + name + " needs a number up to " + std::to_string(max) + ", not '" + value + "'");
    }
  };
  if (name == "state-dir") o->state_dir = value;
  else if (name == "run-dir") o->run_dir = value;
  else if (name == "socket") o->socket = value;
  else if (name == "host-tpm") o->host_tpm = value;
  else if (name == "host-pcrs") o->host_pcrs = value;
  else if (name == "owner-auth-file") o->owner_auth_file = value;
  else if (name == "group") { o->group = value; o->group_given = true; }
  else if (name == "qemu-user") o->qemu_user = value;
  else if (name == "libvirt-qemu-conf") o->libvirt_qemu_conf = value;
  else if (name == "qemu-peer-check") { VTM_RETURN_IF_ERROR(PeerCheckModeValid(value)); o->qemu_peer_check = value; }
  else if (name == "instance-uid-base") return number(&o->uid_base);
  else if (name == "instance-uid-count") return number(&o->uid_count);
  else if (name == "log-level") o->log_level = value;
  else if (name == "ca-residency") o->ca_residency = value;
  else if (name == "ca-cert-days") return number(&o->ca_cert_days, kMaxCertDays);
  else if (name == "cert-days") return number(&o->cert_days, kMaxCertDays);
  else if (name == "measure-pcr") return number(&o->measure_pcr);
  else if (name == "attest-pcrs") o->attest_pcrs = value;
  else if (name == "attest-batch-window-us") return number(&o->attest_batch_window_us);
  else if (name == "attest-max-batch") return number(&o->attest_max_batch);
  else if (name == "attest-listen") o->attest_listen = value;
  else if (name == "attest-verifier-ca") o->attest_verifier_ca = value;
  else if (name == "migration-peer-ca") o->migration_peer_ca = value;
  else if (name == "migration-listen") o->migration_listen = value;
  else if (name == "migration-policy") o->migration_policy = value;
  else if (name == "migration-prepare-ttl") return number(&o->migration_prepare_ttl);
  else if (name == "host-name") o->host_name = value;
  else if (name == "rollback-nv-index") {
    try {
      size_t used = 0;
      unsigned long v = std::stoul(value, &used, 0);  // 0x... or decimal
      if (used != value.size() || v < 0x01800000ul || v > 0x01bffffful) throw std::out_of_range(value);
      o->rollback_nv_index = static_cast<uint32_t>(v);
    } catch (const std::exception&) {
      return Error(
          ErrorCode::kInvalidArgument,
          "--rollback-nv-index needs an NV index of the owner range (0x01800000 to 0x01bfffff), not '" + value + "'");
    }
  }
  else return Error(ErrorCode::kInvalidArgument, "unknown option '" + name + "'");
  return OkStatus();
}

Status ReadConfigFile(const std::string& path, Options* o) {
  VTM_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    auto hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    auto trim = [](std::string s) {
      s.erase(0, s.find_first_not_of(" \t"));
      s.erase(s.find_last_not_of(" \t\r") + 1);
      return s;
    };
    line = trim(line);
    if (line.empty()) continue;
    auto eq = line.find('=');
    if (eq == std::string::npos) {
      return Error(ErrorCode::kInvalidArgument, path + ":" + std::to_string(n) + ": expected 'name = value'");
    }
    Status st = Apply(o, trim(line.substr(0, eq)), trim(line.substr(eq + 1)));
    if (!st.ok()) return Error(ErrorCode::kInvalidArgument, path + ":" + std::to_string(n) + ": " + st.error().message());
  }
  return OkStatus();
}

Result<Options> ParseOptions(int argc, char** argv) {
  Options o;
  std::string config;
  std::vector<std::pair<std::string, std::string>> given;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (arg.rfind("--", 0) != 0) return Error(ErrorCode::kInvalidArgument, "unexpected argument '" + arg + "'");
    if (arg == "--accept-registry-rollback") {  // a deliberate one-off: never from vtmd.conf
      o.accept_registry_rollback = true;
      continue;
    }
    std::string name = arg.substr(2), value;
    auto eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    } else {
      if (i + 1 >= argc) return Error(ErrorCode::kInvalidArgument, "--" + name + " needs a value");
      value = argv[++i];
    }
    if (name == "config") config = value;
    else if (name == "accept-vm-state-rollback")
      o.accept_vm_state.push_back(value);  // command line only
    else given.emplace_back(name, value);
  }
  if (!config.empty()) {
    VTM_RETURN_IF_ERROR(ReadConfigFile(config, &o));
  } else if (PathExists("/etc/vtm/vtmd.conf")) {
    VTM_RETURN_IF_ERROR(ReadConfigFile("/etc/vtm/vtmd.conf", &o));
  }
  for (auto& [name, value] : given) VTM_RETURN_IF_ERROR(Apply(&o, name, value));
  if (o.socket.empty()) o.socket = o.run_dir + "/vtmd.sock";
  return o;
}

// Every ancestor of dir must be searchable by others (o+x), or per-VM uids cannot reach
// their own directories below it.
Status CheckTraversable(const std::string& dir) {
  std::filesystem::path p = std::filesystem::absolute(dir);
  for (; !p.empty(); p = p.parent_path()) {
    struct stat st;
    if (::stat(p.c_str(), &st) == 0 && !(st.st_mode & S_IXOTH)) {
      return Error(ErrorCode::kFailedPrecondition,
                   p.string() + " (mode " + std::to_string((st.st_mode >> 6) & 7) + std::to_string((st.st_mode >> 3) & 7) +
                       std::to_string(st.st_mode & 7) + ") is not searchable by other users; the per-VM uids need to "
                       "reach " + dir + " through it (chmod o+x " + p.string() + ")");
    }
    if (p == p.parent_path()) break;
  }
  return OkStatus();
}

int Run(int argc, char** argv) {
  SetLogComponent("vtmd");
  // Signals are taken by one dedicated thread; every thread (created later) has them blocked.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
  auto opts_or = ParseOptions(argc, argv);
  if (!opts_or.ok()) {
    std::cerr << "vtmd: " << opts_or.error().message() << "\n" << kUsage;
    return 2;
  }
  Options opts = std::move(opts_or).value();
  static const std::map<std::string, LogLevel> kLevels = {
      {"debug", LogLevel::kDebug}, {"info", LogLevel::kInfo}, {"warning", LogLevel::kWarning}, {"error", LogLevel::kError}};
  if (!kLevels.count(opts.log_level)) {
    std::cerr << "vtmd: unknown --log-level '" << opts.log_level << "'\n";
    return 2;
  }
  SetLogLevel(kLevels.at(opts.log_level));
  // tpm2-tss would print its own lines for failures that vtmd already reports with context
  // (e.g. a policy mismatch); TSS2_LOG in the environment still overrides this.
  setenv("TSS2_LOG", "all+none", 0);
  // No core dumps or ptrace by other users: this process holds the master key, and its
  // children (vtm-instance, swtpm) inherit the zero core limit with the VM keys they get.
  if (auto hardened = KeepSecretsOutOfCoreDumps(); !hardened.ok()) {
    std::cerr << "vtmd: " << hardened.error().message() << "\n";
    return 1;
  }
  umask(077);

  auto fatal = [](const Error& e) {
    LOG_ERROR << e.message();
    std::cerr << "vtmd: " << e.message() << "\n";
    return 1;
  };

  auto pcrs = PcrSelection::Parse(opts.host_pcrs);
  if (!pcrs.ok()) return fatal(std::move(pcrs).error().Context("--host-pcrs"));

  std::optional<gid_t> group;
  std::string group_name = opts.group_given ? opts.group : "vtm";
  if (!group_name.empty()) {
    if (struct group* g = getgrnam(group_name.c_str())) {
      group = g->gr_gid;
    } else if (opts.group_given) {
      return fatal(Error(ErrorCode::kInvalidArgument, "group '" + group_name + "' does not exist"));
    }
  }
  // The socket's owner must be the user QEMU runs as, or QEMU's connect fails with nothing
  // but "Permission denied"; libvirt's own setting is the best default.
  auto libvirt_user = libvirt::DetectQemuUser(opts.libvirt_qemu_conf, libvirt::SystemUserExists);
  std::string qemu_user = opts.qemu_user;
  if (qemu_user.empty()) {
    if (!libvirt_user.ok()) {
      return fatal(std::move(libvirt_user).error().Context("finding the user libvirt runs QEMU as (or set --qemu-user)"));
    }
    qemu_user = libvirt_user->user;
    LOG_INFO << "QEMU user: " << qemu_user << " (" << libvirt_user->source << ")";
  } else if (libvirt_user.ok() && libvirt_user->user != qemu_user && PathExists(opts.libvirt_qemu_conf)) {
    LOG_WARNING << "--qemu-user " << qemu_user << " differs from the user libvirt runs QEMU as, "
                << libvirt_user->user << " (" << libvirt_user->source
                << "): domains started by libvirt will fail to connect to their vTPM with 'Permission denied'";
  }
  auto qemu_ids = libvirt::ResolveQemuUser(qemu_user);
  if (!qemu_ids.ok()) return fatal(std::move(qemu_ids).error().Context("--qemu-user"));
  const uid_t qemu_uid = qemu_ids->uid;
  const gid_t qemu_gid = qemu_ids->gid;

  if (auto st = MakeDir(opts.state_dir, 0711, 0, 0); !st.ok()) return fatal(st.error());
  if (auto st = MakeDir(opts.run_dir, 0711, 0, 0); !st.ok()) return fatal(st.error());
  // Per-VM processes run under their own uids and must reach their directories below these.
  for (const std::string& dir : {opts.state_dir, opts.run_dir}) {
    if (auto st = CheckTraversable(dir); !st.ok()) return fatal(st.error());
  }
  // One vtmd per state directory.
  std::string lock_path = opts.state_dir + "/vtmd.lock";
  UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock.valid() || flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
    return fatal(Error(ErrorCode::kFailedPrecondition,
                       "another vtmd is already using " + opts.state_dir + " (lock " + lock_path + ")"));
  }

  std::unique_ptr<SimulatedHostTpm> simulated;
  std::string tcti = opts.host_tpm;
  if (tcti == "auto") tcti = PathExists("/dev/tpmrm0") ? "device:/dev/tpmrm0" : "simulated";
  if (tcti == "simulated") {
    auto sim = SimulatedHostTpm::Start(opts.state_dir + "/simulated-host-tpm");
    if (!sim.ok()) return fatal(std::move(sim).error().Context("starting the simulated host TPM"));
    simulated = std::move(sim).value();
    tcti = simulated->tcti();
  }
  auto opened = Tpm::OpenTcti(tcti);
  if (!opened.ok()) return fatal(std::move(opened).error().Context("opening the host TPM " + tcti));
  std::string description = (*opened)->Describe();
  LOG_INFO << "host TPM: " << description;
  {
    auto owner_auth = LoadOwnerAuth(opts.owner_auth_file);
    if (!owner_auth.ok()) return fatal(owner_auth.error());
    if (!owner_auth->empty()) (*opened)->SetOwnerAuth(*owner_auth);
  }
  // From here on every host-TPM command goes through this one executor.
  HostTpmExecutor host_tpm(std::move(opened).value());
  if (tcti.rfind("device:/dev/tpmrm", 0) != 0) {
    // No resource manager: objects a killed vtmd left loaded would hold the TPM's few slots.
    auto flushed = host_tpm.Run([](Tpm& tpm) { return tpm.FlushLeftovers(); });
    if (!flushed.ok()) return fatal(std::move(flushed).error().Context("flushing objects left in the host TPM"));
    if (*flushed > 0) LOG_WARNING << "flushed " << *flushed << " objects an earlier vtmd left loaded in the host TPM";
  }

  const std::string sealed_master_key = opts.state_dir + "/master-key.sealed";
  auto master = host_tpm.Run([&](Tpm& tpm) {
    return MasterKey::LoadOrCreate(tpm, sealed_master_key, *pcrs);
  });
  if (!master.ok()) {
    Error e = std::move(master).error();
    if (e.message().find("authorization") != std::string::npos) {
      e = Error(e.code(), e.message() + " (if the host TPM's owner hierarchy has a password, give it with "
                                        "--owner-auth-file or the systemd credential " + std::string(kOwnerAuthCredential) + ")");
    }
    return fatal(std::move(e).Context("vtmd refuses to start"));
  }
  // Rollback protection: the registry's epoch against the host TPM's NV counter (made first: it
  // must outlive the registry, whose counter thread increments it until the registry closes).
  auto counter_auth = master->DeriveAuth(kRollbackCounterAuthLabel);
  if (!counter_auth.ok()) return fatal(counter_auth.error());
  auto registry_mac_key = master->DeriveAuth(kRegistryMacLabel);
  if (!registry_mac_key.ok()) return fatal(registry_mac_key.error());
  bool counter_created = false;
  auto counter =
      HostNvCounter::OpenOrDefine(host_tpm, opts.rollback_nv_index, std::move(counter_auth).value(), &counter_created);
  if (!counter.ok()) return fatal(std::move(counter).error().Context("vtmd refuses to start"));
  auto registry = Registry::Open(opts.state_dir + "/registry.db");
  if (!registry.ok()) return fatal(registry.error());
  {
    auto anchored = (*registry)->Anchor(std::move(registry_mac_key).value(), counter->get(), counter_created,
                                        opts.accept_registry_rollback);
    if (!anchored.ok()) return fatal(std::move(anchored).error().Context("vtmd refuses to start"));
    if (anchored->accepted) {
      LOG_WARNING << "--accept-registry-rollback: ACCEPTED A REFUSED REGISTRY: " << anchored->accepted_reason
                  << "; it is re-anchored at epoch " << anchored->epoch << " of " << (*counter)->Describe()
                  << ". VMs deleted or migrated away since that copy may be back in it: check `vtmctl list` and "
                     "`vtmctl migrate status`";
    } else if (opts.accept_registry_rollback) {
      LOG_WARNING << "--accept-registry-rollback given, but the registry needed no acceptance (epoch "
                  << anchored->epoch << "); start vtmd without it";
    }
    if (anchored->newly_anchored) {
      LOG_INFO << "registry anchored to " << (*counter)->Describe() << " at epoch " << anchored->epoch;
    } else if (anchored->rolled_forward) {
      LOG_WARNING << "registry epoch " << anchored->epoch << " was committed before a crash and "
                  << (*counter)->Describe() << " not yet incremented: incremented it now";
    } else {
      LOG_INFO << "registry epoch " << anchored->epoch << " matches " << (*counter)->Describe();
    }
  }

  if (simulated) {
    Status manufactured = host_tpm.Run([&](Tpm& tpm) {
      return ManufactureSimulatedHostTpm(tpm, opts.state_dir + "/simulated-host-tpm");
    });
    if (!manufactured.ok()) return fatal(std::move(manufactured).error().Context("manufacturing the simulated host TPM"));
  }
  std::string hostname = opts.host_name;
  if (hostname.empty()) {
    char buf[256] = "";
    gethostname(buf, sizeof buf - 1);
    hostname = buf;
  }
  auto residency = ParseCaResidency(opts.ca_residency);
  if (!residency.ok()) return fatal(residency.error());
  const std::string identity_dir = opts.state_dir + "/host-identity";
  auto ak_auth = master->DeriveAuth(kHostAkAuthLabel);
  if (!ak_auth.ok()) return fatal(ak_auth.error());
  auto host_ak = HostAttestationKey::LoadOrCreate(host_tpm, identity_dir, *ak_auth);
  if (!host_ak.ok()) return fatal(std::move(host_ak).error().Context("loading the host attestation key"));
  auto host_ca = HostCa::LoadOrCreate(**host_ak, identity_dir, hostname, *residency, *master, *pcrs,
                                      CertificateLifetimes{opts.ca_cert_days, opts.cert_days});
  if (!host_ca.ok()) return fatal(std::move(host_ca).error().Context("loading the host CA"));
  SwtpmProvisioner provisioner(host_tpm, **host_ca, **registry);

  // Measured launch: vtmd's own binary and configuration first, then every instance launch.
  auto boot_id = CurrentBootId();
  if (!boot_id.ok()) return fatal(std::move(boot_id).error().Context("reading the host boot id"));
  auto measurements = HostMeasurementLog::Open(host_tpm, opts.state_dir + "/measurement-log.pb", opts.measure_pcr, *boot_id);
  if (!measurements.ok()) return fatal(std::move(measurements).error().Context("opening the measurement log"));
  {
    auto self = Sha256OfFile("/proc/self/exe");
    if (!self.ok()) return fatal(std::move(self).error().Context("measuring vtmd"));
    attest::VtmdStart start;
    start.set_vtmd_sha256(*self);
    start.set_config_sha256(Sha256Digest(CanonicalConfig(opts)));
    start.set_version(VTM_VERSION);
    start.set_boot_id(*boot_id);
    if (auto st = (*measurements)->Measure(attest::MEASUREMENT_TYPE_VTMD_START, start.SerializeAsString()); !st.ok()) {
      return fatal(std::move(st).error().Context("measuring vtmd's start"));
    }
  }

  ManagerConfig mc;
  mc.state_dir = opts.state_dir;
  mc.run_dir = opts.run_dir;
  mc.instance_uid_base = opts.uid_base;
  mc.instance_uid_count = opts.uid_count;
  mc.socket_uid = qemu_uid;
  mc.socket_gid = qemu_gid;
  mc.swtpm_binary = FindProgram("swtpm");
  mc.qemu_peer_check = *instance::ParsePeerCheckMode(opts.qemu_peer_check);
  Manager manager(mc, **registry, *master, FindProgram("vtm-instance"), &provisioner, measurements->get());
  if (auto st = manager.Reconcile(); !st.ok()) return fatal(std::move(st).error().Context("reconciling the registry"));
  // A host CA key rotation a crash (or a busy VM) interrupted after the switch is completed.
  if (!(*host_ca)->RetiredAwaitingFinalCrl().empty()) {
    auto completed = CompleteCaRotation(**host_ca, manager, **registry);
    if (!completed.ok()) {
      LOG_WARNING << "completing the host CA key rotation at start: " << completed.error().message();
    }
  }
  for (const std::string& vm : opts.accept_vm_state) {
    auto accepted = manager.AcceptStateRollback(vm);
    if (!accepted.ok()) return fatal(std::move(accepted).error().Context("--accept-vm-state-rollback " + vm));
  }

  // The RA client: host and deep evidence for verifiers, batched under one host quote.
  RaClientConfig ra_config;
  {
    std::string sel = opts.attest_pcrs;
    if (sel.empty()) {
      sel = "sha256:0,1,2,3,4,5,6,7,10";
      if (opts.measure_pcr != 10 && opts.measure_pcr > 7) sel += "," + std::to_string(opts.measure_pcr);
    }
    auto quote_pcrs = PcrSelection::Parse(sel);
    if (!quote_pcrs.ok()) return fatal(std::move(quote_pcrs).error().Context("--attest-pcrs"));
    ra_config.quote_pcrs = *quote_pcrs;
  }
  ra_config.batch_window = std::chrono::microseconds(opts.attest_batch_window_us);
  ra_config.max_batch = opts.attest_max_batch == 0 ? 1 : opts.attest_max_batch;
  if (tcti.rfind("device:", 0) == 0) {
    // The host's own logs describe the host TPM's PCRs only when that TPM is the real one.
    ra_config.uefi_event_log_path = "/sys/kernel/security/tpm0/binary_bios_measurements";
    ra_config.ima_log_path = "/sys/kernel/security/ima/binary_runtime_measurements";
  }
  VtmdAttestationHost attestation_host(**host_ak, **host_ca, **measurements, **registry, hostname, simulated != nullptr);
  RaClient ra(attestation_host, ra_config);

  HostDescription host{description, simulated != nullptr, pcrs->ToString(), measurements->get(), opts.run_dir};
  ApiService service(manager, **registry, host_ak->get(), host_ca->get(), host, &ra);
  // `vtmctl host reseal`: sealing and writing the prepared copy are one executor job, so two
  // requests never interleave their writes.
  service.SetReseal([&](const std::map<int, std::string>& expected) {
    return host_tpm.Run([&](Tpm& tpm) { return master->PrepareReseal(tpm, sealed_master_key, *pcrs, expected); });
  });
  std::unique_ptr<AttestationEndpoint> endpoint;
  if (!opts.attest_listen.empty()) {
    if (opts.attest_verifier_ca.empty()) {
      return fatal(Error(ErrorCode::kInvalidArgument,
                         "--attest-listen needs --attest-verifier-ca: the CA whose verifiers may connect"));
    }
    AttestationEndpointConfig ec{opts.attest_listen, opts.attest_verifier_ca, hostname};
    auto started = AttestationEndpoint::Start(ec, service, **host_ca, **registry);
    if (!started.ok()) return fatal(std::move(started).error().Context("starting the attestation endpoint"));
    endpoint = std::move(started).value();
  }
  // Sealed migration: the engine, and the endpoint destinations listen on.
  std::unique_ptr<HostTlsIdentity> migration_identity;
  std::unique_ptr<MigrationEngine> migration;
  std::unique_ptr<MigrationEndpoint> migration_endpoint;
  if (!opts.migration_peer_ca.empty()) {
    auto fleet = ReadFile(opts.migration_peer_ca);
    if (!fleet.ok()) return fatal(std::move(fleet).error().Context("--migration-peer-ca"));
    auto issued = HostTlsIdentity::Issue(**host_ca, **registry, hostname, "migration", std::move(fleet).value());
    if (!issued.ok()) return fatal(std::move(issued).error().Context("issuing the migration certificate"));
    migration_identity = std::move(issued).value();
    std::unique_ptr<attest::Verifier> verifier;
    if (!opts.migration_policy.empty()) {
      auto text = ReadFile(opts.migration_policy);
      if (!text.ok()) return fatal(std::move(text).error().Context("--migration-policy"));
      auto policy = attest::ParsePolicyJson(*text);
      if (!policy.ok()) return fatal(std::move(policy).error().Context("--migration-policy " + opts.migration_policy));
      auto created = attest::Verifier::Create(*policy);
      if (!created.ok()) return fatal(std::move(created).error().Context("--migration-policy " + opts.migration_policy));
      verifier = std::move(created).value();
    }
    MigrationConfig mig_config;
    mig_config.host_name = hostname;
    mig_config.prepare_ttl = std::chrono::seconds(opts.migration_prepare_ttl);
    mig_config.peer_identity = migration_identity.get();
    migration = std::make_unique<MigrationEngine>(std::move(mig_config), manager, **registry, **host_ak, **host_ca, ra,
                                                  std::move(verifier));
    if (auto st = migration->Reconcile(); !st.ok()) return fatal(std::move(st).error().Context("reconciling migrations"));
    service.SetMigrationEngine(migration.get());
    if (!opts.migration_listen.empty()) {
      MigrationEngine* engine = migration.get();
      auto started = MigrationEndpoint::Start(opts.migration_listen, *migration_identity,
                                              [engine](const migration_api::PeerRequest& req, const std::string& peer) {
                                                return engine->HandlePeer(req, peer);
                                              });
      if (!started.ok()) return fatal(std::move(started).error().Context("starting the migration endpoint"));
      migration_endpoint = std::move(started).value();
    }
  } else if (!opts.migration_listen.empty() || !opts.migration_policy.empty()) {
    return fatal(Error(ErrorCode::kInvalidArgument,
                       "--migration-listen and --migration-policy need --migration-peer-ca: the fleet CA whose vtmd "
                       "peers may take part"));
  }
  // After a host CA key rotation the endpoints present certificates of the new key, without a restart.
  std::vector<HostTlsIdentity*> tls_identities;
  if (endpoint) tls_identities.push_back(&endpoint->tls_identity());
  if (migration_identity) tls_identities.push_back(migration_identity.get());
  service.SetTlsIdentities(std::move(tls_identities));
  // The API socket last: once it exists vtmd is ready, the network endpoint included.
  ApiServer server(service, group, group_name);
  if (auto st = server.Listen(opts.socket); !st.ok()) return fatal(st.error());
  std::thread endpoint_thread([&] {
    if (endpoint) endpoint->Serve();
  });
  std::thread migration_thread([&] {
    if (migration_endpoint) migration_endpoint->Serve();
  });

  std::thread signals([&] {
    int sig = 0;
    sigwait(&set, &sig);
    LOG_INFO << "received " << strsignal(sig) << "; shutting down (vTPM instances keep running)";
    server.Shutdown();
    if (endpoint) endpoint->Shutdown();
    if (migration_endpoint) migration_endpoint->Shutdown();
  });

  LOG_INFO << "vtmd " << VTM_VERSION << " ready on " << opts.socket << " (state " << opts.state_dir << ")";
  server.Serve();
  // Serve() returns only after the signal thread called Shutdown(); it has nothing left to do.
  signals.join();
  endpoint_thread.join();
  migration_thread.join();
  LOG_INFO << "vtmd stopped";
  return 0;
}

}  // namespace
}  // namespace vtm

int main(int argc, char** argv) { return vtm::Run(argc, argv); }
