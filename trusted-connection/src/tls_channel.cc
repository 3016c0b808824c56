// The TLS channel both ends of a trusted connection use; see trusted_connection.h and
// internal/tls_channel.h.
#include "internal/tls_channel.h"

#include <openssl/err.h>
#include <openssl/pem.h>

#include <cerrno>

#include "internal/tpm_signing_key.h"

namespace vtm::tc {
namespace {

using X509Ptr = OsslPtr<X509, X509_free>;
using BioPtr = OsslPtr<BIO, BIO_free_all>;

// TLS 1.3 reports a server's refusal of the client certificate after the client's handshake
// finished: as an alert on the next read.
Error ChannelError(const TlsChannel::Impl& c, int ret, const std::string& what) {
  int err = SSL_get_error(c.ssl.get(), ret);
  unsigned long e = ERR_peek_last_error();
  if (ERR_GET_LIB(e) == ERR_LIB_SSL) {
    int reason = ERR_GET_REASON(e);
    if (reason >= SSL_AD_REASON_OFFSET) {
      int alert = reason - SSL_AD_REASON_OFFSET;
      ERR_clear_error();
      if (c.peer == "the service") {
        return Error(ErrorCode::kPermissionDenied,
                     std::string("the service refused this device (TLS alert '") + SSL_alert_desc_string_long(alert) +
                         "'): its certificate is not trusted by the service, or its key does not match it");
      }
      return Error(ErrorCode::kPermissionDenied,
                   c.peer + " ended the connection (TLS alert '" + SSL_alert_desc_string_long(alert) + "')");
    }
  }
  if (err == SSL_ERROR_SYSCALL && errno == EAGAIN) {
    ERR_clear_error();
    return Error(ErrorCode::kUnavailable, what + ": " + c.peer + " did not answer in time");
  }
  return OpenSslError(ErrorCode::kUnavailable, what);
}

int RefusedLeafIndex() {
  static int index = SSL_get_ex_new_index(
      0, nullptr, nullptr, nullptr,
      [](void* /*parent*/, void* ptr, CRYPTO_EX_DATA* /*ad*/, int /*idx*/, long /*argl*/, void* /*argp*/) {
        X509_free(static_cast<X509*>(ptr));
      });
  return index;
}

}  // namespace

namespace internal {

int KeepRefusedPeer(int ok, X509_STORE_CTX* store) {
  if (ok == 1) return 1;
  auto* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  X509* leaf = X509_STORE_CTX_get0_cert(store);
  if (ssl != nullptr && leaf != nullptr && SSL_get_ex_data(ssl, RefusedLeafIndex()) == nullptr &&
      X509_up_ref(leaf) == 1) {
    if (SSL_set_ex_data(ssl, RefusedLeafIndex(), leaf) != 1) X509_free(leaf);
  }
  return 0;
}

X509* RefusedPeer(SSL* ssl) { return static_cast<X509*>(SSL_get_ex_data(ssl, RefusedLeafIndex())); }

Result<SslCtxPtr> NewTls13Context(const ProviderContext& providers, const SSL_METHOD* method) {
  // Everything but the own key's signature runs in OpenSSL's default provider; the signature
  // is delegated to the TPM (tpm_signing_key.h). The (EC)DHE key exchange stays in software:
  // docs/trusted-connection.md "Session keys" says why and what was tried.
  SslCtxPtr ctx(SSL_CTX_new_ex(providers.libctx(), "?provider=default", method));
  if (!ctx) return OpenSslError(ErrorCode::kInternal, "SSL_CTX_new_ex");
  if (SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx.get(), TLS1_3_VERSION) != 1) {
    return OpenSslError(ErrorCode::kInternal, "restricting TLS to 1.3");
  }
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
  (void)SSL_CTX_set_num_tickets(ctx.get(), 0);
  return ctx;
}

Status UseIdentity(SSL_CTX* ctx, const std::shared_ptr<ProviderContext>& providers, const std::string& chain_pem,
                   const std::string& key_uri, const std::string& whose) {
  BioPtr bio(BIO_new_mem_buf(chain_pem.data(), static_cast<int>(chain_pem.size())));
  X509Ptr leaf(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!leaf) return OpenSslError(ErrorCode::kInvalidArgument, "the " + whose + " certificate file holds no PEM certificate");
  if (SSL_CTX_use_certificate(ctx, leaf.get()) != 1) {
    return OpenSslError(ErrorCode::kInvalidArgument, "using the " + whose + " certificate");
  }
  while (X509Ptr c{PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)}) {
    if (SSL_CTX_add1_chain_cert(ctx, c.get()) != 1) {
      return OpenSslError(ErrorCode::kInvalidArgument, "adding a " + whose + " chain certificate");
    }
  }
  ERR_clear_error();
  VTM_ASSIGN_OR_RETURN(PkeyPtr key, providers->LoadPrivateKey(key_uri));
  if (IsTpmKeyUri(key_uri)) {
    VTM_ASSIGN_OR_RETURN(key, MakeTpmDelegatingKey(providers, std::move(key)));
  }
  if (SSL_CTX_use_PrivateKey(ctx, key.get()) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    return OpenSslError(ErrorCode::kInvalidArgument,
                        "the " + whose + " key '" + key_uri + "' does not match the " + whose + " certificate");
  }
  return OkStatus();
}

}  // namespace internal

