// vtmctl: the operator's CLI for vtmd. Human-readable output by default, --json for scripts
// (the protobuf JSON mapping of the API messages). Exit codes are documented in
// docs/operator-guide.md and stable for scripts.
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <algorithm>
#include <fstream>
#include <iterator>
#include <map>
#include <iomanip>
#include <iostream>
#include <string>
#include <vector>

#include "api_client.h"
#include "external_formats.h"
#include "vtm/fs.h"
#include "vtm/quote.h"
#include "vtmctl_libvirt.h"
#include "vtm.pb.h"
#include "vtm/hex.h"

namespace vtm {
namespace {

constexpr const char* kUsage = R"(usage: vtmctl [--socket PATH] [--json] COMMAND [ARGS]

Commands:
  create [--uuid UUID] [--name NAME] [--service SVC]
                                       create a vTPM for a VM: keys, directories, EKs,
                                       AK, IK and their certificates from the host CA
  start VM                             start the VM's vTPM; prints the socket for QEMU
                                       (already running: succeeds with a note)
  stop [--force] VM                    stop the VM's vTPM (its state is kept); refused while
                                       a QEMU is attached unless --force (not running:
                                       succeeds with a note)
  delete VM                            destroy the VM's vTPM state and keys (must be stopped)
  list                                 list all vTPMs
  show VM                              show one vTPM
  certs VM [--kind ek-ecc|ek-rsa|ak|ik] print the VM's vTPM certificates (PEM; with --kind
                                       only the valid one of that kind)
  renew-certs VM                       new certificates for the vTPM's keys from the host CA
                                       (its validity today); the old ones revoked
  host                                 show the host TPM and policy vtmd uses
  host reseal --pcr N=HEX [--pcr N=HEX ...]
                                       before a planned firmware update (root): seal a
                                       second copy of the master key to the PCR values
                                       expected after it (the PCRs not named: as now);
                                       vtmd adopts it at the first start where it unseals
  ca show                              print the host CA certificate (PEM)
  ca csr [--pending]                   print a CSR for the host CA key (--pending: for the
                                       new key of a rotation), for a fleet CA
  ca install CERT.pem [CHAIN.pem]      install the fleet CA's certificate for the CA key
                                       (for the pending key: completes its rotation)
  ca rotate [--csr | --cancel]         a new host CA key in the host TPM. Self-signed CA:
                                       in use at once, every VM's certificates re-issued,
                                       the old key's final CRL. Fleet CA (or --csr): prints
                                       the new key's CSR; `ca install` completes. Run again
                                       after an interruption: completes the rotation
  ca crl [--retired]                   print a CRL of every revoked vTPM certificate
                                       (--retired: the final CRLs of retired CA keys)
  ca activate-credential FILE          activate a tpm2_makecredential output made for the
                                       host AK with the host EK; prints the secret (hex)
  attest host --nonce HEX --output FILE
                                       host evidence on a verifier's nonce (from
                                       `vtm-verify nonce`): a host-AK quote, the host's
                                       logs and certificates (a HostEvidence message)
  attest deep VM --nonce HEX --quote-message F --quote-signature F --quote-pcrs F
              [--guest-event-log F] --output FILE
                                       deep evidence: the guest's quote (tpm2_quote -m -s -o,
                                       made with the same nonce) linked to a host quote
                                       (a DeepEvidence message); check with vtm-verify
  migrate prepare VM --to HOST:PORT [--cold]
                                       start moving the VM's vTPM to the destination vtmd:
                                       it is attested (--migration-policy) and hands over
                                       an import key in its host TPM; prints the migration ID
  migrate send ID                      seal the VM's keys (cold: and state) to that key and
                                       send them; live: prints the destination's tpm socket
                                       for the destination QEMU (-incoming)
  migrate commit ID [--activate-only] [--on-stdin]
                                       after QEMU's migration completed (live): fence the
                                       vTPM here, activate it there, destroy it here;
                                       --activate-only returns once it is active there (a
                                       live migration's orchestrator then continues the
                                       destination QEMU, and commits again to finish);
                                       --on-stdin connects to vtmd and the destination
                                       first, prints "ready", and commits when the line
                                       "commit" arrives on stdin (nothing if stdin closes)
  migrate abort ID                     before commit: the destination destroys what it got
  migrate status [ID]                  the migrations this host knows
  migrate cold VM --to HOST:PORT       prepare, send and commit a stopped VM's vTPM at once
  libvirt qemu-user|xml|patch|orphans|hook
                                       libvirt domains and their vTPMs (`vtmctl libvirt`
                                       lists them)

