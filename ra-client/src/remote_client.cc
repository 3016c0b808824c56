// TLS connection, framed calls, channel binding and host AK activation for remote verifiers.
#include "remote_client.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "api_status.h"
#include "vtm/credential.h"
#include "vtm/framing.h"
#include "vtm/hex.h"
#include "vtm/listener.h"
#include "vtm/tpm_structures.h"
#include "vtm/x509.h"

namespace vtm {
namespace {

// Evidence with an IMA log of a busy host can be tens of MiB; requests stay small.
constexpr size_t kMaxResponseLen = 256u << 20;

}  // namespace

Result<std::unique_ptr<RemoteAttestationClient>> RemoteAttestationClient::Connect(const std::string& server,
                                                                                  const TlsCredentials& credentials,
                                                                                  std::chrono::milliseconds timeout) {
  VTM_ASSIGN_OR_RETURN(auto ctx, TlsContext::Create(TlsContext::Role::kClient, credentials));
  auto fd = ConnectTcp(server);
  if (!fd.ok()) return Error(ErrorCode::kUnavailable, "cannot reach the attestation endpoint " + server + ": " + fd.error().message());
  auto stream = ctx->Connect(std::move(fd).value(), timeout);
  if (!stream.ok()) return std::move(stream).error().Context("attestation endpoint " + server);
  return std::unique_ptr<RemoteAttestationClient>(new RemoteAttestationClient(std::move(stream).value()));
}

Result<api::Response> RemoteAttestationClient::Call(const api::Request& request) {
  VTM_RETURN_IF_ERROR(WriteFrame(*stream_, request.SerializeAsString()));
  VTM_ASSIGN_OR_RETURN(std::string frame, ReadFrame(*stream_, kMaxResponseLen));
  api::Response resp;
  if (!resp.ParseFromString(frame)) return Error(ErrorCode::kDataLoss, "the attestation endpoint sent a malformed response");
  if (resp.status() != api::STATUS_OK) return ErrorFromResponse(resp, "the host answered: ");
  return resp;
}

Result<attest::HostEvidence> RemoteAttestationClient::HostEvidence(const std::string& nonce) {
  api::Request req;
  req.mutable_attest_host()->set_nonce(nonce);
  VTM_ASSIGN_OR_RETURN(api::Response resp, Call(req));
  return std::move(*resp.mutable_host_evidence());
}

Result<attest::DeepEvidence> RemoteAttestationClient::DeepEvidence(const api::AttestDeepRequest& request) {
  api::Request req;
  *req.mutable_attest_deep() = request;
  VTM_ASSIGN_OR_RETURN(api::Response resp, Call(req));
  return std::move(*resp.mutable_deep_evidence());
}

Result<std::string> RemoteAttestationClient::ActivateCredential(const std::string& id_object,
                                                                const std::string& encrypted_secret) {
  api::Request req;
  req.mutable_activate_host_credential()->set_id_object(id_object);
  req.mutable_activate_host_credential()->set_encrypted_secret(encrypted_secret);
  VTM_ASSIGN_OR_RETURN(api::Response resp, Call(req));
  return resp.secret();
}

Result<std::string> RemoteAttestationClient::Crl(bool retired) {
  api::Request req;
  req.mutable_ca_crl()->set_retired(retired);
  VTM_ASSIGN_OR_RETURN(api::Response resp, Call(req));
  return resp.pem();
}

Status RemoteAttestationClient::CheckServedBy(const attest::HostIdentity& host) const {
  Status issued = ca::VerifyIssuedBy(server_certificate_der(), host.ca_certificate(), "the endpoint's certificate");
  if (!issued.ok()) {
    return Error(ErrorCode::kPermissionDenied,
                 "the attestation endpoint's TLS certificate was not issued by the host CA in its evidence: the "
                 "host that answered is not the host that was attested");
  }
  return OkStatus();
}

Result<std::string> ActivateHostAk(RemoteAttestationClient& client, const attest::HostIdentity& host) {
  VTM_ASSIGN_OR_RETURN(std::string ak_name, TpmNameOfPublic(host.ak_public()));
  std::string secret(32, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(secret.data()), static_cast<int>(secret.size())) != 1) {
    return Error(ErrorCode::kInternal, "RAND_bytes failed");
  }
  auto made = attest::MakeCredential(host.ek_public(), secret, ak_name);
  if (!made.ok()) return std::move(made).error().Context("making a credential for the host AK");
  auto answer = client.ActivateCredential(made->id_object, made->encrypted_secret);
  const bool same = answer.ok() && answer->size() == secret.size() &&
                    CRYPTO_memcmp(answer->data(), secret.data(), secret.size()) == 0;
  OPENSSL_cleanse(secret.data(), secret.size());
  if (!answer.ok()) {
    return Error(ErrorCode::kPermissionDenied, "the host could not activate the credential for its AK " +
                                                   HexEncode(ak_name) + ": " + answer.error().message());
  }
  if (!same) {
    return Error(ErrorCode::kPermissionDenied,
                 "the host returned another secret: its AK " + HexEncode(ak_name) + " is not in the TPM of its EK");
  }
  return ak_name;
}

}  // namespace vtm
