// Device-side mutual TLS 1.3 with a TPM-held device key; see trusted_connection.h.
#include "vtm/trusted_connection.h"

#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstring>

#include "internal/provider_keys.h"
#include "internal/service_chain.h"
#include "internal/tls_channel.h"
#include "vtm/ossl_ptr.h"
#include "vtm/unique_fd.h"

namespace vtm::tc {
namespace {

using X509Ptr = OsslPtr<X509, X509_free>;

constexpr char kPeer[] = "the service";

Result<UniqueFd> ConnectTcp(const std::string& host, int port, std::chrono::milliseconds timeout) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0) {
    return Error(ErrorCode::kUnavailable, "cannot resolve the service host '" + host + "': " + gai_strerror(rc));
  }
  std::string last = "no address";
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    UniqueFd fd(socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (!fd.valid()) continue;
    timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
    setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    // Small request/answer exchanges (attestation, lines): no Nagle wait for a delayed ACK.
    int nodelay = 1;
    setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof nodelay);
    if (connect(fd.get(), a->ai_addr, a->ai_addrlen) == 0) {
      freeaddrinfo(res);
      return fd;
    }
    last = std::strerror(errno);
  }
  freeaddrinfo(res);
  return Error(ErrorCode::kUnavailable,
               "cannot reach the service at " + host + ":" + std::to_string(port) + ": " + last);
}

}  // namespace

struct TrustedConnector::Impl {
  ConnectOptions options;
  std::shared_ptr<internal::ProviderContext> providers;
  SslCtxPtr ctx;
};

TrustedConnector::TrustedConnector(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TrustedConnector::~TrustedConnector() = default;

Result<std::shared_ptr<TrustedConnector>> TrustedConnector::Create(const ConnectOptions& o) {
  if (o.port <= 0 || o.port > 65535) return Error(ErrorCode::kInvalidArgument, "the service port is missing or invalid");
  if (o.expect.vm_uuid.empty()) {
    return Error(ErrorCode::kInvalidArgument, "the VM the service must run in is not given (expected VM UUID)");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = o;
  VTM_ASSIGN_OR_RETURN(impl->providers,
                       internal::ProviderContext::Create(internal::IsTpmKeyUri(o.device.key_uri), o.device.tcti));
  VTM_ASSIGN_OR_RETURN(impl->ctx, internal::NewTls13Context(*impl->providers, TLS_client_method()));
  SSL_CTX* ctx = impl->ctx.get();
  VTM_RETURN_IF_ERROR(internal::UseIdentity(ctx, impl->providers, o.device.certificate_chain_pem, o.device.key_uri, "device"));

  VTM_ASSIGN_OR_RETURN(internal::X509StorePtr store,
                       internal::MakeTrustStore(o.expect.trusted_ca_pem, o.expect.crls, o.expect.allow_missing_crl));
  SSL_CTX_set1_cert_store(ctx, store.get());
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, internal::KeepRefusedPeer);
  return std::shared_ptr<TrustedConnector>(new TrustedConnector(std::move(impl)));
}

Result<std::unique_ptr<TrustedConnection>> TrustedConnector::Connect() const {
  const ConnectOptions& o = impl_->options;
  auto conn = std::make_unique<TlsChannel::Impl>();
  conn->providers = impl_->providers;
  conn->peer = kPeer;
  VTM_ASSIGN_OR_RETURN(conn->fd, ConnectTcp(o.host, o.port, o.timeout));
  conn->ssl.reset(SSL_new(impl_->ctx.get()));
  if (!conn->ssl || SSL_set_fd(conn->ssl.get(), conn->fd.get()) != 1) return OpenSslError(ErrorCode::kInternal, "SSL_new");
  ERR_clear_error();
  if (SSL_connect(conn->ssl.get()) != 1) {
    long verify = SSL_get_verify_result(conn->ssl.get());
    if (verify != X509_V_OK) {
      ERR_clear_error();
      return internal::ChainError(static_cast<int>(verify), internal::RefusedPeer(conn->ssl.get()), kPeer);
    }
    return OpenSslError(ErrorCode::kUnavailable,
                        "TLS 1.3 handshake with the service at " + o.host + ":" + std::to_string(o.port) +
                            " failed (a server key that does not match its certificate fails here)");
  }
  X509Ptr peer(SSL_get1_peer_certificate(conn->ssl.get()));
  if (!peer) return Error(ErrorCode::kPermissionDenied, "the service presented no certificate");
  auto checked = internal::CheckIkCertificate(peer.get(), o.expect.vm_uuid, o.expect.service, kPeer);
  if (!checked.ok()) {
    (void)SSL_shutdown(conn->ssl.get());  // nothing was sent; say goodbye and refuse
    ERR_clear_error();
    return std::move(checked).error();
  }
  std::unique_ptr<TrustedConnection> c(new TrustedConnection(std::move(conn)));
  c->service_ = ServiceIdentity{checked->vm_uuid, checked->service, checked->subject, checked->certificate_der};
  return c;
}

}  // namespace vtm::tc
