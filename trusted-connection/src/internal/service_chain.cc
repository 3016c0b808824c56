// Trust store, chain-failure reasons and IK certificate checks; see service_chain.h.
#include "internal/service_chain.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "vtm/x509.h"

namespace vtm::tc::internal {
namespace {

using X509Ptr = OsslPtr<X509, X509_free>;
using X509CrlPtr = OsslPtr<X509_CRL, X509_CRL_free>;
using BioPtr = OsslPtr<BIO, BIO_free_all>;

std::string OneLine(const X509_NAME* name) {
  char buf[512];
  X509_NAME_oneline(name, buf, sizeof buf);
  return buf;
}

Result<X509CrlPtr> ParseCrl(const std::string& pem_or_der, size_t index) {
  BioPtr bio(BIO_new_mem_buf(pem_or_der.data(), static_cast<int>(pem_or_der.size())));
  X509CrlPtr crl(pem_or_der.rfind("-----BEGIN", 0) == 0 ? PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr)
                                                         : d2i_X509_CRL_bio(bio.get(), nullptr));
  if (!crl) {
    return OpenSslError(ErrorCode::kInvalidArgument,
                        "CRL " + std::to_string(index + 1) + " is not a PEM or DER CRL (get one with `vtmctl ca crl`)");
  }
  return crl;
}

}  // namespace

Result<X509StorePtr> MakeTrustStore(const std::string& trusted_ca_pem, const std::vector<std::string>& crls,
                                    bool allow_missing_crl) {
  X509StorePtr store(X509_STORE_new());
  if (!store) return OpenSslError(ErrorCode::kInternal, "X509_STORE_new");
  BioPtr bio(BIO_new_mem_buf(trusted_ca_pem.data(), static_cast<int>(trusted_ca_pem.size())));
  int trusted = 0;
  while (X509Ptr ca{PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)}) {
    if (X509_STORE_add_cert(store.get(), ca.get()) != 1) {
      return OpenSslError(ErrorCode::kInvalidArgument, "adding a trusted CA certificate");
    }
    ++trusted;
  }
  ERR_clear_error();  // the loop ends on "no start line"
  if (trusted == 0) {
    return Error(ErrorCode::kInvalidArgument,
                 "the trusted CA file holds no PEM certificate (use the host CA from `vtmctl ca show` or your fleet CA)");
  }
  for (size_t i = 0; i < crls.size(); ++i) {
    VTM_ASSIGN_OR_RETURN(X509CrlPtr crl, ParseCrl(crls[i], i));
    if (X509_STORE_add_crl(store.get(), crl.get()) != 1) {
      return OpenSslError(ErrorCode::kInvalidArgument, "adding CRL " + std::to_string(i + 1));
    }
  }
  if (crls.empty() && !allow_missing_crl) {
    return Error(ErrorCode::kInvalidArgument,
                 "no CRL given: pass the CA's CRL (`vtmctl ca crl`) so revoked identities are refused, or say "
                 "explicitly that revocation is not checked");
  }
  if (!crls.empty()) X509_STORE_set_flags(store.get(), X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
  return store;
}