VM is a UUID or a name. --socket defaults to $VTM_SOCKET or /run/vtm/vtmd.sock.

Exit codes: 0 ok, 1 error, 2 usage, 3 no such VM, 4 wrong state or exists already,
5 permission denied, 6 vtmd unreachable.
)";

enum Exit { kOk = 0, kError = 1, kUsage_ = 2, kNotFound = 3, kConflict = 4, kDenied = 5, kUnreachable = 6 };

int ExitFor(api::Status s) {
  switch (s) {
    case api::STATUS_OK: return kOk;
    case api::STATUS_INVALID_ARGUMENT: return kUsage_;
    case api::STATUS_NOT_FOUND: return kNotFound;
    case api::STATUS_ALREADY_EXISTS:
    case api::STATUS_FAILED_PRECONDITION: return kConflict;
    case api::STATUS_PERMISSION_DENIED: return kDenied;
    case api::STATUS_UNAVAILABLE: return kUnreachable;
    default: return kError;
  }
}

std::string StateName(api::VmState s) {
  std::string n = api::VmState_Name(s);
  n = n.substr(std::string("VM_STATE_").size());
  for (auto& c : n) c = c == '_' ? '-' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return n == "unspecified" ? "deleted" : n;
}

void PrintVm(const api::Vm& vm) {
  std::cout << "uuid:          " << vm.uuid() << "\n"
            << "name:          " << vm.name() << "\n"
            << "state:         " << StateName(vm.state()) << "\n"
            << "generation:    " << vm.generation() << "\n"
            << "tpm socket:    " << vm.tpm_socket() << "\n"
            << "state dir:     " << vm.state_dir() << "\n"
            << "service:       " << (vm.service().empty() ? "-" : vm.service()) << "\n"
            << "instance uid:  " << vm.instance_uid() << "\n"
            << "instance pid:  " << (vm.instance_pid() ? std::to_string(vm.instance_pid()) : "-") << "\n"
            << "created:       " << vm.created_at() << "\n"
            << "updated:       " << vm.updated_at() << "\n";
  if (!vm.last_error().empty()) std::cout << "last error:    " << vm.last_error() << "\n";
}

// `attest host|deep ...` into an attest_host / attest_deep request; *output: --output FILE.
int BuildAttestRequest(const std::vector<std::string>& args, api::Request* req, std::string* output) {
  const std::string sub = args.size() > 1 ? args[1] : "";
  if (sub != "host" && sub != "deep") {
    std::cerr << "vtmctl attest: use 'attest host' or 'attest deep VM' (see --help)\n";
    return kUsage_;
  }
  std::map<std::string, std::string> opt;
  std::string vm;
  for (size_t i = 2; i < args.size(); ++i) {
    if (args[i].rfind("--", 0) == 0 && i + 1 < args.size()) {
      opt[args[i].substr(2)] = args[i + 1];
      ++i;
    } else if (sub == "deep" && vm.empty() && args[i].rfind("--", 0) != 0) {
      vm = args[i];
    } else {
      std::cerr << "vtmctl attest " << sub << ": unexpected argument '" << args[i] << "'\n";
      return kUsage_;
    }
  }
  const std::vector<std::string> known = sub == "host" ? std::vector<std::string>{"nonce", "output"}
                                                       : std::vector<std::string>{"nonce", "output", "quote-message",
                                                                                  "quote-signature", "quote-pcrs",
                                                                                  "guest-event-log"};
  for (const auto& [name, value] : opt) {
    if (std::find(known.begin(), known.end(), name) == known.end()) {
      std::cerr << "vtmctl attest " << sub << ": unknown option --" << name << "\n";
      return kUsage_;
    }
  }
  for (const std::string name : {"nonce", "output"}) {
    if (opt[name].empty()) {
      std::cerr << "vtmctl attest " << sub << ": --" << name << " is required\n";
      return kUsage_;
    }
  }
  auto nonce = HexDecode(opt["nonce"]);
  if (!nonce.ok()) {
    std::cerr << "vtmctl attest " << sub << ": --nonce: " << nonce.error().message() << "\n";
    return kUsage_;
  }
  *output = opt["output"];
  if (sub == "host") {
    req->mutable_attest_host()->set_nonce(*nonce);
    return kOk;
  }
  if (vm.empty()) {
    std::cerr << "vtmctl attest deep: name the VM (UUID or name)\n";
    return kUsage_;
  }
  auto* d = req->mutable_attest_deep();
  d->set_vm(vm);
  d->set_nonce(*nonce);
  // The guest's tpm2_quote files: -m (TPMS_ATTEST), -s (TPMT_SIGNATURE), -o (PCR values).
  for (const std::string name : {"quote-message", "quote-signature", "quote-pcrs"}) {
    if (opt[name].empty()) {
      std::cerr << "vtmctl attest deep: --" << name << " is required (tpm2_quote -m, -s and -o in the guest)\n";
      return kUsage_;
    }
  }
  auto quote = attest::ReadTpm2ToolsQuote(opt["quote-message"], opt["quote-signature"], opt["quote-pcrs"]);
  if (!quote.ok()) {
    std::cerr << "vtmctl attest deep: " << quote.error().message() << "\n";
    return kUsage_;
  }
  *d->mutable_guest_quote() = std::move(quote).value();
  if (!opt["guest-event-log"].empty()) {
    auto log = ReadFile(opt["guest-event-log"]);
    if (!log.ok()) {
      std::cerr << "vtmctl attest deep: --guest-event-log: " << log.error().message() << "\n";
      return kUsage_;
    }
    d->set_guest_event_log(std::move(log).value());
  }
  return kOk;
}

