// `vtmctl libvirt`: the qemu hook (installed as /etc/libvirt/hooks/qemu.d/vtm) and the
// helpers an operator uses to wire a domain to its vTPM. The hook talks to vtmd only, never
// to libvirt (libvirtd waits for its hooks), and gives up after kHookTimeout.
#include "vtmctl_libvirt.h"

#include <sys/stat.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <set>

#include "api_client.h"
#include "api_status.h"
#include "manager.h"
#include "peer_check.h"
#include "vtm.pb.h"
#include "vtm/libvirt.h"

namespace vtm {
namespace {

constexpr std::chrono::milliseconds kHookTimeout{60000};
enum Exit { kOk = 0, kError = 1, kUsage = 2, kNotFound = 3, kConflict = 4, kUnreachable = 6 };

constexpr const char* kLibvirtUsage = R"(usage: vtmctl libvirt COMMAND

  qemu-user [--qemu-conf FILE]       the user libvirt runs QEMU as (vtmd's default --qemu-user)
  xml VM [--model tpm-crb|tpm-tis]   print the <tpm> device and <metadata> marker for VM's vTPM
  patch FILE|- [--model M] [--service S] [--no-create] [--cgroup-partition]
                                     print the domain XML with its <tpm> pointed at its vTPM
                                     and the vtm marker added (the vTPM need not exist yet);
                                     --cgroup-partition also puts its QEMU in the cgroup
                                     partition its vTPM recognizes it by (which must exist:
                                     systemd makes it, see the operator guide otherwise)
  orphans --defined FILE|- [--delete]
                                     vTPMs whose domain is not in FILE (the output of
                                     `virsh list --all --uuid`); --delete deletes those
                                     that are not running
  hook [--qemu-conf FILE] DOMAIN OP SUBOP EXTRA
                                     libvirt's qemu hook (domain XML on stdin)
)";

Result<std::string> ReadInput(const std::string& path) {
  std::string text;
  if (path == "-") {
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    return text;
  }
  std::ifstream f(path, std::ios::binary);
  if (!f) return Error(ErrorCode::kInvalidArgument, "cannot read " + path);
  text.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return text;
}

// One vtmd call, with the API's status folded into the error.
Result<api::Response> Call(const std::string& socket, const api::Request& req,
                           std::chrono::milliseconds timeout = std::chrono::milliseconds(0)) {
  VTM_ASSIGN_OR_RETURN(api::Response resp, CallVtmd(socket, req, timeout));
  if (resp.status() == api::STATUS_OK) return resp;
  return ErrorFromResponse(resp);
}

int ExitFor(const Error& e) {
  switch (e.code()) {
    case ErrorCode::kInvalidArgument: return kUsage;
    case ErrorCode::kNotFound: return kNotFound;
    case ErrorCode::kAlreadyExists:
    case ErrorCode::kFailedPrecondition: return kConflict;
    case ErrorCode::kUnavailable: return kUnreachable;
    default: return kError;
  }
}

Result<std::string> VtmdRunDir(const std::string& socket, std::chrono::milliseconds timeout) {
  api::Request req;
  req.mutable_host();
  VTM_ASSIGN_OR_RETURN(api::Response resp, Call(socket, req, timeout));
  if (resp.host().run_dir().empty()) return Error(ErrorCode::kFailedPrecondition, "vtmd did not name its run dir");
  return resp.host().run_dir();
}

// The cgroup partition libvirt puts the domain's QEMU under, by which its vTPM tells it from
// another VM's QEMU (vtm-instance's peer check; same user, but a QEMU cannot leave its cgroup).
std::string QemuPartition(const std::string& uuid) { return "/machine/" + instance::VmCgroupPartition(uuid); }

std::string SocketFor(const std::string& run_dir, const std::string& uuid) {
  return run_dir + "/vms/" + uuid + "/tpm.sock";
}

// Options of the form --name VALUE (or a flag) before or between positional arguments.
struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;
  std::set<std::string> flags;
};

Result<Args> SplitArgs(const std::vector<std::string>& in, const std::set<std::string>& with_value,
                       const std::set<std::string>& flags) {
  Args out;
  for (size_t i = 0; i < in.size(); ++i) {
    if (with_value.count(in[i])) {
      if (i + 1 >= in.size()) return Error(ErrorCode::kInvalidArgument, in[i] + " needs a value");
      out.options[in[i]] = in[i + 1];
      ++i;
    } else if (flags.count(in[i])) {
      out.flags.insert(in[i]);
    } else if (in[i].size() > 1 && in[i].starts_with("--")) {
      return Error(ErrorCode::kInvalidArgument, "unknown option " + in[i]);
    } else {
      out.positional.push_back(in[i]);
    }
  }
  return out;
}

std::string Opt(const Args& a, const std::string& name, const std::string& fallback) {
  auto it = a.options.find(name);
  return it == a.options.end() ? fallback : it->second;
}

int Fail(const std::string& what, const Error& e) {
  std::cerr << "vtmctl libvirt " << what << ": " << e.message() << "\n";
  return ExitFor(e);
}

// ---- hook ----------------------------------------------------------------------------------

class Hook {
 public:
  Hook(std::string socket, std::string qemu_conf) : socket_(std::move(socket)), qemu_conf_(std::move(qemu_conf)) {}

