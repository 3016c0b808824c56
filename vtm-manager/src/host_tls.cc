// A fresh endpoint key and its host-CA certificate; the identity that replaces them after a
// host CA key rotation.
#include "host_tls.h"

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <ctime>

#include "vtm/log.h"
#include "vtm/ossl_ptr.h"
#include "vtm/x509.h"

namespace vtm {
namespace {

using EvpPkeyPtr = OsslPtr<EVP_PKEY, EVP_PKEY_free>;

// Endpoint certificates are reissued at every vtmd start and CA key rotation; a year bounds one that outlives its host.
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

Result<std::unique_ptr<HostTlsIdentity>> HostTlsIdentity::Issue(HostCa& ca, Registry& registry, std::string host_name,
                                                                std::string purpose, std::string trusted_ca_pem) {
  std::unique_ptr<HostTlsIdentity> identity(
      new HostTlsIdentity(ca, registry, std::move(host_name), std::move(purpose), std::move(trusted_ca_pem)));
  VTM_ASSIGN_OR_RETURN(Current current, identity->IssueCurrent());
  MutexLock lock(identity->mu_);
  identity->current_ = std::move(current);
  return identity;
}

Result<HostTlsIdentity::Current> HostTlsIdentity::IssueCurrent() {
  Current out;
  // The chain before the signature: a switch between the two makes the identity look stale
  // (and be issued again), never look current while it is not.
  out.issuer_chain_der = ca_.ca_chain_der();
  VTM_ASSIGN_OR_RETURN(TlsCredentials creds,
                       IssueHostTlsCredentials(ca_, registry_, host_name_, purpose_, trusted_ca_pem_, &out.serial));
  VTM_ASSIGN_OR_RETURN(out.server, TlsContext::Create(TlsContext::Role::kServer, creds));
  VTM_ASSIGN_OR_RETURN(out.client, TlsContext::Create(TlsContext::Role::kClient, creds));
  out.certificate_der = std::move(creds.certificate_der);
  return out;
}

// The chain starts with the CA certificate: a new key, or a fleet certificate installed for the
// same key, changes it.
bool HostTlsIdentity::Stale() const {
  const std::string chain = ca_.ca_chain_der();
  MutexLock lock(mu_);
  return chain != current_.issuer_chain_der;
}

Status HostTlsIdentity::ReissueIfStale(bool* reissued) {
  if (reissued != nullptr) *reissued = false;
  MutexLock serialize(reissue_mu_);
  if (!Stale()) return OkStatus();
  auto next = IssueCurrent();
  if (!next.ok()) {
    return std::move(next).error().Context("issuing vtmd's " + purpose_ +
                                           " TLS certificate from the new host CA key (the endpoint still presents "
                                           "the old one)");
  }
  uint64_t old_serial = 0;
  {
    MutexLock lock(mu_);
    old_serial = current_.serial;
    current_ = std::move(next).value();
  }
  LOG_INFO << "the " << purpose_ << " endpoint presents TLS certificate serial " << serial()
           << " of the host CA key in use from now on (was serial " << old_serial << ")";
  if (reissued != nullptr) *reissued = true;
  return OkStatus();
}

std::shared_ptr<const TlsContext> HostTlsIdentity::server_context() const {
  MutexLock lock(mu_);
  return current_.server;
}

std::shared_ptr<const TlsContext> HostTlsIdentity::client_context() const {
  MutexLock lock(mu_);
  return current_.client;
}

std::string HostTlsIdentity::certificate_der() const {
  MutexLock lock(mu_);
  return current_.certificate_der;
}

uint64_t HostTlsIdentity::serial() const {
  MutexLock lock(mu_);
  return current_.serial;
}

}  // namespace vtm