// `host reseal --pcr N=HEX ...` into a host_reseal request. Only the form is checked here;
// vtmd checks each PCR against the master key's selection and each value's size.
int BuildResealRequest(const std::vector<std::string>& args, api::Request* req) {
  auto* r = req->mutable_host_reseal();
  for (size_t i = 2; i < args.size(); ++i) {
    std::string spec;
    if (args[i] == "--pcr" && i + 1 < args.size()) spec = args[++i];
    else if (args[i].rfind("--pcr=", 0) == 0) spec = args[i].substr(6);
    else {
      std::cerr << "vtmctl host reseal: unexpected argument '" << args[i] << "' (use --pcr N=HEX)\n";
      return kUsage_;
    }
    const size_t eq = spec.find('=');
    const std::string index = spec.substr(0, eq);
    const bool numeric = !index.empty() && index.size() <= 2 &&
                         std::all_of(index.begin(), index.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (eq == std::string::npos || !numeric || std::stoi(index) > 23) {
      std::cerr << "vtmctl host reseal: --pcr " << spec << ": expected N=HEX with N a PCR index from 0 to 23\n";
      return kUsage_;
    }
    const std::string hex = spec.substr(eq + 1);
    if (hex.empty() || !HexDecode(hex).ok()) {
      std::cerr << "vtmctl host reseal: --pcr " << spec << ": the value is not hex (a digest of the bank, e.g. 64 "
                   "hex digits for sha256)\n";
      return kUsage_;
    }
    auto* v = r->add_expected();
    v->set_pcr(static_cast<uint32_t>(std::stoi(index)));
    v->set_digest_hex(hex);
  }
  if (r->expected().empty()) {
    std::cerr << "vtmctl host reseal: name the expected value of each PCR the update changes: --pcr N=HEX\n";
    return kUsage_;
  }
  return kOk;
}

void PrintReseal(const api::ResealInfo& r) {
  std::cout << "re-sealed the master key for a planned change of host PCRs " << r.pcr_selection() << "\n"
            << "prepared copy: " << r.prepared_file() << "\n"
            << "current copy:  " << r.current_file() << " (stays in use while it unseals)\n"
            << "PCR values the prepared copy unseals under:\n";
  for (const auto& v : r.pcrs()) {
    const bool changed = std::find(r.changed().begin(), r.changed().end(), v.pcr()) != r.changed().end();
    std::cout << "  " << std::setw(2) << v.pcr() << ": " << v.digest_hex() << (changed ? "  (new)" : "") << "\n";
  }
  std::cout << "vtmd adopts the prepared copy at its first start where these values hold\n";
}

// Writes the evidence of an attest response (binary protobuf, what vtm-verify reads) and says
// what it holds: a line on stderr, or with --json one object on stdout:
//   {"evidence_file", "kind": "host"|"deep", "bytes", "batch_size", "measurement_log_entries",
//    "simulated_host_tpm"}
int WriteEvidence(const api::Response& resp, const std::string& path, bool json) {
  const bool deep = resp.has_deep_evidence();
  const std::string bytes = deep ? resp.deep_evidence().SerializeAsString() : resp.host_evidence().SerializeAsString();
  // Evidence holds no secret (docs/attestation.md); readable like any certificate.
  if (auto st = WriteFileAtomic(path, bytes, 0644); !st.ok()) {
    std::cerr << "vtmctl attest: writing " << path << ": " << st.error().message() << "\n";
    return kError;
  }
  const attest::HostEvidence& host = deep ? resp.deep_evidence().host() : resp.host_evidence();
  if (json) {
    // The path through protobuf's JSON writer, so any character in it is escaped properly.
    std::string quoted_path;
    google::protobuf::Value v;
    v.set_string_value(path);
    (void)google::protobuf::util::MessageToJsonString(v, &quoted_path);
    std::cout << "{\"evidence_file\": " << quoted_path << ", \"kind\": \"" << (deep ? "deep" : "host")
              << "\", \"bytes\": " << bytes.size() << ", \"batch_size\": " << host.proof().tree_size()
              << ", \"measurement_log_entries\": " << host.measurement_log().events_size()
              << ", \"simulated_host_tpm\": " << (host.host().simulated_host_tpm() ? "true" : "false") << "}\n";
    return kOk;
  }
  std::cerr << "wrote " << (deep ? "deep" : "host") << " evidence (" << bytes.size() << " bytes) to " << path
            << ": host quote shared by " << host.proof().tree_size() << " request(s), measurement log of "
            << host.measurement_log().events_size() << " entries"
            << (host.host().simulated_host_tpm() ? "; SIMULATED host TPM, not a hardware root of trust" : "") << "\n";
  return kOk;
}

// one_line: the whole message on one line, flushed (for a script that reads it as it comes).
void PrintJson(const google::protobuf::Message& m, bool one_line = false) {
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = !one_line;
  o.always_print_primitive_fields = true;
  o.preserve_proto_field_names = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  std::cout << out;
  if (one_line) std::cout << std::endl;
}

void PrintMigration(const api::Migration& m) {
  std::cout << "migration:     " << m.id() << "\n"
            << "vm:            " << m.vm_uuid() << "\n"
            << "role:          " << m.role() << " (" << m.mode() << ")\n"
            << "peer:          " << m.peer() << "\n"
            << "state:         " << m.state() << "\n"
            << "generation:    " << m.generation() << "\n";
  if (!m.destination_tpm_socket().empty()) std::cout << "tpm socket:    " << m.destination_tpm_socket() << " (destination)\n";
  if (!m.last_error().empty()) std::cout << "last error:    " << m.last_error() << "\n";
}

// Prints the outcome of one migrate step like RunMigrate does (--json: on one line, flushed);
// returns the exit status.
int ReportMigrateStep(const std::string& sub, const Result<api::Response>& resp, bool json) {
  if (!resp.ok()) {
    std::cerr << "vtmctl migrate " << sub << ": " << resp.error().message() << "\n";
    return resp.error().code() == ErrorCode::kPermissionDenied ? kDenied : kUnreachable;
  }
  if (json) PrintJson(*resp, /*one_line=*/true);
  if (resp->status() != api::STATUS_OK) {
    std::cerr << "vtmctl migrate " << sub << ": " << resp->error() << "\n";
    return ExitFor(resp->status());
  }
  if (!json && !resp->migrations().empty()) PrintMigration(resp->migrations(0));
  return kOk;
}

// `migrate commit ID [--activate-only] --on-stdin`: a live migration's orchestrator starts this
// before QEMU's migration, while the guest runs. It connects to vtmd, has vtmd open the channel
// to the destination (STEP_CONNECT, repeated every few seconds so that neither end closes it
// as idle), prints "ready" and waits; the line "commit" on stdin sends the commit over the open
// connection. So the guest's pause holds neither the start of a process nor a TLS handshake.
// stdin closed before that line: nothing is committed (exit 1). With --json the answer is one
// line, written before vtmctl exits, so the orchestrator need not wait for the exit.
int RunCommitOnCue(const api::MigrateRequest& commit, const std::string& socket, bool json) {
  constexpr int kKeepAliveMs = 5000;
  auto conn = VtmdConnection::Open(socket, std::chrono::seconds(120));
  if (!conn.ok()) return ReportMigrateStep("commit", Result<api::Response>(conn.error()), json);
  api::Request connect;
  *connect.mutable_migrate() = commit;
  connect.mutable_migrate()->set_step(api::MigrateRequest::STEP_CONNECT);
  auto connected = conn->Call(connect);
  if (!connected.ok() || connected->status() != api::STATUS_OK) return ReportMigrateStep("commit", connected, json);
  if (json) {
    // protobuf's first JSON conversion builds its type tables; not inside the guest's pause.
    std::string warm;
    (void)google::protobuf::util::MessageToJsonString(*connected, &warm);
  }
  std::cout << "ready" << std::endl;
  std::string line;
  for (;;) {
    pollfd in{STDIN_FILENO, POLLIN, 0};
    int r = poll(&in, 1, kKeepAliveMs);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) {
      auto again = conn->Call(connect);
      if (!again.ok()) return ReportMigrateStep("commit", again, json);
      if (again->status() != api::STATUS_OK) {
        std::cerr << "vtmctl migrate commit: keeping the channel to the destination open: " << again->error() << "\n";
      }
      continue;
    }
    char buf[64];
    ssize_t n = r < 0 ? -1 : ::read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::cerr << "vtmctl migrate commit: stdin closed before \"commit\"; nothing was committed\n";
      return kError;
    }
    line.append(buf, static_cast<size_t>(n));
    const size_t eol = line.find('\n');
    if (eol == std::string::npos) {
      if (line.size() > 64) break;
      continue;
    }
    line.resize(eol);
    break;
  }
  if (line != "commit") {
    std::cerr << "vtmctl migrate commit: expected the line \"commit\" on stdin; nothing was committed\n";
    return kUsage_;
  }
  api::Request req;
  *req.mutable_migrate() = commit;
  req.mutable_migrate()->set_step(api::MigrateRequest::STEP_COMMIT);
  return ReportMigrateStep("commit", conn->Call(req), json);
}