  int Run(const std::string& domain_name, const std::string& op, const std::string& sub, const std::string& xml) {
    name_ = domain_name;
    xml_ = xml;
    const bool ours_to_handle = (op == "prepare" && sub == "begin") || (op == "release" && sub == "end") ||
                                (op == "migrate" && sub == "begin") || (op == "restore" && sub == "begin");
    if (!ours_to_handle) return kOk;
    auto domain = libvirt::ReadDomain(xml);
    if (!domain.ok()) {
      // libvirt's own XML: if it cannot be read, nothing says the domain wants a vTPM.
      Say("cannot read the domain XML (" + domain.error().message() + "); leaving the domain alone");
      return kOk;
    }
    domain_ = *domain;
    if (!domain_.marked && domain_.sockets.empty()) return kOk;
    auto run_dir = VtmdRunDir(socket_, kHookTimeout);
    if (!run_dir.ok()) {
      // Without vtmd only the marker or the default run dir tell whether the domain is ours.
      if (!domain_.marked && !libvirt::OptsIn(domain_, "/run/vtm")) return kOk;
      return Refuse(run_dir.error().message());
    }
    run_dir_ = *run_dir;
    if (!libvirt::OptsIn(domain_, run_dir_)) return kOk;
    if (op == "prepare") return Prepare();
    if (op == "release") return Release();
    return RewriteIncoming(op);
  }

 private:
  void Say(const std::string& line) const {
    std::cerr << "vtm hook: domain " << name_ << (domain_.uuid.empty() ? "" : " (" + domain_.uuid + ")") << ": "
              << line << "\n";
  }
  int Refuse(const std::string& why) const {
    Say(why);
    return kError;
  }

  Result<api::Vm> Show() const {
    api::Request req;
    req.mutable_show()->set_uuid(domain_.uuid);
    VTM_ASSIGN_OR_RETURN(api::Response resp, Call(socket_, req, kHookTimeout));
    return resp.vms(0);
  }

  Result<api::Vm> Create() const {
    api::Request req;
    auto* c = req.mutable_create();
    c->set_uuid(domain_.uuid);
    // The domain's name labels the vTPM where vtmd accepts it as a name.
    if (ValidateVmName(name_).ok() && !NormalizeUuid(name_).ok()) c->set_name(name_);
    c->set_service(domain_.service);
    auto resp = Call(socket_, req, kHookTimeout);
    if (!resp.ok() && resp.error().code() == ErrorCode::kAlreadyExists && !c->name().empty()) {
      c->clear_name();  // another vTPM carries that name; the UUID identifies this one
      resp = Call(socket_, req, kHookTimeout);
    }
    if (!resp.ok()) return std::move(resp).error();
    return resp->vms(0);
  }

