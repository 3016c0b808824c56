// A remote verifier's side of vtmd's attestation endpoint (vtm-manager/src/attestation_endpoint.h):
// mutual TLS 1.3 to HOST:PORT, then api::Request / api::Response frames. Besides fetching
// evidence it does the two things a verifier cannot do from evidence alone:
//  - channel binding: the endpoint's TLS certificate must be issued by the host CA that the
//    evidence carries (and that the verifier appraises with its TPM2_Certify), so the host that
//    answered is the host that was attested;
//  - host AK activation: a credential made for the host AK's name with the host EK's public key
//    (vtm::attest::MakeCredential, no TPM needed) comes back decrypted only if the AK is in the
//    TPM of that EK. The verifier then records the AK name (policy activated_host_ak_names).
// No ESAPI: links vtm_attest, vtm_common and vtm_proto only.
//
// Thread safety: one RemoteAttestationClient per thread.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "attestation.pb.h"
#include "vtm.pb.h"
#include "vtm/error.h"
#include "vtm/tls.h"

namespace vtm {

class RemoteAttestationClient {
 public:
  static Result<std::unique_ptr<RemoteAttestationClient>> Connect(const std::string& server,
                                                                  const TlsCredentials& credentials,
                                                                  std::chrono::milliseconds timeout);

  Result<attest::HostEvidence> HostEvidence(const std::string& nonce);
  Result<attest::DeepEvidence> DeepEvidence(const api::AttestDeepRequest& request);
  // The host TPM's TPM2_ActivateCredential of a credential; the secret it recovered.
  Result<std::string> ActivateCredential(const std::string& id_object, const std::string& encrypted_secret);

  // The host CA's current CRL (PEM), signed by the host CA key.
  // retired: the final CRLs of the host's retired CA keys (PEM, one after another; kNotFound if
  // its CA key was never rotated), each signed by the key it retired.
  Result<std::string> Crl(bool retired = false);

  // The endpoint's certificate (DER), as presented in the handshake.
  const std::string& server_certificate_der() const { return stream_->peer_certificate_der(); }
  // kPermissionDenied unless the endpoint's certificate is signed by host.ca_certificate and
  // names it as issuer.
  Status CheckServedBy(const attest::HostIdentity& host) const;

 private:
  explicit RemoteAttestationClient(std::unique_ptr<TlsStream> stream) : stream_(std::move(stream)) {}
  Result<api::Response> Call(const api::Request& request);
  std::unique_ptr<TlsStream> stream_;
};

// Binds host.ak_public to host.ek_public by a credential activation over client: a fresh
// random secret, made for the AK's name, must come back. Returns the AK's TPM name.
// kPermissionDenied if the host returns another secret or refuses.
Result<std::string> ActivateHostAk(RemoteAttestationClient& client, const attest::HostIdentity& host);

}  // namespace vtm