// `migrate ...`: one request per step; `migrate cold` runs prepare, send and commit, saying
// each on stderr as it goes.
int RunMigrate(const std::vector<std::string>& args, const std::string& socket, bool json) {
  const std::string sub = args.empty() ? "" : args[0];
  api::MigrateRequest m;
  std::vector<api::MigrateRequest::Step> steps;
  if (sub == "prepare" || sub == "cold") {
    for (size_t i = 1; i < args.size(); ++i) {
      if (args[i] == "--to" && i + 1 < args.size()) m.set_destination(args[++i]);
      else if (args[i] == "--cold") m.set_cold(true);
      else if (args[i].rfind("--", 0) != 0 && m.vm().empty()) m.set_vm(args[i]);
      else {
        std::cerr << "vtmctl migrate " << sub << ": unexpected argument '" << args[i] << "'\n";
        return kUsage_;
      }
    }
    if (m.vm().empty() || m.destination().empty()) {
      std::cerr << "vtmctl migrate " << sub << ": name the VM and --to HOST:PORT (the destination's migration endpoint)\n";
      return kUsage_;
    }
    if (sub == "cold") {
      m.set_cold(true);
      steps = {api::MigrateRequest::STEP_PREPARE, api::MigrateRequest::STEP_SEND, api::MigrateRequest::STEP_COMMIT};
    } else {
      steps = {api::MigrateRequest::STEP_PREPARE};
    }
  } else if (sub == "commit" && args.size() >= 3 && args.size() <= 4) {
    m.set_migration_id(args[1]);
    bool on_stdin = false;
    for (size_t i = 2; i < args.size(); ++i) {
      if (args[i] == "--activate-only" && !m.activate_only()) m.set_activate_only(true);
      else if (args[i] == "--on-stdin" && !on_stdin) on_stdin = true;
      else {
        std::cerr << "vtmctl migrate commit: unexpected argument '" << args[i] << "'\n";
        return kUsage_;
      }
    }
    if (on_stdin) return RunCommitOnCue(m, socket, json);
    steps = {api::MigrateRequest::STEP_COMMIT};
  } else if ((sub == "send" || sub == "commit" || sub == "abort") && args.size() == 2) {
    m.set_migration_id(args[1]);
    steps = {sub == "send" ? api::MigrateRequest::STEP_SEND
                           : sub == "commit" ? api::MigrateRequest::STEP_COMMIT : api::MigrateRequest::STEP_ABORT};
  } else if (sub == "status" && args.size() <= 2) {
    if (args.size() == 2) m.set_migration_id(args[1]);
    steps = {api::MigrateRequest::STEP_STATUS};
  } else {
    std::cerr << "vtmctl migrate: use prepare VM --to HOST:PORT [--cold], send ID, commit ID, abort ID, status [ID] "
                 "or cold VM --to HOST:PORT\n";
    return kUsage_;
  }
  api::Response last;
  for (api::MigrateRequest::Step step : steps) {
    api::Request req;
    *req.mutable_migrate() = m;
    req.mutable_migrate()->set_step(step);
    if (steps.size() > 1) {
      std::cerr << "vtmctl migrate " << sub << ": " << api::MigrateRequest::Step_Name(step).substr(5) << "...\n";
    }
    // Prepare creates a key in the host TPM and quotes; commit may stop an instance.
    auto resp = CallVtmd(socket, req, std::chrono::seconds(120));
    if (!resp.ok()) {
      std::cerr << "vtmctl migrate " << sub << ": " << resp.error().message() << "\n";
      return resp.error().code() == ErrorCode::kPermissionDenied ? kDenied : kUnreachable;
    }
    if (resp->status() != api::STATUS_OK) {
      if (json) PrintJson(*resp);
      std::cerr << "vtmctl migrate " << sub << ": " << resp->error() << "\n";
      if (!m.migration_id().empty() && steps.size() > 1) {
        std::cerr << "vtmctl migrate " << sub << ": migration " << m.migration_id() << " stopped there; `vtmctl migrate "
                  << "status " << m.migration_id() << "` shows it\n";
      }
      return ExitFor(resp->status());
    }
    if (!resp->migrations().empty() && m.migration_id().empty()) m.set_migration_id(resp->migrations(0).id());
    last = std::move(resp).value();
  }
  if (json) {
    PrintJson(last);
    return kOk;
  }
  if (sub == "status") {
    std::cout << std::left << std::setw(38) << "MIGRATION" << std::setw(38) << "VM" << std::setw(12) << "ROLE"
              << std::setw(6) << "MODE" << std::setw(11) << "STATE" << "PEER\n";
    for (const auto& mig : last.migrations()) {
      std::cout << std::setw(38) << mig.id() << std::setw(38) << mig.vm_uuid() << std::setw(12) << mig.role()
                << std::setw(6) << mig.mode() << std::setw(11) << mig.state() << mig.peer() << "\n";
    }
    return kOk;
  }
  if (!last.migrations().empty()) {
    if (sub == "prepare" && !last.migrations(0).appraisal().empty()) {
      std::cerr << "destination appraisal:\n" << last.migrations(0).appraisal();
    }
    PrintMigration(last.migrations(0));
  }
  return kOk;
}

