// The service's end of an ISO/IEC 27071 trusted connection, for a service in a VM: mutual TLS
// 1.3 with the vTPM-held IK as the server key (only its signature goes to the vTPM, as on the
// device: the device's CertificateVerify is checked in software, which stock s_server with the
// tpm2 provider cannot do, docs/trusted-connection.md), and a device admitted only if it
// presents a certificate chaining to a trusted device CA, not revoked, signed for with its key.
// It also answers the device's attestation challenge (vtm/attestation_wire.h) with a quote of
// the vTPM on this session's nonce.
//
// Thread safety: a TrustedService may be shared (Accept is thread-safe); a ServiceConnection is
// used by one thread at a time.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "vtm/attestation_wire.h"
#include "vtm/error.h"
#include "vtm/trusted_connection.h"
#include "vtm/unique_fd.h"

namespace vtm::tc {

struct ServiceOptions {
  std::string certificate_chain_pem;  // IK certificate, then the CA chain (vtm-service-identity's fullchain.pem)
  std::string key_uri;                // "handle:0x81000003" (the IK), or a PEM key file (tests, benchmarks)
  std::string tcti;                   // the vTPM, e.g. "device:/dev/tpmrm0"; empty: TPM2OPENSSL_TCTI
  std::string trusted_device_ca_pem;  // device makers' CA certificate(s)
  std::vector<std::string> device_crls;
  bool allow_missing_crl = false;
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};  // handshake and each read
};

// The device that connected, from its verified certificate.
struct PeerDevice {
  std::string subject;
  std::string certificate_der;
};

class ServiceConnection : public TlsChannel {
 public:
  const PeerDevice& device() const { return device_; }

 private:
  friend class TrustedService;
  using TlsChannel::TlsChannel;
  PeerDevice device_;
};

class TrustedService {
 public:
  static Result<std::shared_ptr<TrustedService>> Create(const ServiceOptions& options);
  ~TrustedService();
  TrustedService(const TrustedService&) = delete;
  TrustedService& operator=(const TrustedService&) = delete;

  // Accepts one connection on listen_fd and runs the handshake. A device without a trusted
  // certificate is refused (it gets a TLS alert) with kPermissionDenied saying why (untrusted
  // CA, revoked, no certificate); the caller goes on accepting.
  Result<std::unique_ptr<ServiceConnection>> Accept(int listen_fd) const;

 private:
  struct Impl;
  explicit TrustedService(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A listening TCP socket on address:port (address "" = all; port 0 = any); *bound_port gets
// the port.
Result<UniqueFd> ListenTcp(const std::string& address, int port, int* bound_port);

// The vTPM quote files of `tpm2_quote -m -s -o` on `nonce` over `pcr_selection`.
struct QuoteFiles {
  std::string message;
  std::string signature;
  std::string pcrs;
};
using Quoter = std::function<Result<QuoteFiles>(const std::string& nonce, const std::string& pcr_selection)>;

// A Quoter running `tpm2_quote -c ak_handle -g sha256` (tpm2-tools, the TPM at tcti, or
// TPM2TOOLS_TCTI when empty) in a private temp directory; its output is the reason on failure.
Quoter TpmToolsQuoter(const std::string& ak_handle, const std::string& tcti);

// Answers the challenge whose frame starts with `already_read` on conn: computes this
// session's nonce (attestation_wire.h), quotes, and sends the answer with event_log. Returns
// the answer sent: a failed quote is answered with a refusal naming the reason (the connection
// goes on). A malformed challenge is answered with a refusal too and returned as the error:
// the stream cannot be trusted after it.
Result<AttestationAnswer> AnswerAttestationChallenge(ServiceConnection& conn, std::string_view already_read,
                                                     const Quoter& quote, const std::string& event_log);

}  // namespace vtm::tc
