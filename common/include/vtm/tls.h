// Mutual TLS 1.3 streams (OpenSSL) for vtm's network channels: the RA client's attestation
// service (a remote verifier <-> vtmd) and the manager-to-manager migration channel. Both ends
// present a certificate and accept only a peer whose certificate chains to their configured
// trusted CA set; nothing below TLS 1.3 is negotiated. The handler of a connection sees the
// peer's certificate (TlsStream::peer_certificate_der), e.g. to log or authorize by subject.
//
// Thread safety: a TlsContext may be shared by threads (Accept/Connect are thread-safe); a
// TlsStream is used by one thread at a time.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "vtm/error.h"
#include "vtm/secret.h"
#include "vtm/stream.h"
#include "vtm/unique_fd.h"

namespace vtm {

// What one end presents and whom it trusts.
struct TlsCredentials {
  std::string certificate_der;            // own certificate
  std::vector<std::string> chain_der;     // intermediates sent after it (may be empty)
  SecretBytes private_key;                // own private key: PKCS#8 / traditional DER or PEM
  std::string trusted_ca_pem;             // CA certificate(s) a peer's certificate must chain to
};

// Reads credentials from files (a verifier's or a test's): certificate PEM (leaf first, then
// any chain), key PEM, trusted CA PEM.
Result<TlsCredentials> ReadTlsCredentialFiles(const std::string& cert_pem_path, const std::string& key_pem_path,
                                              const std::string& trusted_ca_pem_path);

class TlsStream : public Stream {
 public:
  ~TlsStream() override;
  Status WriteAll(const void* data, size_t len) override;
  Status ReadAll(void* data, size_t len) override;
  // DER of the certificate the peer presented (verified against the trusted CA set).
  const std::string& peer_certificate_der() const { return peer_cert_der_; }
  // The peer certificate's subject, one line (for logs).
  const std::string& peer_subject() const { return peer_subject_; }

 private:
  friend class TlsContext;
  struct Impl;
  explicit TlsStream(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  std::string peer_cert_der_;
  std::string peer_subject_;
};

class TlsContext {
 public:
  enum class Role { kServer, kClient };
  static Result<std::shared_ptr<TlsContext>> Create(Role role, const TlsCredentials& credentials);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  // Runs the server handshake on an accepted socket. kPermissionDenied when the peer presents
  // no certificate or one that does not chain to the trusted CA set; kUnavailable when the
  // handshake times out or the peer hangs up.
  Result<std::unique_ptr<TlsStream>> Accept(UniqueFd conn, std::chrono::milliseconds timeout) const;
  // Runs the client handshake on a connected socket.
  Result<std::unique_ptr<TlsStream>> Connect(UniqueFd conn, std::chrono::milliseconds timeout) const;

 private:
  struct Impl;
  explicit TlsContext(std::unique_ptr<Impl> impl);
  Result<std::unique_ptr<TlsStream>> Handshake(UniqueFd conn, bool server, std::chrono::milliseconds timeout) const;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vtm
