// Mutual TLS 1.3 over OpenSSL: contexts from DER/PEM credentials, handshakes with a timeout,
// framed I/O through SSL_read_ex / SSL_write_ex.
#include "vtm/tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>

#include "vtm/fs.h"
#include "vtm/ossl_ptr.h"

namespace vtm {
namespace {

using SslCtxPtr = OsslPtr<SSL_CTX, SSL_CTX_free>;
using SslPtr = OsslPtr<SSL, SSL_free>;
using X509Ptr = OsslPtr<X509, X509_free>;
using BioPtr = OsslPtr<BIO, BIO_free_all>;
using PkeyPtr = OsslPtr<EVP_PKEY, EVP_PKEY_free>;

Result<X509Ptr> CertFromDer(const std::string& der, const std::string& what) {
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (!cert) return OpenSslError(ErrorCode::kInvalidArgument, what + " is not a DER certificate");
  return cert;
}

Result<PkeyPtr> PrivateKeyFrom(const SecretBytes& bytes) {
  static constexpr char kPem[] = "-----BEGIN";
  PkeyPtr key;
  if (bytes.size() > sizeof kPem - 1 && std::string(reinterpret_cast<const char*>(bytes.data()), sizeof kPem - 1) == kPem) {
    BioPtr bio(BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size())));
    key.reset(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  } else {
    const unsigned char* p = bytes.data();
    key.reset(d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(bytes.size())));
  }
  if (!key) return OpenSslError(ErrorCode::kInvalidArgument, "the TLS private key is not a PEM or DER private key");
  return key;
}

void SetIoTimeout(int fd, std::chrono::milliseconds timeout) {
  timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

}  // namespace

struct TlsContext::Impl {
  SslCtxPtr ctx;
};

struct TlsStream::Impl {
  UniqueFd fd;
  SslPtr ssl;
};

Result<TlsCredentials> ReadTlsCredentialFiles(const std::string& cert_pem_path, const std::string& key_pem_path,
                                              const std::string& trusted_ca_pem_path) {
  TlsCredentials c;
  VTM_ASSIGN_OR_RETURN(std::string cert_pem, ReadFile(cert_pem_path));
  BioPtr bio(BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size())));
  for (bool first = true;; first = false) {
    X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!cert) break;
    unsigned char* der = nullptr;
    int n = i2d_X509(cert.get(), &der);
    if (n <= 0) break;
    std::string bytes(reinterpret_cast<char*>(der), static_cast<size_t>(n));
    OPENSSL_free(der);
    if (first) {
      c.certificate_der = std::move(bytes);
    } else {
      c.chain_der.push_back(std::move(bytes));
    }
  }
  ERR_clear_error();  // the loop ends on "no start line"
  if (c.certificate_der.empty()) {
    return Error(ErrorCode::kInvalidArgument, cert_pem_path + " holds no PEM certificate");
  }
  VTM_ASSIGN_OR_RETURN(std::string key, ReadFile(key_pem_path));
  c.private_key = SecretBytes(reinterpret_cast<const uint8_t*>(key.data()), key.size());
  OPENSSL_cleanse(key.data(), key.size());
  VTM_ASSIGN_OR_RETURN(c.trusted_ca_pem, ReadFile(trusted_ca_pem_path));
  return c;
}

TlsContext::TlsContext(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TlsContext::~TlsContext() = default;

Result<std::shared_ptr<TlsContext>> TlsContext::Create(Role role, const TlsCredentials& creds) {
  auto impl = std::make_unique<Impl>();
  impl->ctx.reset(SSL_CTX_new(role == Role::kServer ? TLS_server_method() : TLS_client_method()));
  if (!impl->ctx) return OpenSslError(ErrorCode::kInternal, "SSL_CTX_new");
  SSL_CTX* ctx = impl->ctx.get();
  // TLS 1.3 only: no renegotiation, no RSA key exchange, forward secrecy always.
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 || SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1) {
    return OpenSslError(ErrorCode::kInternal, "restricting TLS to 1.3");
  }
  SSL_CTX_set_num_tickets(ctx, 0);  // no resumption: every connection proves its certificate
  VTM_ASSIGN_OR_RETURN(X509Ptr own, CertFromDer(creds.certificate_der, "the TLS certificate"));
  if (SSL_CTX_use_certificate(ctx, own.get()) != 1) {
    return OpenSslError(ErrorCode::kInvalidArgument, "using the TLS certificate");
  }
  for (const std::string& der : creds.chain_der) {
    VTM_ASSIGN_OR_RETURN(X509Ptr c, CertFromDer(der, "a TLS chain certificate"));
    if (SSL_CTX_add1_chain_cert(ctx, c.get()) != 1) {
      return OpenSslError(ErrorCode::kInvalidArgument, "adding a TLS chain certificate");
    }
  }
  VTM_ASSIGN_OR_RETURN(PkeyPtr key, PrivateKeyFrom(creds.private_key));
  if (SSL_CTX_use_PrivateKey(ctx, key.get()) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    return OpenSslError(ErrorCode::kInvalidArgument, "the TLS private key does not match the certificate");
  }
  // The trusted CA set; nothing else (no system store): a peer is trusted only by configuration.
  X509_STORE* store = SSL_CTX_get_cert_store(ctx);
  BioPtr bio(BIO_new_mem_buf(creds.trusted_ca_pem.data(), static_cast<int>(creds.trusted_ca_pem.size())));
  int trusted = 0;
  while (X509Ptr ca{PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)}) {
    if (X509_STORE_add_cert(store, ca.get()) != 1) {
      return OpenSslError(ErrorCode::kInvalidArgument, "adding a trusted CA");
    }
    ++trusted;
  }
  ERR_clear_error();
  if (trusted == 0) {
    return Error(ErrorCode::kInvalidArgument, "the trusted CA file for TLS peers holds no PEM certificate");
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  return std::shared_ptr<TlsContext>(new TlsContext(std::move(impl)));
}

