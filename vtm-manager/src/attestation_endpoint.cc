// The endpoint's key and certificate, the TLS accept path and the verifier's allow-list.
#include "attestation_endpoint.h"

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <ctime>

#include "api_server.h"
#include "vtm/fs.h"
#include "vtm/log.h"
#include "vtm/ossl_ptr.h"
#include "vtm/x509.h"

namespace vtm {
namespace {

using EvpPkeyPtr = OsslPtr<EVP_PKEY, EVP_PKEY_free>;

constexpr std::chrono::milliseconds kHandshakeTimeout{10000};
// Endpoint certificates are reissued at every vtmd start; a year bounds one that outlives its host.
constexpr std::time_t kCertificateLifetime = std::time_t{365} * 24 * 3600;

struct EndpointKey {
  SecretBytes private_der;  // PKCS#8
  std::string spki_der;
};

Result<EndpointKey> NewEndpointKey() {
  EvpPkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!key) return Error(ErrorCode::kInternal, "generating the attestation endpoint's key failed");
  EndpointKey out;
  unsigned char* der = nullptr;
  int len = i2d_PrivateKey(key.get(), &der);
  if (len <= 0) return Error(ErrorCode::kInternal, "encoding the attestation endpoint's key failed");
  out.private_der = SecretBytes(der, static_cast<size_t>(len));
  OPENSSL_clear_free(der, static_cast<size_t>(len));
  der = nullptr;
  len = i2d_PUBKEY(key.get(), &der);
  if (len <= 0) return Error(ErrorCode::kInternal, "encoding the attestation endpoint's public key failed");
  out.spki_der.assign(reinterpret_cast<const char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

}  // namespace

bool AllowedOverNetwork(const api::Request& request) {
  switch (request.op_case()) {
    case api::Request::kAttestHost:
    case api::Request::kAttestDeep:
    case api::Request::kActivateHostCredential:
    case api::Request::kCaCrl:  // relying parties fetch revocations where they fetch evidence
      return true;
    default: return false;
  }
}

Result<std::unique_ptr<AttestationEndpoint>> AttestationEndpoint::Start(const AttestationEndpointConfig& config,
                                                                        ApiService& service, HostCa& ca,
                                                                        Registry& registry) {
  auto trusted = ReadFile(config.verifier_ca_path);
  if (!trusted.ok()) {
    return std::move(trusted).error().Context("reading the verifier CA (--attest-verifier-ca) " + config.verifier_ca_path);
  }
  VTM_ASSIGN_OR_RETURN(EndpointKey key, NewEndpointKey());
  VTM_ASSIGN_OR_RETURN(
      CertRecord cert,
      ca.Issue(registry, "vtmd:" + config.host_name, "tls-attestation",
               [&](ca::Signer& signer, const std::string& issuer, uint64_t serial) {
                 ca::HostTlsCertRequest req;
                 req.spki_der = key.spki_der;
                 req.host_name = config.host_name;
                 req.purpose = "attestation";
                 req.serial = serial;
                 req.validity.not_before = std::time(nullptr) - 60;
                 req.validity.not_after = std::time(nullptr) + kCertificateLifetime;
                 return ca::IssueHostTlsCertificate(signer, issuer, req);
               }));
  TlsCredentials creds;
  creds.certificate_der = cert.der;
  // The chain up to the fleet CA (if installed), so a verifier trusting the fleet CA accepts it.
  creds.chain_der = ca::SplitDerCertificates(ca.ca_chain_der());
  creds.private_key = std::move(key.private_der);
  creds.trusted_ca_pem = std::move(trusted).value();
  std::unique_ptr<AttestationEndpoint> ep(new AttestationEndpoint(service));
  VTM_ASSIGN_OR_RETURN(ep->tls_, TlsContext::Create(TlsContext::Role::kServer, creds));
  VTM_ASSIGN_OR_RETURN(UniqueFd fd, ListenTcp(config.listen));
  VTM_ASSIGN_OR_RETURN(ep->port_, BoundTcpPort(fd.get()));
  ep->certificate_der_ = cert.der;
  AttestationEndpoint* self = ep.get();
  ep->listener_ = std::make_unique<Listener>(
      std::move(fd), [self](UniqueFd conn) { self->HandleConnection(std::move(conn)); }, config.max_connections,
      [](UniqueFd) {});  // a busy endpoint closes before the handshake; the verifier retries
  LOG_INFO << "attestation endpoint on " << config.listen << " (port " << ep->port_ << "), certificate serial "
           << cert.serial << ", verifiers from " << config.verifier_ca_path;
  return ep;
}

void AttestationEndpoint::HandleConnection(UniqueFd conn) {
  auto tls = tls_->Accept(std::move(conn), kHandshakeTimeout);
  if (!tls.ok()) {
    LOG_WARNING << "attestation endpoint: refused a connection: " << tls.error().message();
    return;
  }
  const std::string verifier = (*tls)->peer_subject();
  ServeRequests(**tls, [&](const api::Request& req) {
    api::Response resp;
    if (!AllowedOverNetwork(req)) {
      resp.set_status(api::STATUS_PERMISSION_DENIED);
      resp.set_error("a remote verifier may only ask for host or deep evidence, host credential activation and the "
                     "host CA's CRL");
      LOG_WARNING << "attestation endpoint: refused a management request from verifier " << verifier;
      return resp;
    }
    resp = service_.Handle(req, ApiCaller{std::nullopt});  // remote: never root
    LOG_INFO << "attestation endpoint: verifier " << verifier << ": "
             << api::Request::descriptor()->FindFieldByNumber(static_cast<int>(req.op_case()))->name() << ": "
             << (resp.status() == api::STATUS_OK ? std::string("answered") : "failed: " + resp.error());
    return resp;
  });
}

}  // namespace vtm
