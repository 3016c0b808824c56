// Labelled signed data: the label format and CMS verification; see labelled_data.h.
#include "vtm/labelled_data.h"

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cctype>

#include "internal/service_chain.h"
#include "vtm/hex.h"
#include "vtm/ossl_ptr.h"

namespace vtm::tc {
namespace {

using CmsPtr = OsslPtr<CMS_ContentInfo, CMS_ContentInfo_free>;
using BioPtr = OsslPtr<BIO, BIO_free_all>;

constexpr size_t kMaxLabelBytes = size_t{64} * 1024;
constexpr size_t kMaxFields = 512;

Error BadLabel(size_t line, const std::string& what) {
  return Error(ErrorCode::kInvalidArgument, "the data's label, line " + std::to_string(line) + ": " + what);
}

bool IsLowerHex(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool IsEnvName(std::string_view s) {
  return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-';
  });
}

bool IsPrintableLine(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x20 && c != 0x7f; });
}

std::string ToLower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

Result<LabelledContent> ParseLabelledContent(std::string_view content) {
  size_t end = content.find("\n\n");
  if (end == std::string_view::npos) {
    return Error(ErrorCode::kInvalidArgument, "the data has no label (no blank line ends a label): not vtm labelled data");
  }
  if (end > kMaxLabelBytes) return Error(ErrorCode::kInvalidArgument, "the data's label exceeds 64 KiB");
  LabelledContent out;
  std::string_view head = content.substr(0, end + 1);
  out.data = std::string(content.substr(end + 2));
  bool seen_vm = false, seen_service = false, seen_cert = false, seen_created = false, seen_nonce = false;
  size_t line_no = 0;
  size_t pos = 0;
  while (pos < head.size()) {
    size_t nl = head.find('\n', pos);
    std::string_view line = head.substr(pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (line_no == 1) {
      if (line != kLabelMagic) {
        return BadLabel(1, "expected '" + std::string(kLabelMagic) + "' (not vtm labelled data, or another version)");
      }
      continue;
    }
    if (line_no > kMaxFields) return BadLabel(line_no, "too many fields");
    if (!IsPrintableLine(line)) return BadLabel(line_no, "control characters in a field");
    size_t colon = line.find(": ");
    if (colon == std::string_view::npos) return BadLabel(line_no, "expected 'name: value'");
    std::string name(line.substr(0, colon));
    std::string value(line.substr(colon + 2));
    auto once = [&](bool& seen) -> Status {
      if (seen) return BadLabel(line_no, "field '" + name + "' appears twice");
      seen = true;
      return OkStatus();
    };
    if (name == "vm") {
      VTM_RETURN_IF_ERROR(once(seen_vm));
      if (value.empty()) return BadLabel(line_no, "empty VM UUID");
      out.label.vm_uuid = value;
    } else if (name == "service") {
      VTM_RETURN_IF_ERROR(once(seen_service));
      out.label.service = value;
    } else if (name == "ik-cert-sha256") {
      VTM_RETURN_IF_ERROR(once(seen_cert));
      if (value.size() != 64 || !IsLowerHex(value)) return BadLabel(line_no, "ik-cert-sha256 is not 64 lower-case hex digits");
      out.label.ik_cert_sha256 = value;
    } else if (name == "created") {
      VTM_RETURN_IF_ERROR(once(seen_created));
      if (value.empty() || value.size() > 18 || !std::all_of(value.begin(), value.end(), ::isdigit)) {
        return BadLabel(line_no, "created is not a number of seconds");
      }
      out.label.created = std::stoll(value);
    } else if (name == "nonce") {
      VTM_RETURN_IF_ERROR(once(seen_nonce));
      if (value.size() % 2 != 0 || value.size() > 128 || !IsLowerHex(value)) {
        return BadLabel(line_no, "nonce is not 1 to 64 bytes of lower-case hex");
      }
      out.label.nonce = value;
    } else if (name.rfind("env.", 0) == 0) {
      if (!IsEnvName(std::string_view(name).substr(4))) return BadLabel(line_no, "bad environment field name '" + name + "'");
      out.label.environment.emplace_back(name.substr(4), value);
    } else {
      return BadLabel(line_no, "unknown field '" + name + "'");
    }
  }
  if (!seen_vm) return Error(ErrorCode::kInvalidArgument, "the data's label names no VM (field 'vm')");
  if (!seen_service) return Error(ErrorCode::kInvalidArgument, "the data's label names no service (field 'service')");
  if (!seen_cert) return Error(ErrorCode::kInvalidArgument, "the data's label has no ik-cert-sha256");
  if (!seen_created) return Error(ErrorCode::kInvalidArgument, "the data's label has no 'created' time");
  return out;
}

std::string SerializeLabelledContent(const LabelledContent& c) {
  std::string out = std::string(kLabelMagic) + "\n";
  out += "vm: " + c.label.vm_uuid + "\n";
  out += "service: " + c.label.service + "\n";
  out += "ik-cert-sha256: " + c.label.ik_cert_sha256 + "\n";
  out += "created: " + std::to_string(c.label.created) + "\n";
  if (!c.label.nonce.empty()) out += "nonce: " + c.label.nonce + "\n";
  for (const auto& [name, value] : c.label.environment) {
    out.append("env.").append(name).append(": ").append(value).append("\n");
  }
  out += "\n";
  out += c.data;
  return out;
}

Result<VerifiedData> VerifyLabelledData(std::string_view cms_der, const SignedDataExpectation& expect) {
  BioPtr in(BIO_new_mem_buf(cms_der.data(), static_cast<int>(cms_der.size())));
  CmsPtr cms(d2i_CMS_bio(in.get(), nullptr));
  if (!cms) return OpenSslError(ErrorCode::kInvalidArgument, "the signed data is not a DER CMS structure");
  if (OBJ_obj2nid(CMS_get0_type(cms.get())) != NID_pkcs7_signed) {
    return Error(ErrorCode::kInvalidArgument, "the signed data is a CMS structure but not SignedData");
  }
  STACK_OF(CMS_SignerInfo)* signers = CMS_get0_SignerInfos(cms.get());
  if (sk_CMS_SignerInfo_num(signers) != 1) {
    return Error(ErrorCode::kInvalidArgument, "the signed data must carry exactly one signature (by the IK), it has " +
                                                  std::to_string(sk_CMS_SignerInfo_num(signers)));
  }
  VTM_ASSIGN_OR_RETURN(internal::X509StorePtr store,
                       internal::MakeTrustStore(expect.trusted_ca_pem, expect.crls, expect.allow_missing_crl));
  // The IK certificate's EKU is TLS, not e-mail protection: check the chain for any purpose.
  X509_STORE_set_purpose(store.get(), X509_PURPOSE_ANY);

  // First the chain (with CRLs) on its own, for a precise reason; then the signature.
  CMS_SignerInfo* si = sk_CMS_SignerInfo_value(signers, 0);
  STACK_OF(X509)* certs = CMS_get1_certs(cms.get());
  X509* signer = nullptr;
  for (int i = 0; certs != nullptr && i < sk_X509_num(certs); ++i) {
    if (CMS_SignerInfo_cert_cmp(si, sk_X509_value(certs, i)) == 0) signer = sk_X509_value(certs, i);
  }
  if (signer == nullptr) {
    sk_X509_pop_free(certs, X509_free);
    return Error(ErrorCode::kInvalidArgument, "the signed data does not carry the signer's IK certificate");
  }
  X509_STORE_CTX* vctx = X509_STORE_CTX_new();
  if (vctx == nullptr || X509_STORE_CTX_init(vctx, store.get(), signer, certs) != 1) {
    X509_STORE_CTX_free(vctx);
    sk_X509_pop_free(certs, X509_free);
    return OpenSslError(ErrorCode::kInternal, "X509_STORE_CTX_init");
  }
  int ok = X509_verify_cert(vctx);
  int verr = X509_STORE_CTX_get_error(vctx);
  X509* bad = X509_STORE_CTX_get_current_cert(vctx);
  if (ok != 1) {
    Error e = internal::ChainError(verr, bad, "the signer");
    X509_STORE_CTX_free(vctx);
    sk_X509_pop_free(certs, X509_free);
    ERR_clear_error();
    return e;
  }
  X509_STORE_CTX_free(vctx);
  auto identity = internal::CheckIkCertificate(signer, "", "", "the signer");
  sk_X509_pop_free(certs, X509_free);
  if (!identity.ok()) return std::move(identity).error();

  BioPtr out(BIO_new(BIO_s_mem()));
  if (CMS_verify(cms.get(), nullptr, store.get(), nullptr, out.get(), CMS_BINARY) != 1) {
    return OpenSslError(ErrorCode::kDataLoss,
                        "the signature does not verify: the data or its label was changed after the IK signed it");
  }
  char* p = nullptr;
  long n = BIO_get_mem_data(out.get(), &p);
  std::string content(p, static_cast<size_t>(n));

  VerifiedData v;
  VTM_ASSIGN_OR_RETURN(v.content, ParseLabelledContent(content));
  v.signer_subject = identity->subject;
  v.signer_certificate_der = identity->certificate_der;
  const Label& l = v.content.label;
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int dlen = 0;
  EVP_Digest(identity->certificate_der.data(), identity->certificate_der.size(), digest, &dlen, EVP_sha256(), nullptr);
  std::string cert_sha = ToLower(HexEncode(std::string(reinterpret_cast<char*>(digest), dlen)));
  if (l.vm_uuid != identity->vm_uuid) {
    return Error(ErrorCode::kDataLoss, "the label names VM " + l.vm_uuid + " but the data was signed by the IK of VM " +
                                           identity->vm_uuid + ": the label is forged");
  }
  if (l.service != identity->service) {
    return Error(ErrorCode::kDataLoss, "the label names service '" + l.service + "' but the signer's IK certificate is for '" +
                                           identity->service + "': the label is forged");
  }
  if (l.ik_cert_sha256 != cert_sha) {
    return Error(ErrorCode::kDataLoss, "the label names another IK certificate (sha256 " + l.ik_cert_sha256 +
                                           ") than the one that signed (" + cert_sha + ")");
  }
  if (!expect.vm_uuid.empty() && l.vm_uuid != expect.vm_uuid) {
    return Error(ErrorCode::kPermissionDenied,
                 "the data was signed by VM " + l.vm_uuid + ", not the expected VM " + expect.vm_uuid);
  }
  if (!expect.service.empty() && l.service != expect.service) {
    return Error(ErrorCode::kPermissionDenied,
                 "the data was signed by service '" + l.service + "', not the expected '" + expect.service + "'");
  }
  if (!expect.nonce.empty() && l.nonce != ToLower(expect.nonce)) {
    return Error(ErrorCode::kPermissionDenied, l.nonce.empty() ? "the data carries no nonce, the verifier expected " + expect.nonce
                                                               : "the data carries nonce " + l.nonce + ", not the expected " +
                                                                     expect.nonce + ": a replay of older data");
  }
  return v;
}

}  // namespace vtm::tc
