// A fresh endpoint key and its host-CA certificate.
#include "host_tls.h"

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <ctime>

#include "vtm/ossl_ptr.h"
#include "vtm/x509.h"

namespace vtm {
namespace {

using EvpPkeyPtr = OsslPtr<EVP_PKEY, EVP_PKEY_free>;

// Endpoint certificates are reissued at every vtmd start; a year bounds one that outlives its host.
constexpr std::time_t kCertificateLifetime = std::time_t{365} * 24 * 3600;

struct EndpointKey {
  SecretBytes private_der;  // PKCS#8
  std::string spki_der;
};

Result<EndpointKey> NewEndpointKey(const std::string& purpose) {
  EvpPkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!key) return Error(ErrorCode::kInternal, "generating the " + purpose + " endpoint's key failed");
  EndpointKey out;
  unsigned char* der = nullptr;
  int len = i2d_PrivateKey(key.get(), &der);
  if (len <= 0) return Error(ErrorCode::kInternal, "encoding the " + purpose + " endpoint's key failed");
  out.private_der = SecretBytes(der, static_cast<size_t>(len));
  OPENSSL_clear_free(der, static_cast<size_t>(len));
  der = nullptr;
  len = i2d_PUBKEY(key.get(), &der);
  if (len <= 0) return Error(ErrorCode::kInternal, "encoding the " + purpose + " endpoint's public key failed");
  out.spki_der.assign(reinterpret_cast<const char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

}  // namespace

Result<TlsCredentials> IssueHostTlsCredentials(HostCa& ca, Registry& registry, const std::string& host_name,
                                               const std::string& purpose, std::string trusted_ca_pem,
                                               uint64_t* serial) {
  VTM_ASSIGN_OR_RETURN(EndpointKey key, NewEndpointKey(purpose));
  VTM_ASSIGN_OR_RETURN(CertRecord cert,
                       ca.Issue(registry, "vtmd:" + host_name, "tls-" + purpose,
                                [&](ca::Signer& signer, const std::string& issuer, uint64_t serial_number) {
                                  ca::HostTlsCertRequest req;
                                  req.spki_der = key.spki_der;
                                  req.host_name = host_name;
                                  req.purpose = purpose;
                                  req.serial = serial_number;
                                  req.validity.not_before = std::time(nullptr) - 60;
                                  req.validity.not_after = std::time(nullptr) + kCertificateLifetime;
                                  return ca::IssueHostTlsCertificate(signer, issuer, req);
                                }));
  if (serial != nullptr) *serial = cert.serial;
  TlsCredentials creds;
  creds.certificate_der = cert.der;
  creds.chain_der = ca::SplitDerCertificates(ca.ca_chain_der());
  creds.private_key = std::move(key.private_der);
  creds.trusted_ca_pem = std::move(trusted_ca_pem);
  return creds;
}

}  // namespace vtm