  int Prepare() {
    auto vm = Show();
    if (!vm.ok() && vm.error().code() == ErrorCode::kNotFound) {
      if (!domain_.create) {
        return Refuse("has no vTPM and its <vtm:vtpm create='no'> forbids creating one here; create it with "
                      "`vtmctl create --uuid " + domain_.uuid + "` (or migrate it in), then start the domain");
      }
      vm = Create();
      if (vm.ok()) Say("created its vTPM");
    }
    if (!vm.ok()) return Refuse("cannot prepare its vTPM: " + vm.error().message());
    const bool incoming = vm->state() == api::VM_STATE_INCOMING;
    if (domain_.sockets.empty()) {
      return Refuse("is marked for a vTPM but has no <tpm> with an external backend; add it with `virsh dumpxml " +
                    name_ + " | vtmctl libvirt patch - > " + name_ + ".xml && virsh define " + name_ + ".xml`");
    }
    for (const auto& s : domain_.sockets) {
      if (s != vm->tpm_socket()) {
        return Refuse("its <tpm> connects to " + s + " but its vTPM listens on " + vm->tpm_socket() +
                      "; fix the XML with `virsh dumpxml " + name_ + " | vtmctl libvirt patch - > " + name_ +
                      ".xml && virsh define " + name_ + ".xml`");
      }
    }
    if (domain_.partition != QemuPartition(domain_.uuid)) {
      // Not refused here: with vtmd's default (qemu-peer-check = warn) the vTPM still takes this
      // QEMU; with require it will refuse it, and QEMU's start fails.
      Say("its QEMU is not placed in cgroup partition " + QemuPartition(domain_.uuid) +
          ", so its vTPM cannot tell it from another VM's QEMU (vtmd with qemu-peer-check = require refuses it); "
          "add it with `virsh dumpxml " +
          name_ + " | vtmctl libvirt patch - --cgroup-partition > " + name_ + ".xml && virsh define " + name_ +
          ".xml`");
    }
    if (incoming) {
      // libvirt starts the QEMU that receives a live migration: it attaches to the instance
      // vtm's migration started here, which becomes the vTPM when the migration commits.
      Say("its vTPM is arriving by vtm's migration; QEMU attaches to the incoming instance, active once "
          "`vtmctl migrate commit` runs on the source");
      return CheckQemuCanConnect(vm->tpm_socket());
    }
    api::Request start;
    start.mutable_start()->set_uuid(domain_.uuid);
    auto started = Call(socket_, start, kHookTimeout);
    if (!started.ok()) return Refuse("cannot start its vTPM: " + started.error().message());
    return CheckQemuCanConnect(started->vms(0).tpm_socket());
  }

  // QEMU fails with a bare "Permission denied" when tpm.sock belongs to another user; say why
  // before libvirt starts it.
  int CheckQemuCanConnect(const std::string& socket) const {
    auto user = libvirt::DetectQemuUser(qemu_conf_, libvirt::SystemUserExists);
    if (!user.ok()) {
      Say("cannot tell which user QEMU runs as (" + user.error().message() + "); not checking tpm.sock's owner");
      return kOk;
    }
    auto ids = libvirt::ResolveQemuUser(user->user);
    struct stat st;
    if (!ids.ok() || ids->uid == 0 || ::stat(socket.c_str(), &st) != 0 || st.st_uid == ids->uid) return kOk;
    return Refuse(socket + " belongs to uid " + std::to_string(st.st_uid) + " but libvirt runs QEMU as " + user->user +
                  " (uid " + std::to_string(ids->uid) + ", " + user->source +
                  "), so QEMU would fail with 'Permission denied'. Set `qemu-user = " + user->user +
                  "` in /etc/vtm/vtmd.conf (or remove the setting to follow libvirt) and restart vtmd; it corrects "
                  "the sockets of running vTPMs");
  }

  int Release() const {
    // A vTPM in a migration stays: the migration's commit or abort decides what becomes of it
    // (here the QEMU that left, or the one that never took over).
    if (auto vm = Show();
        vm.ok() && (vm->state() == api::VM_STATE_MIGRATING_OUT || vm->state() == api::VM_STATE_INCOMING)) {
      Say(std::string("its vTPM is ") + (vm->state() == api::VM_STATE_INCOMING ? "arriving" : "leaving") +
          " by vtm's migration and stays until `vtmctl migrate commit` or `abort` on the source");
      return kOk;
    }
    // QEMU is gone when libvirt releases the domain, so nothing is attached any more.
    api::Request req;
    req.mutable_stop()->set_uuid(domain_.uuid);
    req.mutable_stop()->set_force(true);
    auto stopped = Call(socket_, req, kHookTimeout);
    if (!stopped.ok() && stopped.error().code() != ErrorCode::kNotFound) {
      Say("could not stop its vTPM: " + stopped.error().message() + "; stop it with `vtmctl stop " + domain_.uuid + "`");
    }
    return kOk;  // libvirt ignores release's exit code
  }

