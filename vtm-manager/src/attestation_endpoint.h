// vtmd's network attestation service (ISO/IEC 27070 5.3, 6.4; ISO/IEC 27071 6.5): remote
// verifiers reach the RA client over mutual TLS 1.3. vtmd presents a certificate its host CA
// issues at each start, and again after a rotation of the host CA key, for a fresh P-256 key that
// exists only in vtmd's memory (so a verifier can tie the channel to the host CA it appraises in
// the evidence; host_tls.h); a verifier must present a
// certificate that chains to the configured verifier CA. A connection carries framed
// api::Request / api::Response messages, the same as the local socket, restricted to what a
// verifier may ask: attest_host, attest_deep, activate_host_credential and ca_crl (relying
// parties fetch the host CA's revocations where they fetch evidence). Each answered
// request is logged with the verifier's certificate subject.
//
// Thread safety: Serve() blocks until Shutdown() (from any thread) and joins every connection.
#pragma once

#include <memory>
#include <string>

#include "api_service.h"
#include "host_ca.h"
#include "host_tls.h"
#include "registry.h"
#include "vtm/listener.h"
#include "vtm/tls.h"

namespace vtm {

struct AttestationEndpointConfig {
  std::string listen;            // HOST:PORT (PORT 0: any free port)
  std::string verifier_ca_path;  // PEM: the CA(s) a verifier's client certificate must chain to
  std::string host_name;         // named in the endpoint's certificate (vtm:host:<name>)
  int max_connections = 64;
};

// The requests a remote verifier may make.
bool AllowedOverNetwork(const api::Request& request);

class AttestationEndpoint {
 public:
  // Issues the endpoint certificate (recorded in the registry like every certificate of the
  // host CA), binds the socket. Serve() then answers until Shutdown().
  static Result<std::unique_ptr<AttestationEndpoint>> Start(const AttestationEndpointConfig& config, ApiService& service,
                                                            HostCa& ca, Registry& registry);
  int port() const { return port_; }
  // What the endpoint presents; ReissueIfStale on it after a host CA key rotation.
  HostTlsIdentity& tls_identity() { return *tls_; }
  void Serve() { listener_->Serve(); }
  void Shutdown() { listener_->Shutdown(); }

 private:
  AttestationEndpoint(ApiService& service) : service_(service) {}
  void HandleConnection(UniqueFd conn);

  ApiService& service_;
  std::unique_ptr<HostTlsIdentity> tls_;
  std::unique_ptr<Listener> listener_;
  int port_ = 0;
};

}  // namespace vtm
