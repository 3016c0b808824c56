// TLS connection, framed calls, channel binding and host AK activation for remote verifiers.
#include "remote_client.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "api_status.h"
#include "vtm/credential.h"
#include "vtm/framing.h"
#include "vtm/hex.h"
#include "vtm/listener.h"
#include "vtm/ossl_ptr.h"
#include "vtm/tpm_structures.h"

namespace vtm {
namespace {

using X509Ptr = OsslPtr<X509, X509_free>;
using PkeyPtr = OsslPtr<EVP_PKEY, EVP_PKEY_free>;

// Evidence with an IMA log of a busy host can be tens of MiB; requests stay small.
constexpr size_t kMaxResponseLen = 256u << 20;

Result<X509Ptr> ParseDer(const std::string& der, const char* what) {
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (!cert || p != reinterpret_cast<const unsigned char*>(der.data()) + der.size()) {
    return Error(ErrorCode::kInvalidArgument, std::string(what) + " is not one DER certificate");
  }
  return cert;
}

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

Result<std::string> RemoteAttestationClient::Crl() {
  api::Request req;
  req.mutable_ca_crl();
  VTM_ASSIGN_OR_RETURN(api::Response resp, Call(req));
  return resp.pem();
}

Status RemoteAttestationClient::CheckServedBy(const attest::HostIdentity& host) const {
  VTM_ASSIGN_OR_RETURN(X509Ptr endpoint, ParseDer(server_certificate_der(), "the endpoint's certificate"));
  VTM_ASSIGN_OR_RETURN(X509Ptr ca, ParseDer(host.ca_certificate(), "the evidence's host CA certificate"));
  PkeyPtr ca_key(X509_get_pubkey(ca.get()));
  if (!ca_key || X509_check_issued(ca.get(), endpoint.get()) != X509_V_OK ||
      X509_verify(endpoint.get(), ca_key.get()) != 1) {
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
