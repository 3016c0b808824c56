// vtm-create-certs: a create_certs_tool for swtpm_setup, so that plain `swtpm_setup --config
// FILE --create-ek-cert` users get EK certificates from the same host CA as vtmd's own vTPMs.
// swtpm_setup runs it once per certificate:
//   vtm-create-certs --type ek --ek <RSA modulus hex | x=<hex>,y=<hex>[,id=secp256r1|secp384r1]>
//                    --dir D [--tpm-manufacturer M --tpm-model X --tpm-version V --vmid ID]
//                    [--configfile F] [...]
// and expects D/ek.cert (DER). The config file (create_certs_tool_config in swtpm_setup.conf)
// may hold "socket = PATH" for vtmd's socket. Platform certificates are not issued.

#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include "api_client.h"
#include "external_formats.h"
#include "vtm.pb.h"
#include "vtm/fs.h"
#include "vtm/x509.h"

namespace vtm {
namespace {

int Run(int argc, char** argv) {
  std::map<std::string, std::string> opt;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) continue;
    // Flags without values that swtpm_setup may pass.
    if (a == "--tpm2" || a == "--allow-signing" || a == "--decryption") continue;
    if (i + 1 < argc) opt[a.substr(2)] = argv[++i];
  }
  if (opt["type"] != "ek") {
    std::cerr << "vtm-create-certs: only EK certificates are issued (got --type '" << opt["type"]
              << "'); run swtpm_setup without --create-platform-cert\n";
    return 1;
  }
  if (opt["dir"].empty() || opt["ek"].empty()) {
    std::cerr << "vtm-create-certs: --ek and --dir are required\n";
    return 2;
  }
  const char* socket_env = std::getenv("VTM_SOCKET");
  std::string socket = socket_env != nullptr ? socket_env : "/run/vtm/vtmd.sock";
  if (!opt["configfile"].empty() && PathExists(opt["configfile"])) {
    auto text = ReadFile(opt["configfile"]);
    std::istringstream in(text.ok() ? *text : "");
    std::string line;
    while (std::getline(in, line)) {
      auto eq = line.find('=');
      if (eq == std::string::npos) continue;
      std::string k = line.substr(0, eq), v = line.substr(eq + 1);
      k.erase(k.find_last_not_of(" \t") + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      v.erase(v.find_last_not_of(" \t\r") + 1);
      if (k == "socket") socket = v;
    }
  }
  auto spki = SpkiFromSwtpmSetupEkParam(opt["ek"]);
  if (!spki.ok()) {
    std::cerr << "vtm-create-certs: " << spki.error().message() << "\n";
    return 2;
  }
  api::Request req;
  auto* r = req.mutable_issue_ek_cert();
  r->set_ek_spki_der(*spki);
  r->set_tpm_manufacturer(opt["tpm-manufacturer"]);
  r->set_tpm_model(opt["tpm-model"]);
  r->set_tpm_version(opt["tpm-version"]);
  r->set_vm_id(opt["vmid"]);
  auto resp = CallVtmd(socket, req);
  if (!resp.ok()) {
    std::cerr << "vtm-create-certs: " << resp.error().message() << "\n";
    return 1;
  }
  if (resp->status() != api::STATUS_OK) {
    std::cerr << "vtm-create-certs: vtmd refused"
              << (resp->status() == api::STATUS_PERMISSION_DENIED ? " (permission denied)" : "") << ": " << resp->error()
              << "\n";
    return 1;
  }
  auto der = ca::CertificateToDer(resp->pem());
  if (!der.ok()) {
    std::cerr << "vtm-create-certs: vtmd sent a malformed certificate\n";
    return 1;
  }
  if (auto st = WriteFileAtomic(opt["dir"] + "/ek.cert", *der, 0644); !st.ok()) {
    std::cerr << "vtm-create-certs: " << st.error().message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace vtm

int main(int argc, char** argv) { return vtm::Run(argc, argv); }
