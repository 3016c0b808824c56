// Device-side mutual TLS 1.3 with a TPM-held device key; see trusted_connection.h.
#include "vtm/trusted_connection.h"

#include <netdb.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstring>

#include "internal/provider_keys.h"
#include "internal/service_chain.h"
#include "internal/tpm_signing_key.h"
#include "vtm/ossl_ptr.h"
#include "vtm/unique_fd.h"

namespace vtm::tc {
namespace {

using SslCtxPtr = OsslPtr<SSL_CTX, SSL_CTX_free>;
using SslPtr = OsslPtr<SSL, SSL_free>;
using X509Ptr = OsslPtr<X509, X509_free>;
using BioPtr = OsslPtr<BIO, BIO_free_all>;

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

// TLS 1.3 reports a server's refusal of the client certificate after the client's handshake
// finished: as an alert on the next read.
Error ReadError(SSL* ssl, int ret, const std::string& what) {
  int err = SSL_get_error(ssl, ret);
  unsigned long e = ERR_peek_last_error();
  if (ERR_GET_LIB(e) == ERR_LIB_SSL) {
    int reason = ERR_GET_REASON(e);
    if (reason >= SSL_AD_REASON_OFFSET) {
      int alert = reason - SSL_AD_REASON_OFFSET;
      ERR_clear_error();
      return Error(ErrorCode::kPermissionDenied,
                   std::string("the service refused this device (TLS alert '") + SSL_alert_desc_string_long(alert) +
                       "'): its certificate is not trusted by the service, or its key does not match it");
    }
  }
  if (err == SSL_ERROR_SYSCALL && errno == EAGAIN) {
    ERR_clear_error();
    return Error(ErrorCode::kUnavailable, what + ": the service did not answer in time");
  }
  return OpenSslError(ErrorCode::kUnavailable, what);
}

}  // namespace

struct TrustedConnector::Impl {
  ConnectOptions options;
  std::shared_ptr<internal::ProviderContext> providers;
  SslCtxPtr ctx;
};

struct TrustedConnection::Impl {
  std::shared_ptr<internal::ProviderContext> providers;  // outlives the SSL objects
  UniqueFd fd;
  SslPtr ssl;
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
  const bool tpm = internal::IsTpmKeyUri(o.device.key_uri);
  VTM_ASSIGN_OR_RETURN(impl->providers, internal::ProviderContext::Create(tpm, o.device.tcti));
  // Everything but the device key's signature runs in OpenSSL's default provider; the signature
  // is delegated to the TPM (tpm_signing_key.h). The (EC)DHE key exchange stays in software:
  // docs/trusted-connection.md "Session keys" says why and what was tried.
  impl->ctx.reset(SSL_CTX_new_ex(impl->providers->libctx(), "?provider=default", TLS_client_method()));
  if (!impl->ctx) return OpenSslError(ErrorCode::kInternal, "SSL_CTX_new_ex");
  SSL_CTX* ctx = impl->ctx.get();
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 || SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1) {
    return OpenSslError(ErrorCode::kInternal, "restricting TLS to 1.3");
  }
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);  // every connection proves both keys

  // Device certificate chain and key.
  BioPtr bio(BIO_new_mem_buf(o.device.certificate_chain_pem.data(), static_cast<int>(o.device.certificate_chain_pem.size())));
  X509Ptr leaf(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!leaf) {
    return OpenSslError(ErrorCode::kInvalidArgument, "the device certificate file holds no PEM certificate");
  }
  if (SSL_CTX_use_certificate(ctx, leaf.get()) != 1) {
    return OpenSslError(ErrorCode::kInvalidArgument, "using the device certificate");
  }
  while (X509Ptr c{PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)}) {
    if (SSL_CTX_add1_chain_cert(ctx, c.get()) != 1) {
      return OpenSslError(ErrorCode::kInvalidArgument, "adding a device chain certificate");
    }
  }
  ERR_clear_error();
  VTM_ASSIGN_OR_RETURN(internal::PkeyPtr key, impl->providers->LoadPrivateKey(o.device.key_uri));
  if (tpm) {
    VTM_ASSIGN_OR_RETURN(key, internal::MakeTpmDelegatingKey(impl->providers, std::move(key)));
  }
  if (SSL_CTX_use_PrivateKey(ctx, key.get()) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    return OpenSslError(ErrorCode::kInvalidArgument,
                        "the device key '" + o.device.key_uri + "' does not match the device certificate");
  }

  VTM_ASSIGN_OR_RETURN(internal::X509StorePtr store,
                       internal::MakeTrustStore(o.expect.trusted_ca_pem, o.expect.crls, o.expect.allow_missing_crl));
  SSL_CTX_set1_cert_store(ctx, store.get());
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  return std::shared_ptr<TrustedConnector>(new TrustedConnector(std::move(impl)));
}