int Run(int argc, char** argv) {
  const char* socket_env = std::getenv("VTM_SOCKET");
  std::string socket = socket_env != nullptr ? socket_env : "/run/vtm/vtmd.sock";
  bool json = false;
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (args.size() == 2 && args[0] == "libvirt" && args[1] == "hook") {
      // libvirt's arguments (a domain may be named anything) pass through untouched.
      args.insert(args.end(), argv + i, argv + argc);
      break;
    }
    if (a == "--json") json = true;
    else if (a == "--socket" && i + 1 < argc) socket = argv[++i];
    else if (a.rfind("--socket=", 0) == 0) socket = a.substr(9);
    else if (a == "--help" || a == "-h") { std::cout << kUsage; return kOk; }
    else args.push_back(a);
  }
  if (args.empty()) {
    std::cerr << kUsage;
    return kUsage_;
  }
  const std::string cmd = args[0];
  if (cmd == "libvirt") return RunLibvirtCommand({args.begin() + 1, args.end()}, socket);
  if (cmd == "migrate") return RunMigrate({args.begin() + 1, args.end()}, socket, json);
  std::string kind_filter;
  std::string evidence_path;
  api::Request req;
  auto need_vm = [&](auto* ref) -> bool {
    if (args.size() != 2) {
      std::cerr << "vtmctl " << cmd << ": name one VM (UUID or name)\n";
      return false;
    }
    ref->set_uuid(args[1]);
    return true;
  };
  if (cmd == "create") {
    auto* c = req.mutable_create();
    for (size_t i = 1; i < args.size(); ++i) {
      if (args[i] == "--uuid" && i + 1 < args.size()) c->set_uuid(args[++i]);
      else if (args[i] == "--name" && i + 1 < args.size()) c->set_name(args[++i]);
      else if (args[i] == "--service" && i + 1 < args.size()) c->set_service(args[++i]);
      else {
        std::cerr << "vtmctl create: unexpected argument '" << args[i] << "'\n";
        return kUsage_;
      }
    }
  } else if (cmd == "start") {
    if (!need_vm(req.mutable_start())) return kUsage_;
  } else if (cmd == "stop") {
    auto force = std::find(args.begin(), args.end(), "--force");
    if (force != args.end()) {
      req.mutable_stop()->set_force(true);
      args.erase(force);
    }
    if (!need_vm(req.mutable_stop())) return kUsage_;
  } else if (cmd == "delete") {
    if (!need_vm(req.mutable_delete_())) return kUsage_;
  } else if (cmd == "show") {
    if (!need_vm(req.mutable_show())) return kUsage_;
  } else if (cmd == "list") {
    req.mutable_list();
  } else if (cmd == "host") {
    if (args.size() > 1 && args[1] == "reseal") {
      if (int rc = BuildResealRequest(args, &req); rc != kOk) return rc;
    } else if (args.size() == 1) {
      req.mutable_host();
    } else {
      std::cerr << "vtmctl host: use 'host' or 'host reseal --pcr N=HEX ...'\n";
      return kUsage_;
    }
  } else if (cmd == "renew-certs") {
    if (!need_vm(req.mutable_renew_certs())) return kUsage_;
  } else if (cmd == "certs") {
    if (args.size() == 4 && args[2] == "--kind") {
      kind_filter = args[3];
      args.resize(2);
    }
    if (!need_vm(req.mutable_certs())) return kUsage_;
  } else if (cmd == "ca") {
    const std::string sub = args.size() > 1 ? args[1] : "";
    if (sub == "show" && args.size() == 2) {
      req.mutable_ca_show();
    } else if (sub == "csr" && (args.size() == 2 || (args.size() == 3 && args[2] == "--pending"))) {
      req.mutable_ca_csr()->set_pending(args.size() == 3);
    } else if (sub == "crl" && (args.size() == 2 || (args.size() == 3 && args[2] == "--retired"))) {
      req.mutable_ca_crl()->set_retired(args.size() == 3);
    } else if (sub == "rotate" &&
               (args.size() == 2 || (args.size() == 3 && (args[2] == "--csr" || args[2] == "--cancel")))) {
      req.mutable_ca_rotate()->set_csr(args.size() == 3 && args[2] == "--csr");
      req.mutable_ca_rotate()->set_cancel(args.size() == 3 && args[2] == "--cancel");
    } else if (sub == "activate-credential" && args.size() == 3) {
      std::ifstream f(args[2], std::ios::binary);
      std::string blob((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      auto cred = f ? ParseTpm2ToolsCredential(blob) : Result<TpmCredential>(Error(ErrorCode::kInvalidArgument, "cannot read it"));
      if (!cred.ok()) {
        std::cerr << "vtmctl ca activate-credential: " << args[2] << ": " << cred.error().message() << "\n";
        return kUsage_;
      }
      req.mutable_activate_host_credential()->set_id_object(cred->id_object);
      req.mutable_activate_host_credential()->set_encrypted_secret(cred->encrypted_secret);
    } else if (sub == "install" && (args.size() == 3 || args.size() == 4)) {
      auto* in = req.mutable_ca_install();
      for (size_t i = 2; i < args.size(); ++i) {
        std::ifstream f(args[i], std::ios::binary);
        if (!f) {
          std::cerr << "vtmctl ca install: cannot read " << args[i] << "\n";
          return kUsage_;
        }
        std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        if (i == 2) in->set_certificate_pem(text);
        else in->set_chain_pem(text);
      }
    } else {
      std::cerr << "vtmctl ca: use 'ca show', 'ca csr [--pending]', 'ca install CERT [CHAIN]', "
                   "'ca rotate [--csr | --cancel]', 'ca crl [--retired]' or 'ca activate-credential FILE'\n";
      return kUsage_;
    }
  } else if (cmd == "attest") {
    if (int rc = BuildAttestRequest(args, &req, &evidence_path); rc != kOk) return rc;
  } else {
    std::cerr << "vtmctl: unknown command '" << cmd << "'\n" << kUsage;
    return kUsage_;
  }

  auto resp = CallVtmd(socket, req);
  if (!resp.ok()) {
    std::cerr << "vtmctl: " << resp.error().message() << "\n";
    return resp.error().code() == ErrorCode::kPermissionDenied ? kDenied : kUnreachable;
  }
  if (cmd == "attest" && resp->status() == api::STATUS_OK) return WriteEvidence(*resp, evidence_path, json);
  if (json) PrintJson(*resp);
  if (resp->status() != api::STATUS_OK) {
    std::cerr << "vtmctl " << cmd << ": " << resp->error() << "\n";
    return ExitFor(resp->status());
  }
  // A rotation's account of what it did is its output, not a note.
  const bool ca_rotation = cmd == "ca" && (args[1] == "rotate" || args[1] == "install");
  if (!resp->note().empty() && !ca_rotation) std::cerr << "vtmctl " << cmd << ": note: " << resp->note() << "\n";
  if (json) return kOk;

  if (cmd == "list") {
    std::cout << std::left << std::setw(38) << "UUID" << std::setw(20) << "NAME" << std::setw(13) << "STATE"
              << std::setw(6) << "GEN"
              << "SOCKET\n";
    for (const auto& vm : resp->vms()) {
      std::cout << std::setw(38) << vm.uuid() << std::setw(20) << vm.name() << std::setw(13) << StateName(vm.state())
                << std::setw(6) << vm.generation() << (vm.state() == api::VM_STATE_RUNNING ? vm.tpm_socket() : "-")
                << "\n";
    }
  } else if (cmd == "host" && resp->has_reseal()) {
    PrintReseal(resp->reseal());
  } else if (cmd == "host") {
    const auto& h = resp->host();
    std::cout << "host TPM:    " << h.host_tpm() << "\n"
              << "simulated:   " << (h.simulated_host_tpm() ? "YES - not a hardware root of trust" : "no") << "\n"
              << "PCR policy:  " << h.pcr_policy() << "\n"
              << "vtmd:        " << h.version() << "\n"
              << "measured:    PCR " << h.measure_pcr() << ", log "
              << (h.measurement_log_consistent() ? "consistent: " : "INCONSISTENT: ") << h.measurement_log_detail() << "\n";
  } else if (cmd == "delete") {
    std::cout << "deleted the vTPM of VM " << resp->vms(0).uuid()
              << " (state and keys destroyed, certificates revoked)\n";
  } else if (cmd == "renew-certs") {
    for (const auto& c : resp->certificates()) {
      std::cout << "renewed " << c.kind() << " serial " << c.serial()
                << (c.not_after().empty() ? "" : " expires " + c.not_after()) << "\n";
    }
    std::cout << "the old certificates are revoked (vtmctl ca crl); the new ones reach the vTPM's NV at its next start\n";
  } else if (cmd == "certs") {
    bool any = false;
    for (const auto& c : resp->certificates()) {
      // With --kind, the one certificate of that kind in use (a script's question).
      if (!kind_filter.empty() && (c.kind() != kind_filter || !c.revoked_at().empty())) continue;
      any = true;
      if (kind_filter.empty()) {
        std::cout << "# " << c.kind() << " serial " << c.serial() << " NV 0x" << std::hex << c.nv_index() << std::dec
                  << (c.not_after().empty() ? "" : " expires " + c.not_after())
                  << (c.revoked_at().empty() ? "" : " REVOKED " + c.revoked_at()) << "\n";
      }
      std::cout << c.pem();
    }
    if (!any) {
      std::cerr << "vtmctl certs: no " << (kind_filter.empty() ? "" : kind_filter + " ") << "certificate\n";
      return kNotFound;
    }
  } else if (cmd == "ca") {
    if (args[1] == "show") std::cout << resp->ca().certificate_pem() << resp->ca().chain_pem();
    else if (args[1] == "install") {
      std::cout << "installed the fleet-CA-issued certificate for the host CA\n";
      if (!resp->note().empty()) std::cout << resp->note() << "\n";
    } else if (args[1] == "rotate" && resp->pem().empty()) {
      std::cout << (resp->note().empty() ? "discarded the pending host CA key" : resp->note()) << "\n";
    } else if (args[1] == "rotate") {
      std::cerr << "vtmctl ca rotate: " << resp->note() << "\n";
      std::cout << resp->pem();
    } else if (args[1] == "activate-credential") {
      std::cout << HexEncode(resp->secret()) << "\n";
    } else
      std::cout << resp->pem();
  } else if (!resp->vms().empty()) {
    PrintVm(resp->vms(0));
  }
  return kOk;
}

}  // namespace
}  // namespace vtm

int main(int argc, char** argv) { return vtm::Run(argc, argv); }
