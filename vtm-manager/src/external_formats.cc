// swtpm_setup's EK parameter and tpm2-tools' credential file.
#include "external_formats.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>

#include <map>
#include <memory>
#include <sstream>

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

uint32_t BigEndian(const std::string& b, size_t at, size_t n) {
  uint32_t v = 0;
  for (size_t i = 0; i < n; ++i) v = (v << 8) | static_cast<uint8_t>(b[at + i]);
  return v;
}

}  // namespace

Result<std::string> SpkiFromSwtpmSetupEkParam(const std::string& param) {
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


Result<TpmCredential> ParseTpm2ToolsCredential(const std::string& bytes) {
  constexpr uint32_t kMagic = 0xBADCC0DE;
  if (bytes.size() < 8 || BigEndian(bytes, 0, 4) != kMagic) {
    return Error(ErrorCode::kInvalidArgument, "not a tpm2_makecredential output (no 0xBADCC0DE header)");
  }
  if (BigEndian(bytes, 4, 4) != 1) {
    return Error(ErrorCode::kInvalidArgument,
                 "tpm2_makecredential output of unknown version " + std::to_string(BigEndian(bytes, 4, 4)));
  }
  size_t off = 8;
  std::string parts[2];
  for (std::string& part : parts) {
    if (bytes.size() - off < 2) return Error(ErrorCode::kInvalidArgument, "the credential file is truncated");
    size_t len = 2 + BigEndian(bytes, off, 2);
    if (bytes.size() - off < len) return Error(ErrorCode::kInvalidArgument, "the credential file is truncated");
    part = bytes.substr(off, len);
    off += len;
  }
  if (off != bytes.size()) {
    return Error(ErrorCode::kInvalidArgument,
                 "the credential file has " + std::to_string(bytes.size() - off) + " stray bytes at its end");
  }
  return TpmCredential{parts[0], parts[1]};
}

}  // namespace vtm
