// The device side of an ISO/IEC 27071 trusted connection to a service in a VM: mutual TLS 1.3
// where the device authenticates with a key in its own TPM (tpm2 OpenSSL provider) and the
// service with its vTPM-held IK, whose certificate (issued by vtmd's host CA) names the VM and
// the service. A connection is handed out only after the service's chain leads to a trusted
// host or fleet CA, no certificate in it is revoked by the CRLs given, the certificate is an IK
// certificate (TLS server EKU) and it names the expected VM and service.
//
// Thread safety: a TrustedConnector may be shared by threads (Connect is thread-safe); a
// TrustedConnection (a TlsChannel) is used by one thread at a time.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "vtm/error.h"
#include "vtm/secret.h"
#include "vtm/stream.h"

namespace vtm::tc {

// The device's own identity: a certificate from the device maker's CA for a key in the
// device's TPM.
struct DeviceIdentity {
  std::string certificate_chain_pem;  // device certificate first, then any intermediates
  // "handle:0x81000010" (a persistent key in the device TPM, through the tpm2 provider), any
  // other OSSL_STORE URI the providers understand, or a path to a PEM private key file.
  std::string key_uri;
  // TCTI of the device TPM for tpm2 keys, e.g. "device:/dev/tpmrm0" or
  // "swtpm:host=127.0.0.1,port=2321". Empty: TPM2OPENSSL_TCTI or the provider's default.
  std::string tcti;
};

// What the device trusts and expects of the service.
struct ServiceExpectation {
  std::string trusted_ca_pem;         // host CA or fleet CA certificate(s)
  std::vector<std::string> crls;      // CRLs (PEM or DER) of the CAs; checked for every certificate
  bool allow_missing_crl = false;     // true: go on without revocation checking (crls empty)
  std::string vm_uuid;                // the VM the service must run in (URI SAN urn:uuid:<vm>)
  std::string service;                // the service name (URI SAN vtm:service:<name>)
};

struct ConnectOptions {
  std::string host = "127.0.0.1";
  int port = 0;
  DeviceIdentity device;
  ServiceExpectation expect;
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};  // handshake and each I/O
};

// Who answered: read from the service's IK certificate after it was checked.
struct ServiceIdentity {
  std::string vm_uuid;
  std::string service;
  std::string subject;
  std::string certificate_der;
};

// An established mutual TLS 1.3 connection, either end (TrustedConnection on the device,
// ServiceConnection in the service, vtm/trusted_service.h). As a vtm::Stream it carries the
// attestation frames (vtm/attestation_wire.h).
class TlsChannel : public Stream {
 public:
  ~TlsChannel() override;
  TlsChannel(const TlsChannel&) = delete;
  TlsChannel& operator=(const TlsChannel&) = delete;

  // TLS group of the key exchange, e.g. "secp256r1" or "x25519".
  std::string key_exchange_group() const;

  Status Write(std::string_view data);
  // Up to max bytes; "" when the peer closed the connection. A refusal of this device by
  // the service (TLS 1.3 sends it after the handshake) is kPermissionDenied naming the alert.
  Result<std::string> Read(size_t max);
  // Reads until `delimiter` (included) or until the peer closes.
  Result<std::string> ReadUntil(char delimiter, size_t max);
  // RFC 8446 section 7.5 exporter (no context), e.g. to bind an attestation nonce to this session.
  Result<SecretBytes> ExportKeyingMaterial(const std::string& label, size_t length) const;

  Status WriteAll(const void* data, size_t len) override;
  Status ReadAll(void* data, size_t len) override;  // kUnavailable on EOF before len bytes

  // For poll(2) loops: the socket, and whether decrypted bytes wait in the TLS layer already
  // (poll cannot see those).
  int fd() const;
  bool has_buffered_data() const;

  struct Impl;  // internal/tls_channel.h

 protected:
  explicit TlsChannel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class TrustedConnection : public TlsChannel {
 public:
  const ServiceIdentity& service() const { return service_; }

 private:
  friend class TrustedConnector;
  using TlsChannel::TlsChannel;
  ServiceIdentity service_;
};

// Holds the TLS context (device key loaded once), so repeated connections cost a handshake only.
class TrustedConnector {
 public:
  static Result<std::shared_ptr<TrustedConnector>> Create(const ConnectOptions& options);
  ~TrustedConnector();
  TrustedConnector(const TrustedConnector&) = delete;
  TrustedConnector& operator=(const TrustedConnector&) = delete;

  Result<std::unique_ptr<TrustedConnection>> Connect() const;

 private:
  struct Impl;
  explicit TrustedConnector(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vtm::tc
