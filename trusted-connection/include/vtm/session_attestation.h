// The device's side of deep attestation over a trusted connection (ISO/IEC 27071 clause 6.5):
// before any data, the device challenges the service on the established TLS session
// (vtm/attestation_wire.h), gets its vTPM's quote on this session's nonce, refuses a quote
// bound to another TLS session, links the quote to a host quote at the host's attestation
// endpoint (vtmd --attest-listen; the device is one of its verifiers: it holds a client
// certificate from the endpoint's verifier CA) and appraises the deep evidence with the
// verifier library against a policy. Only then does the caller send data.
//
// Besides the verifier's own checks, the evidence must be about the vTPM behind this
// connection: it names the VM of the service's IK certificate, and the host CA in the evidence
// (whose key the appraisal ties to the attested host TPM) issued that IK certificate.
//
// Thread safety: free functions; the connection is used by one thread at a time.
#pragma once

#include <chrono>
#include <ctime>
#include <string>

#include "attestation.pb.h"
#include "vtm/attestation_wire.h"
#include "vtm/error.h"
#include "vtm/tls.h"
#include "vtm/trusted_connection.h"
#include "vtm/verifier.h"

namespace vtm::tc {

// vtmd's attestation endpoint of the host the service's VM runs on.
struct HostAttestationEndpoint {
  std::string server;           // host:port
  TlsCredentials credentials;   // the device as a verifier; trusted_ca_pem: the host (or fleet) CA
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
};

struct SessionEvidence {
  AttestationChallenge challenge;
  std::string nonce;  // this session's nonce for the challenge
  attest::DeepEvidence evidence;
};

// Sends a fresh challenge on conn and returns the service's answer.
struct ChallengeExchange {
  AttestationChallenge challenge;
  AttestationAnswer answer;
};
Result<ChallengeExchange> ChallengeService(TrustedConnection& conn, std::time_t now,
                                           const std::string& pcr_selection = kDefaultPcrSelection);

// Checks that the answer's quote is bound to THIS session (kPermissionDenied otherwise: "bound
// to another TLS session"), then has the host link it into deep evidence and checks that the
// endpoint is the host in the evidence (channel binding) and that the evidence is about this
// connection's VM.
Result<SessionEvidence> LinkToHost(const TrustedConnection& conn, const ChallengeExchange& exchange,
                                   const HostAttestationEndpoint& host);

// The verifier's verdict on the evidence, plus the IK certificate of this connection being
// issued by the evidence's host CA. kPermissionDenied naming every failed check if the service
// is not trusted; the verdict (all checks passed) otherwise.
Result<attest::Verdict> AppraiseSessionEvidence(const TrustedConnection& conn, const SessionEvidence& evidence,
                                                const attest::Verifier& verifier, std::time_t now,
                                                attest::NonceTracker* nonces = nullptr);

// All three: what a device runs before sending data.
Result<attest::Verdict> AttestService(TrustedConnection& conn, const HostAttestationEndpoint& host,
                                      const attest::Verifier& verifier, std::time_t now,
                                      const std::string& pcr_selection = kDefaultPcrSelection,
                                      attest::NonceTracker* nonces = nullptr);

}  // namespace vtm::tc