Result<std::unique_ptr<TlsStream>> TlsContext::Accept(UniqueFd conn, std::chrono::milliseconds timeout) const {
  return Handshake(std::move(conn), true, timeout);
}

Result<std::unique_ptr<TlsStream>> TlsContext::Connect(UniqueFd conn, std::chrono::milliseconds timeout) const {
  return Handshake(std::move(conn), false, timeout);
}

Result<std::unique_ptr<TlsStream>> TlsContext::Handshake(UniqueFd conn, bool server,
                                                         std::chrono::milliseconds timeout) const {
  // The timeout bounds the handshake and every later read or write on the stream.
  SetIoTimeout(conn.get(), timeout);
  auto impl = std::make_unique<TlsStream::Impl>();
  impl->ssl.reset(SSL_new(impl_->ctx.get()));
  if (!impl->ssl || SSL_set_fd(impl->ssl.get(), conn.get()) != 1) {
    return OpenSslError(ErrorCode::kInternal, "SSL_new");
  }
  impl->fd = std::move(conn);
  ERR_clear_error();
  int r = server ? SSL_accept(impl->ssl.get()) : SSL_connect(impl->ssl.get());
  if (r != 1) {
    long verify = SSL_get_verify_result(impl->ssl.get());
    const char* side = server ? "the TLS client" : "the TLS server";
    Error failed = OpenSslError(ErrorCode::kUnavailable, std::string("TLS handshake with ") + side + " failed");
    if (verify != X509_V_OK) {
      return Error(ErrorCode::kPermissionDenied, std::string(side) + "'s certificate is not trusted: " +
                                                     X509_verify_cert_error_string(verify));
    }
    if (failed.message().find("peer did not return a certificate") != std::string::npos) {
      return Error(ErrorCode::kPermissionDenied, std::string(side) + " presented no certificate");
    }
    return failed;
  }
  X509Ptr peer(SSL_get1_peer_certificate(impl->ssl.get()));
  if (!peer) return Error(ErrorCode::kPermissionDenied, "the TLS peer presented no certificate");
  std::unique_ptr<TlsStream> stream(new TlsStream(std::move(impl)));
  unsigned char* der = nullptr;
  int n = i2d_X509(peer.get(), &der);
  if (n > 0) {
    stream->peer_cert_der_.assign(reinterpret_cast<char*>(der), static_cast<size_t>(n));
    OPENSSL_free(der);
  }
  char subject[512];
  X509_NAME_oneline(X509_get_subject_name(peer.get()), subject, sizeof subject);
  stream->peer_subject_ = subject;
  return stream;
}

TlsStream::TlsStream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

TlsStream::~TlsStream() {
  if (impl_ && impl_->ssl) {
    (void)SSL_shutdown(impl_->ssl.get());  // one close_notify; the peer's is not awaited
    ERR_clear_error();
  }
}

Status TlsStream::WriteAll(const void* data, size_t len) {
  const auto* p = static_cast<const char*>(data);
  while (len > 0) {
    size_t written = 0;
    if (SSL_write_ex(impl_->ssl.get(), p, len, &written) != 1) {
      return OpenSslError(ErrorCode::kUnavailable, "TLS write failed");
    }
    p += written;
    len -= written;
  }
  return OkStatus();
}

Status TlsStream::ReadAll(void* data, size_t len) {
  auto* p = static_cast<char*>(data);
  while (len > 0) {
    size_t got = 0;
    if (SSL_read_ex(impl_->ssl.get(), p, len, &got) != 1) {
      if (SSL_get_error(impl_->ssl.get(), 0) == SSL_ERROR_ZERO_RETURN) {
        ERR_clear_error();
        return Error(ErrorCode::kUnavailable, "the TLS peer closed the connection");
      }
      return OpenSslError(ErrorCode::kUnavailable, "TLS read failed");
    }
    p += got;
    len -= got;
  }
  return OkStatus();
}

}  // namespace vtm