  int RewriteIncoming(const std::string& op) const {
    auto vm = Show();
    if (!vm.ok() && vm.error().code() == ErrorCode::kNotFound && op == "migrate") {
      // A fresh vTPM here could not read the state QEMU brings along (it is encrypted with the
      // source vTPM's migration key): the vTPM must come first.
      return Refuse("its vTPM is not on this host; move the vTPM with vtm's migration first (a fresh vTPM "
                    "could not take over the guest's TPM state), or undefine the domain's <tpm> to migrate without it");
    }
    if (!vm.ok() && vm.error().code() != ErrorCode::kNotFound) {
      return Refuse("cannot look up its vTPM: " + vm.error().message());
    }
    const std::string socket = vm.ok() ? vm->tpm_socket() : SocketFor(run_dir_, domain_.uuid);
    auto rewritten = libvirt::RewriteTpmSocket(xml_, socket);
    if (!rewritten.ok()) return Refuse(rewritten.error().message());
    if (*rewritten) std::cout << **rewritten;
    return kOk;
  }

  std::string socket_, qemu_conf_, name_, run_dir_, xml_;
  libvirt::DomainVtpm domain_;
};

// ---- operator commands -----------------------------------------------------------------------

int QemuUserCommand(const Args& a) {
  auto user = libvirt::DetectQemuUser(Opt(a, "--qemu-conf", "/etc/libvirt/qemu.conf"), libvirt::SystemUserExists);
  if (!user.ok()) return Fail("qemu-user", user.error());
  std::cout << user->user << "\t(" << user->source << ")\n";
  return kOk;
}

int XmlCommand(const Args& a, const std::string& socket) {
  if (a.positional.size() != 1) {
    std::cerr << "vtmctl libvirt xml: name one VM\n";
    return kUsage;
  }
  api::Request req;
  req.mutable_show()->set_uuid(a.positional[0]);
  auto resp = Call(socket, req);
  if (!resp.ok()) return Fail("xml", resp.error());
  libvirt::TpmSettings s;
  s.socket = resp->vms(0).tpm_socket();
  s.model = Opt(a, "--model", "tpm-crb");
  s.service = resp->vms(0).service();
  std::cout << "<!-- in <devices>: -->\n" << libvirt::TpmElement(s) << "<!-- in <metadata>: -->\n"
            << libvirt::MetadataElement(s);
  return kOk;
}

int PatchCommand(const Args& a, const std::string& socket) {
  if (a.positional.size() != 1) {
    std::cerr << "vtmctl libvirt patch: give the domain XML file (or - for stdin)\n";
    return kUsage;
  }
  auto xml = ReadInput(a.positional[0]);
  if (!xml.ok()) return Fail("patch", xml.error());
  auto domain = libvirt::ReadDomain(*xml);
  if (!domain.ok()) return Fail("patch", domain.error());
  auto run_dir = VtmdRunDir(socket, std::chrono::milliseconds(0));
  if (!run_dir.ok()) return Fail("patch", run_dir.error());
  libvirt::TpmSettings s;
  s.socket = SocketFor(*run_dir, domain->uuid);
  s.model = Opt(a, "--model", "tpm-crb");
  s.service = Opt(a, "--service", domain->service);
  s.create = a.flags.count("--no-create") == 0;
  if (a.flags.count("--cgroup-partition") != 0) s.partition = QemuPartition(domain->uuid);
  auto patched = libvirt::PatchDomain(*xml, s);
  if (!patched.ok()) return Fail("patch", patched.error());
  std::cout << *patched;
  return kOk;
}

int OrphansCommand(const Args& a, const std::string& socket) {
  if (!a.options.count("--defined") || !a.positional.empty()) {
    std::cerr << "vtmctl libvirt orphans: give the defined domains with --defined FILE|- "
                 "(e.g. `virsh list --all --uuid | vtmctl libvirt orphans --defined -`)\n";
    return kUsage;
  }
  auto text = ReadInput(a.options.at("--defined"));
  if (!text.ok()) return Fail("orphans", text.error());
  auto defined = libvirt::ParseDomainUuidList(*text);
  if (!defined.ok()) return Fail("orphans", defined.error());
  if (defined->empty() && !a.flags.count("--none-defined")) {
    std::cerr << "vtmctl libvirt orphans: the list of defined domains is empty; if libvirt really has no domains, "
                 "add --none-defined (a failed `virsh list` must not make every vTPM look orphaned)\n";
    return kUsage;
  }
  api::Request list;
  list.mutable_list();
  auto resp = Call(socket, list);
  if (!resp.ok()) return Fail("orphans", resp.error());
  const bool remove = a.flags.count("--delete") > 0;
  int exit = kOk;
  for (const auto& vm : resp->vms()) {
    if (defined->count(vm.uuid())) continue;
    const bool running = vm.state() == api::VM_STATE_RUNNING || vm.state() == api::VM_STATE_STARTING ||
                         vm.state() == api::VM_STATE_STOPPING;
    if (!remove) {
      std::cout << vm.uuid() << "\t" << vm.name() << (running ? "\trunning (not deleted by --delete)" : "") << "\n";
      continue;
    }
    if (running) {
      std::cerr << "vtmctl libvirt orphans: " << vm.uuid() << " has no domain but its vTPM is running; not deleted "
                << "(stop it first if it is really unused)\n";
      exit = kConflict;
      continue;
    }
    api::Request del;
    del.mutable_delete_()->set_uuid(vm.uuid());
    auto deleted = Call(socket, del);
    if (!deleted.ok()) {
      std::cerr << "vtmctl libvirt orphans: deleting " << vm.uuid() << ": " << deleted.error().message() << "\n";
      exit = ExitFor(deleted.error());
      continue;
    }
    std::cout << "deleted " << vm.uuid() << "\t" << vm.name() << "\n";
  }
  return exit;
}

}  // namespace