TlsChannel::TlsChannel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

TlsChannel::~TlsChannel() {
  if (impl_ && impl_->ssl) {
    (void)SSL_shutdown(impl_->ssl.get());
    ERR_clear_error();
  }
}

std::string TlsChannel::key_exchange_group() const {
  int nid = SSL_get_negotiated_group(impl_->ssl.get());
  const char* name = nid != NID_undef ? OBJ_nid2sn(nid) : nullptr;
  return name != nullptr ? name : "unknown";
}

int TlsChannel::fd() const { return impl_->fd.get(); }

bool TlsChannel::has_buffered_data() const { return SSL_pending(impl_->ssl.get()) > 0; }

Status TlsChannel::Write(std::string_view data) { return WriteAll(data.data(), data.size()); }

Status TlsChannel::WriteAll(const void* data, size_t len) {
  const char* p = static_cast<const char*>(data);
  size_t off = 0;
  while (off < len) {
    size_t written = 0;
    int r = SSL_write_ex(impl_->ssl.get(), p + off, len - off, &written);
    if (r != 1) return ChannelError(*impl_, r, "sending to " + impl_->peer + " failed");
    off += written;
  }
  return OkStatus();
}

Result<std::string> TlsChannel::Read(size_t max) {
  std::string buf(max, '\0');
  size_t got = 0;
  int r = SSL_read_ex(impl_->ssl.get(), buf.data(), max, &got);
  if (r != 1) {
    if (SSL_get_error(impl_->ssl.get(), r) == SSL_ERROR_ZERO_RETURN) {
      ERR_clear_error();
      return std::string();
    }
    return ChannelError(*impl_, r, "reading from " + impl_->peer + " failed");
  }
  buf.resize(got);
  return buf;
}

Status TlsChannel::ReadAll(void* data, size_t len) {
  char* p = static_cast<char*>(data);
  size_t off = 0;
  while (off < len) {
    size_t got = 0;
    int r = SSL_read_ex(impl_->ssl.get(), p + off, len - off, &got);
    if (r != 1) {
      if (SSL_get_error(impl_->ssl.get(), r) == SSL_ERROR_ZERO_RETURN) {
        ERR_clear_error();
        return Error(ErrorCode::kUnavailable, impl_->peer + " closed the connection mid-message");
      }
      return ChannelError(*impl_, r, "reading from " + impl_->peer + " failed");
    }
    off += got;
  }
  return OkStatus();
}

Result<std::string> TlsChannel::ReadUntil(char delimiter, size_t max) {
  std::string out;
  while (out.size() < max && (out.empty() || out.back() != delimiter)) {
    VTM_ASSIGN_OR_RETURN(std::string part, Read(1));
    if (part.empty()) break;
    out += part;
  }
  return out;
}

Result<SecretBytes> TlsChannel::ExportKeyingMaterial(const std::string& label, size_t length) const {
  SecretBytes out(length);
  if (SSL_export_keying_material(impl_->ssl.get(), out.data(), length, label.data(), label.size(), nullptr, 0, 0) != 1) {
    return OpenSslError(ErrorCode::kInternal, "TLS exporter '" + label + "'");
  }
  return out;
}

}  // namespace vtm::tc
