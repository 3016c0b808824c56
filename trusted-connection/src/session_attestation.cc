// Deep attestation of the service over a trusted connection; see session_attestation.h.
#include "vtm/session_attestation.h"

#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "remote_client.h"
#include "vtm/hex.h"
#include "vtm/ossl_ptr.h"
#include "vtm/quote.h"

namespace vtm::tc {
namespace {

using X509Ptr = OsslPtr<X509, X509_free>;
using PkeyPtr = OsslPtr<EVP_PKEY, EVP_PKEY_free>;

Result<X509Ptr> ParseDer(const std::string& der, const std::string& what) {
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (!cert) return Error(ErrorCode::kInvalidArgument, what + " is not a DER certificate");
  return cert;
}

Result<std::string> ThisSessionNonce(const TrustedConnection& conn, const AttestationChallenge& challenge) {
  VTM_ASSIGN_OR_RETURN(SecretBytes exporter, conn.ExportKeyingMaterial(kAttestationExporterLabel, kAttestationExporterSize));
  return SessionNonce(std::string_view(reinterpret_cast<const char*>(exporter.data()), exporter.size()), challenge);
}

}  // namespace

Result<ChallengeExchange> ChallengeService(TrustedConnection& conn, std::time_t now, const std::string& pcr_selection) {
  ChallengeExchange x;
  VTM_ASSIGN_OR_RETURN(x.challenge, NewChallenge(now, pcr_selection));
  VTM_RETURN_IF_ERROR(conn.Write(EncodeChallenge(x.challenge)));
  auto frame = ReadAttestationFrame(conn);
  if (!frame.ok()) return std::move(frame).error().Context("reading the service's attestation answer");
  VTM_ASSIGN_OR_RETURN(x.answer, DecodeAnswer(*frame));
  return x;
}

Result<SessionEvidence> LinkToHost(const TrustedConnection& conn, const ChallengeExchange& x,
                                   const HostAttestationEndpoint& host) {
  if (!x.answer.quoted) {
    return Error(ErrorCode::kPermissionDenied, "the service did not quote its vTPM: " + x.answer.reason);
  }
  SessionEvidence out;
  out.challenge = x.challenge;
  VTM_ASSIGN_OR_RETURN(out.nonce, ThisSessionNonce(conn, x.challenge));
  attest::Quote quote;
  quote.set_attest(x.answer.quote_message);
  quote.set_signature(x.answer.quote_signature);
  auto pcrs = attest::PcrValuesFromTpm2ToolsFile(x.answer.quote_pcrs);
  if (!pcrs.ok()) return std::move(pcrs).error().Context("the service's quoted PCRs");
  quote.set_pcr_values(*pcrs);
  auto parsed = attest::ParseQuote(quote);
  if (!parsed.ok()) return std::move(parsed).error().Context("the service's quote");
  if (!attest::CheckQuoteExtraData(*parsed, out.nonce).ok()) {
    return Error(ErrorCode::kPermissionDenied,
                 "the service's evidence is bound to another TLS session: its quote answers nonce " +
                     HexEncode(parsed->extra_data) + ", this session's is " + HexEncode(out.nonce) +
                     " (relayed or replayed evidence); refused before any data was sent");
  }
  auto client = RemoteAttestationClient::Connect(host.server, host.credentials, host.timeout);
  if (!client.ok()) return std::move(client).error().Context("reaching the host's attestation endpoint " + host.server);
  api::AttestDeepRequest request;
  request.set_vm(conn.service().vm_uuid);
  request.set_nonce(out.nonce);
  *request.mutable_guest_quote() = quote;
  request.set_guest_event_log(x.answer.event_log);
  auto deep = (*client)->DeepEvidence(request);
  if (!deep.ok()) return std::move(deep).error().Context("the host linking the service's quote");
  VTM_RETURN_IF_ERROR((*client)->CheckServedBy(deep->host().host()));
  if (deep->vtpm().vm_uuid() != conn.service().vm_uuid) {
    return Error(ErrorCode::kPermissionDenied, "the host's evidence is about VM " + deep->vtpm().vm_uuid() +
                                                   ", not the service's VM " + conn.service().vm_uuid);
  }
  out.evidence = std::move(*deep);
  return out;
}

Result<attest::Verdict> AppraiseSessionEvidence(const TrustedConnection& conn, const SessionEvidence& ev,
                                                const attest::Verifier& verifier, std::time_t now,
                                                attest::NonceTracker* nonces) {
  attest::Verdict verdict = verifier.AppraiseDeep(ev.evidence, ev.nonce, now, nonces);
  // The IK behind this TLS session and the attested vTPM belong together: the same VM, and
  // the host CA the appraisal tied to the host TPM issued the IK certificate.
  attest::Check same;
  same.name = "service_identity";
  auto ik = ParseDer(conn.service().certificate_der, "the service's IK certificate");
  auto ca = ParseDer(ev.evidence.host().host().ca_certificate(), "the evidence's host CA certificate");
  if (!ik.ok() || !ca.ok()) {
    same.reason = !ik.ok() ? ik.error().message() : ca.error().message();
  } else {
    PkeyPtr ca_key(X509_get_pubkey(ca->get()));
    if (ev.evidence.vtpm().vm_uuid() != conn.service().vm_uuid) {
      same.reason = "the evidence is about VM " + ev.evidence.vtpm().vm_uuid() + ", the connection's IK names VM " +
                    conn.service().vm_uuid;
    } else if (!ca_key || X509_check_issued(ca->get(), ik->get()) != X509_V_OK || X509_verify(ik->get(), ca_key.get()) != 1) {
      same.reason = "the service's IK certificate was not issued by the attested host's CA";
    } else {
      same.passed = true;
      same.reason = "the IK of this TLS session is VM " + conn.service().vm_uuid + "'s, certified by the attested host's CA";
    }
  }
  verdict.trusted = verdict.trusted && same.passed;
  verdict.checks.push_back(std::move(same));
  if (!verdict.trusted) {
    std::string failed;
    for (const auto& name : verdict.Failed()) failed += (failed.empty() ? "" : ", ") + name;
    return Error(ErrorCode::kPermissionDenied,
                 "the service's environment is not trusted (failed: " + failed + "); no data sent\n" + verdict.ToText());
  }
  return verdict;
}

Result<attest::Verdict> AttestService(TrustedConnection& conn, const HostAttestationEndpoint& host,
                                      const attest::Verifier& verifier, std::time_t now,
                                      const std::string& pcr_selection, attest::NonceTracker* nonces) {
  VTM_ASSIGN_OR_RETURN(ChallengeExchange x, ChallengeService(conn, now, pcr_selection));
  VTM_ASSIGN_OR_RETURN(SessionEvidence ev, LinkToHost(conn, x, host));
  return AppraiseSessionEvidence(conn, ev, verifier, now, nonces);
}

}  // namespace vtm::tc