int RunLibvirtCommand(const std::vector<std::string>& args, const std::string& vtmd_socket) {
  const std::string sub = args.empty() ? "" : args[0];
  const std::vector<std::string> rest(args.begin() + (args.empty() ? 0 : 1), args.end());
  if (sub == "hook") {
    // libvirt passes: domain name, operation, sub-operation, extra; the XML on stdin.
    std::string qemu_conf = "/etc/libvirt/qemu.conf";
    size_t i = 0;
    if (rest.size() >= 2 && rest[0] == "--qemu-conf") {
      qemu_conf = rest[1];
      i = 2;
    }
    if (rest.size() - i != 4) {
      std::cerr << "vtmctl libvirt hook: expected DOMAIN OP SUBOP EXTRA as libvirt passes them\n";
      return kUsage;
    }
    std::string xml(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>{});
    Hook hook(vtmd_socket, qemu_conf);
    return hook.Run(rest[i], rest[i + 1], rest[i + 2], xml);
  }
  if (sub == "qemu-user") {
    auto a = SplitArgs(rest, {"--qemu-conf"}, {});
    if (!a.ok() || !a->positional.empty()) {
      std::cerr << kLibvirtUsage;
      return kUsage;
    }
    return QemuUserCommand(*a);
  }
  if (sub == "xml" || sub == "patch") {
    auto a = SplitArgs(rest, {"--model", "--service"}, {"--no-create", "--cgroup-partition"});
    if (!a.ok()) return Fail(sub, a.error());
    return sub == "xml" ? XmlCommand(*a, vtmd_socket) : PatchCommand(*a, vtmd_socket);
  }
  if (sub == "orphans") {
    auto a = SplitArgs(rest, {"--defined"}, {"--delete", "--none-defined"});
    if (!a.ok()) return Fail(sub, a.error());
    return OrphansCommand(*a, vtmd_socket);
  }
  std::cerr << kLibvirtUsage;
  return kUsage;
}

}  // namespace vtm
