// What the device's and the service's ends of a trusted connection share: the TLS channel's
// state, a TLS 1.3-only context, and the own identity (certificate chain and a key that may be
// in a TPM, only its signature delegated there: tpm_signing_key.h).
// Thread safety: free functions; an Impl belongs to one TlsChannel.
#pragma once

#include <openssl/ssl.h>

#include <memory>
#include <string>

#include "internal/provider_keys.h"
#include "vtm/ossl_ptr.h"
#include "vtm/trusted_connection.h"
#include "vtm/unique_fd.h"

namespace vtm::tc {

using SslCtxPtr = OsslPtr<SSL_CTX, SSL_CTX_free>;
using SslPtr = OsslPtr<SSL, SSL_free>;

struct TlsChannel::Impl {
  std::shared_ptr<internal::ProviderContext> providers;  // outlives the SSL objects
  UniqueFd fd;
  SslPtr ssl;
  // Who is at the other end, for messages: "the service" or "the device".
  std::string peer;
};

namespace internal {

// A context for TLS 1.3 only, everything in OpenSSL's default provider, no session resumption
// (every connection proves both keys).
Result<SslCtxPtr> NewTls13Context(const ProviderContext& providers, const SSL_METHOD* method);

// Own certificate chain (leaf first) and key (OSSL_STORE URI / PEM path; a tpm2 key is wrapped
// so that only its signature runs in the TPM). `whose`: "device" or "service", for messages.
Status UseIdentity(SSL_CTX* ctx, const std::shared_ptr<ProviderContext>& providers, const std::string& chain_pem,
                   const std::string& key_uri, const std::string& whose);

// Verify callback for either end: a TLS endpoint does not keep a peer certificate it refused,
// so this keeps the leaf of a failed chain (SSL ex_data) for the refusal to name it.
int KeepRefusedPeer(int ok, X509_STORE_CTX* store);
// That leaf, or nullptr; owned by ssl.
X509* RefusedPeer(SSL* ssl);

}  // namespace internal
}  // namespace vtm::tc
