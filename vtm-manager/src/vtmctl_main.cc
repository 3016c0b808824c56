// vtmctl: the operator's CLI for vtmd. Human-readable output by default, --json for scripts
// (the protobuf JSON mapping of the API messages). Exit codes are documented in
// docs/operator-guide.md and stable for scripts.
#include <google/protobuf/util/json_util.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <iomanip>
#include <iostream>
#include <string>
#include <vector>

#include "api_client.h"
#include "external_formats.h"
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
  stop VM                              stop the VM's vTPM (its state is kept)
  delete VM                            destroy the VM's vTPM state and keys (must be stopped)
  list                                 list all vTPMs
  show VM                              show one vTPM
  certs VM [--kind ek-ecc|ek-rsa|ak|ik] print the VM's vTPM certificates (PEM)
  host                                 show the host TPM and policy vtmd uses
  ca show                              print the host CA certificate (PEM)
  ca csr                               print a CSR for the host CA key, for a fleet CA
  ca install CERT.pem [CHAIN.pem]      install the fleet CA's certificate for the CA key
  ca crl                               print a CRL of every revoked vTPM certificate
  ca activate-credential FILE          activate a tpm2_makecredential output made for the
                                       host AK with the host EK; prints the secret (hex)

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
  for (auto& c : n) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
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

int Run(int argc, char** argv) {
  const char* socket_env = std::getenv("VTM_SOCKET");
  std::string socket = socket_env != nullptr ? socket_env : "/run/vtm/vtmd.sock";
  bool json = false;
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
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
  std::string kind_filter;
  api::Request req;
  auto need_vm = [&](api::VmRef* ref) -> bool {
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
    if (!need_vm(req.mutable_stop())) return kUsage_;
  } else if (cmd == "delete") {
    if (!need_vm(req.mutable_delete_())) return kUsage_;
  } else if (cmd == "show") {
    if (!need_vm(req.mutable_show())) return kUsage_;
  } else if (cmd == "list") {
    req.mutable_list();
  } else if (cmd == "host") {
    req.mutable_host();
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
    } else if (sub == "csr" && args.size() == 2) {
      req.mutable_ca_csr();
    } else if (sub == "crl" && args.size() == 2) {
      req.mutable_ca_crl();
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
      std::cerr << "vtmctl ca: use 'ca show', 'ca csr', 'ca install CERT [CHAIN]', 'ca crl' or "
                   "'ca activate-credential FILE'\n";
      return kUsage_;
    }
  } else {
    std::cerr << "vtmctl: unknown command '" << cmd << "'\n" << kUsage;
    return kUsage_;
  }

  auto resp = CallVtmd(socket, req);
  if (!resp.ok()) {
    std::cerr << "vtmctl: " << resp.error().message() << "\n";
    return resp.error().code() == ErrorCode::kPermissionDenied ? kDenied : kUnreachable;
  }
  if (json) {
    google::protobuf::util::JsonPrintOptions o;
    o.add_whitespace = true;
    o.always_print_primitive_fields = true;
    o.preserve_proto_field_names = true;
    std::string out;
    (void)google::protobuf::util::MessageToJsonString(*resp, &out, o);
    std::cout << out;
  }
  if (resp->status() != api::STATUS_OK) {
    std::cerr << "vtmctl " << cmd << ": " << resp->error() << "\n";
    return ExitFor(resp->status());
  }
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
  } else if (cmd == "certs") {
    bool any = false;
    for (const auto& c : resp->certificates()) {
      if (!kind_filter.empty() && c.kind() != kind_filter) continue;
      any = true;
      if (kind_filter.empty()) {
        std::cout << "# " << c.kind() << " serial " << c.serial() << " NV 0x" << std::hex << c.nv_index() << std::dec
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
    else if (args[1] == "install") std::cout << "installed the fleet-CA-issued certificate for the host CA\n";
    else if (args[1] == "activate-credential") {
      std::cout << HexEncode(resp->secret()) << "\n";
    }
    else std::cout << resp->pem();
  } else if (!resp->vms().empty()) {
    PrintVm(resp->vms(0));
  }
  return kOk;
}

}  // namespace
}  // namespace vtm

int main(int argc, char** argv) { return vtm::Run(argc, argv); }