Error ChainError(int err, X509* cert, const std::string& whose) {
  std::string subject = cert != nullptr ? OneLine(X509_get_subject_name(cert)) : "?";
  std::string issuer = cert != nullptr ? OneLine(X509_get_issuer_name(cert)) : "?";
  std::string what = "certificate " + subject;
  switch (err) {
    case X509_V_ERR_CERT_REVOKED:
      return Error(ErrorCode::kPermissionDenied,
                   whose + "'s " + what + " is revoked (listed in the CRL of " + issuer + "): refused");
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
      return Error(ErrorCode::kPermissionDenied,
                   whose + "'s " + what + " (issuer " + issuer +
                       ") does not chain to a trusted CA: it was not issued by the host or fleet CA you trust (" +
                       X509_verify_cert_error_string(err) + ")");
    case X509_V_ERR_UNABLE_TO_GET_CRL:
      return Error(ErrorCode::kPermissionDenied, "no CRL of " + issuer + " was given, so " + whose + "'s " + what +
                                                     " cannot be checked for revocation: pass that CA's CRL");
    case X509_V_ERR_CRL_HAS_EXPIRED:
      return Error(ErrorCode::kPermissionDenied,
                   "the CRL of " + issuer + " is out of date: fetch a fresh one (`vtmctl ca crl`)");
    case X509_V_ERR_CRL_SIGNATURE_FAILURE:
      return Error(ErrorCode::kPermissionDenied, "the CRL of " + issuer + " has a bad signature");
    case X509_V_ERR_INVALID_PURPOSE:
      // The host CA gives the TLS EKU only to IKs; an AK certificate (TCG AK purpose) lands here.
      return Error(ErrorCode::kPermissionDenied,
                   whose + "'s " + what + " is not a vTPM IK certificate (its extended key usage is not TLS): the "
                   "key used is not the vTPM's identity key");
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return Error(ErrorCode::kPermissionDenied,
                   whose + "'s " + what + " is outside its validity period (" + X509_verify_cert_error_string(err) + ")");
    default:
      return Error(ErrorCode::kPermissionDenied,
                   whose + "'s " + what + " was refused: " + X509_verify_cert_error_string(err));
  }
}

Result<IkIdentity> CheckIkCertificate(X509* cert, const std::string& expected_vm, const std::string& expected_service,
                                      const std::string& whose) {
  IkIdentity id;
  unsigned char* der = nullptr;
  int n = i2d_X509(cert, &der);
  if (n <= 0) return OpenSslError(ErrorCode::kInternal, "encoding " + whose + "'s certificate");
  id.certificate_der.assign(reinterpret_cast<char*>(der), static_cast<size_t>(n));
  OPENSSL_free(der);
  id.subject = OneLine(X509_get_subject_name(cert));
  // The host CA gives the TLS server EKU only to IK certificates (AKs carry the TCG AK purpose,
  // older AK certificates none: X509_get_extended_key_usage reports "all" for those).
  if ((X509_get_extension_flags(cert) & EXFLAG_XKUSAGE) == 0 || (X509_get_extended_key_usage(cert) & XKU_SSL_SERVER) == 0) {
    return Error(ErrorCode::kPermissionDenied,
                 whose + "'s certificate " + id.subject +
                     " is not a vTPM IK certificate (no TLS server extended key usage): the key used is not the "
                     "vTPM's identity key");
  }
  VTM_ASSIGN_OR_RETURN(ca::CertificateInfo info, ca::ParseCertificate(id.certificate_der));
  static constexpr std::string_view kVmPrefix = "urn:uuid:";
  static constexpr std::string_view kServicePrefix = "vtm:service:";
  bool has_service = false;
  for (const std::string& uri : info.uris) {
    if (uri.rfind(kVmPrefix, 0) == 0 && id.vm_uuid.empty()) id.vm_uuid = uri.substr(kVmPrefix.size());
    if (uri.rfind(kServicePrefix, 0) == 0 && !has_service) {
      id.service = uri.substr(kServicePrefix.size());
      has_service = true;
    }
  }
  if (id.vm_uuid.empty()) {
    return Error(ErrorCode::kPermissionDenied, whose + "'s certificate " + id.subject + " names no VM (URI SAN urn:uuid:)");
  }
  if (!expected_vm.empty() && id.vm_uuid != expected_vm) {
    return Error(ErrorCode::kPermissionDenied, whose + "'s IK certificate is for VM " + id.vm_uuid +
                                                   ", not the expected VM " + expected_vm);
  }
  if (!expected_service.empty() && id.service != expected_service) {
    return Error(ErrorCode::kPermissionDenied,
                 whose + "'s IK certificate is for service '" + id.service + "', not the expected service '" +
                     expected_service + "'");
  }
  return id;
}

}  // namespace vtm::tc::internal
