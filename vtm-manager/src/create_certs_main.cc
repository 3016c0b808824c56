// vtm-create-certs: a create_certs_tool for swtpm_setup, so that plain `swtpm_setup --config
// FILE --create-ek-cert` users get EK certificates from the same host CA as vtmd's own vTPMs.
// swtpm_setup runs it once per certificate:
//   vtm-create-certs --type ek --ek <RSA modulus hex | x=<hex>,y=<hex>[,id=secp256r1|secp384r1]>
//                    --dir D [--tpm-manufacturer M --tpm-model X --tpm-version V --vmid ID]
//                    [--configfile F] [...]
// and expects D/ek.cert (DER). The config file (create_certs_tool_config in swtpm_setup.conf)
// may hold "socket = PATH" for vtmd's socket. Platform certificates are not issued.
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>
#include <openssl/crypto.h>

#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include "api_client.h"
#include "vtm.pb.h"
#include "vtm/fs.h"
#include "vtm/x509.h"

namespace vtm {
namespace {

// Bytes from a hex string; empty on anything that is not hex.
std::string FromHex(const std::string& hex) {
  long len = 0;
  unsigned char* buf = OPENSSL_hexstr2buf(hex.c_str(), &len);
  if (buf == nullptr) return "";
  std::string out(reinterpret_cast<char*>(buf), static_cast<size_t>(len));
  OPENSSL_free(buf);
  return out;
}

// DER SubjectPublicKeyInfo from swtpm_setup's --ek parameter.
Result<std::string> SpkiFromEkParam(const std::string& param) {
  using PkeyCtx = std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)>;
  using Bld = std::unique_ptr<OSSL_PARAM_BLD, decltype(&OSSL_PARAM_BLD_free)>;
  Bld bld(OSSL_PARAM_BLD_new(), OSSL_PARAM_BLD_free);
  std::unique_ptr<BIGNUM, decltype(&BN_free)> n(nullptr, BN_free), e(BN_new(), BN_free);
  const char* type = "RSA";
  std::string point;
  if (param.find("x=") != std::string::npos) {
    std::map<std::string, std::string> kv;
    std::istringstream in(param);
    std::string item;
    while (std::getline(in, item, ',')) {
      auto eq = item.find('=');
      if (eq != std::string::npos) kv[item.substr(0, eq)] = item.substr(eq + 1);
    }
    std::string curve = kv.count("id") ? kv["id"] : "secp256r1";
    const char* group = curve == "secp384r1" ? "P-384" : curve == "secp256r1" ? "P-256" : nullptr;
    std::string x = FromHex(kv["x"]), y = FromHex(kv["y"]);
    if (group == nullptr || x.empty() || y.empty()) {
      return Error(ErrorCode::kInvalidArgument, "--ek: expected x=<hex>,y=<hex>[,id=secp256r1|secp384r1]");
    }
    point = std::string(1, '\x04') + x + y;
    type = "EC";
    OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0);
    OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size());
  } else {
    std::string mod = FromHex(param);
    if (mod.size() < 128) return Error(ErrorCode::kInvalidArgument, "--ek: expected an RSA modulus in hex");
    n.reset(BN_bin2bn(reinterpret_cast<const unsigned char*>(mod.data()), static_cast<int>(mod.size()), nullptr));
    BN_set_word(e.get(), 65537);
    OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get());
    OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get());
  }
  std::unique_ptr<OSSL_PARAM, decltype(&OSSL_PARAM_free)> params(OSSL_PARAM_BLD_to_param(bld.get()), OSSL_PARAM_free);
  PkeyCtx ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr), EVP_PKEY_CTX_free);
  EVP_PKEY* pkey = nullptr;
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
    return Error(ErrorCode::kInvalidArgument, "--ek: not a valid public key");
  }
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(pkey, &der);
  EVP_PKEY_free(pkey);
  if (len <= 0) return Error(ErrorCode::kInternal, "encoding the EK public key");
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

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
  std::string socket = std::getenv("VTM_SOCKET") ? std::getenv("VTM_SOCKET") : "/run/vtm/vtmd.sock";
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
  auto spki = SpkiFromEkParam(opt["ek"]);
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
    std::cerr << "vtm-create-certs: vtmd refused: " << resp->error() << "\n";
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