Result<std::unique_ptr<TrustedConnection>> TrustedConnector::Connect() const {
  const ConnectOptions& o = impl_->options;
  auto conn = std::make_unique<TrustedConnection::Impl>();
  conn->providers = impl_->providers;
  VTM_ASSIGN_OR_RETURN(conn->fd, ConnectTcp(o.host, o.port, o.timeout));
  conn->ssl.reset(SSL_new(impl_->ctx.get()));
  if (!conn->ssl || SSL_set_fd(conn->ssl.get(), conn->fd.get()) != 1) return OpenSslError(ErrorCode::kInternal, "SSL_new");
  ERR_clear_error();
  if (SSL_connect(conn->ssl.get()) != 1) {
    long verify = SSL_get_verify_result(conn->ssl.get());
    if (verify != X509_V_OK) {
      X509Ptr peer(SSL_get1_peer_certificate(conn->ssl.get()));
      ERR_clear_error();
      return internal::ChainError(static_cast<int>(verify), peer.get(), kPeer);
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

TrustedConnection::TrustedConnection(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

TrustedConnection::~TrustedConnection() {
  if (impl_ && impl_->ssl) {
    (void)SSL_shutdown(impl_->ssl.get());
    ERR_clear_error();
  }
}

std::string TrustedConnection::key_exchange_group() const {
  int nid = SSL_get_negotiated_group(impl_->ssl.get());
  const char* name = nid != NID_undef ? OBJ_nid2sn(nid) : nullptr;
  return name != nullptr ? name : "unknown";
}

Status TrustedConnection::Write(std::string_view data) {
  size_t off = 0;
  while (off < data.size()) {
    size_t written = 0;
    int r = SSL_write_ex(impl_->ssl.get(), data.data() + off, data.size() - off, &written);
    if (r != 1) return ReadError(impl_->ssl.get(), r, "sending to the service failed");
    off += written;
  }
  return OkStatus();
}

Result<std::string> TrustedConnection::Read(size_t max) {
  std::string buf(max, '\0');
  size_t got = 0;
  int r = SSL_read_ex(impl_->ssl.get(), buf.data(), max, &got);
  if (r != 1) {
    if (SSL_get_error(impl_->ssl.get(), r) == SSL_ERROR_ZERO_RETURN) {
      ERR_clear_error();
      return std::string();
    }
    return ReadError(impl_->ssl.get(), r, "reading from the service failed");
  }
  buf.resize(got);
  return buf;
}

Result<std::string> TrustedConnection::ReadUntil(char delimiter, size_t max) {
  std::string out;
  while (out.size() < max && (out.empty() || out.back() != delimiter)) {
    VTM_ASSIGN_OR_RETURN(std::string part, Read(1));
    if (part.empty()) break;
    out += part;
  }
  return out;
}

Result<SecretBytes> TrustedConnection::ExportKeyingMaterial(const std::string& label, size_t length) const {
  SecretBytes out(length);
  if (SSL_export_keying_material(impl_->ssl.get(), out.data(), length, label.data(), label.size(), nullptr, 0, 0) != 1) {
    return OpenSslError(ErrorCode::kInternal, "TLS exporter '" + label + "'");
  }
  return out;
}

}  // namespace vtm::tc
