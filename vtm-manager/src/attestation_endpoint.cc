// The endpoint's key and certificate, the TLS accept path and the verifier's allow-list.
#include "attestation_endpoint.h"

#include "api_server.h"
#include "host_tls.h"
#include "vtm/fs.h"
#include "vtm/log.h"

namespace vtm {
namespace {

constexpr std::chrono::milliseconds kHandshakeTimeout{10000};

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
  std::unique_ptr<AttestationEndpoint> ep(new AttestationEndpoint(service));
  VTM_ASSIGN_OR_RETURN(
      ep->tls_, HostTlsIdentity::Issue(ca, registry, config.host_name, "attestation", std::move(trusted).value()));
  VTM_ASSIGN_OR_RETURN(UniqueFd fd, ListenTcp(config.listen));
  VTM_ASSIGN_OR_RETURN(ep->port_, BoundTcpPort(fd.get()));
  AttestationEndpoint* self = ep.get();
  ep->listener_ = std::make_unique<Listener>(
      std::move(fd), [self](UniqueFd conn) { self->HandleConnection(std::move(conn)); }, config.max_connections,
      [](UniqueFd) {});  // a busy endpoint closes before the handshake; the verifier retries
  LOG_INFO << "attestation endpoint on " << config.listen << " (port " << ep->port_ << "), certificate serial "
           << ep->tls_->serial() << ", verifiers from " << config.verifier_ca_path;
  return ep;
}

void AttestationEndpoint::HandleConnection(UniqueFd conn) {
  // The identity now: a rotation of the host CA key may have replaced it since the last connection.
  auto tls = tls_->server_context()->Accept(std::move(conn), kHandshakeTimeout);
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
