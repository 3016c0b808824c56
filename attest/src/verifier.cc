// The verifier (see verifier.h). Every check runs even when an earlier one failed (a check
// that cannot run because what it needs is missing fails with that reason), so a verdict
// lists all that is wrong and a single defect fails a single check. Chain checks that depend
// only on certificates and keys (host EK certificate, host CA certify evidence, vTPM
// certificates) are cached by the digest of their inputs: repeated appraisals of one host
// verify one quote signature and the logs.
#include "vtm/verifier.h"

#include <google/protobuf/util/json_util.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <tss2/tss2_mu.h>

#include <algorithm>
#include <set>

#include "vtm/certificates.h"
#include "vtm/event_log.h"
#include "vtm/hex.h"
#include "vtm/merkle.h"
#include "vtm/quote.h"
#include "vtm/tpm_structures.h"

namespace vtm::attest {

// ---- nonces ---------------------------------------------------------------------------------

Result<std::string> IssueNonce(std::time_t now) {
  std::string nonce(kNonceSize, '\0');
  const auto t = static_cast<uint64_t>(now);
  for (int i = 0; i < 8; ++i) nonce[i] = static_cast<char>((t >> (56 - 8 * i)) & 0xff);
  if (RAND_bytes(reinterpret_cast<unsigned char*>(nonce.data()) + 8, static_cast<int>(kNonceSize - 8)) != 1) {
    return Error(ErrorCode::kInternal, "the random generator failed");
  }
  return nonce;
}

Result<std::time_t> NonceIssueTime(std::string_view nonce) {
  if (nonce.size() != kNonceSize) {
    return Error(ErrorCode::kInvalidArgument,
                 "the nonce has " + std::to_string(nonce.size()) + " bytes; vtm-verify nonces have 32");
  }
  uint64_t t = 0;
  for (int i = 0; i < 8; ++i) t = (t << 8) | static_cast<uint8_t>(nonce[i]);
  return static_cast<std::time_t>(t);
}

bool NonceTracker::FirstUse(const std::string& nonce, std::time_t issued, std::time_t now, uint32_t window) {
  std::lock_guard<std::mutex> lock(mu_);
  while (!by_time_.empty() && by_time_.begin()->first + static_cast<std::time_t>(window) < now) {
    seen_.erase(by_time_.begin()->second);
    by_time_.erase(by_time_.begin());
  }
  if (!seen_.emplace(nonce, issued).second) return false;
  by_time_.emplace(issued, nonce);
  return true;
}

// ---- verdicts -------------------------------------------------------------------------------

const Check* Verdict::Find(std::string_view name) const {
  for (const Check& c : checks) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

std::vector<std::string> Verdict::Failed() const {
  std::vector<std::string> out;
  for (const Check& c : checks) {
    if (!c.passed) out.push_back(c.name);
  }
  return out;
}

namespace {

std::string JsonString(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          static const char kHex[] = "0123456789abcdef";
          out += "\\u00";
          out += kHex[(c >> 4) & 0xf];
          out += kHex[c & 0xf];
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

}  // namespace

std::string Verdict::ToJson() const {
  std::string out = std::string("{\"trusted\":") + (trusted ? "true" : "false") + ",\"checks\":[";
  for (size_t i = 0; i < checks.size(); ++i) {
    if (i > 0) out += ",";
    out += "{\"name\":" + JsonString(checks[i].name) + ",\"passed\":" + (checks[i].passed ? "true" : "false") +
           ",\"reason\":" + JsonString(checks[i].reason) + "}";
  }
  return out + "]}";
}

std::string Verdict::ToText() const {
  std::string out = trusted ? "TRUSTED\n" : "REFUSED\n";
  for (const Check& c : checks) out += std::string(c.passed ? "  ok    " : "  FAIL  ") + c.name + ": " + c.reason + "\n";
  return out;
}

// ---- policy ---------------------------------------------------------------------------------

Result<AttestationPolicy> ParsePolicyJson(std::string_view json) {
  AttestationPolicy policy;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  auto status = google::protobuf::util::JsonStringToMessage(std::string(json), &policy, options);
  if (!status.ok()) {
    return Error(ErrorCode::kInvalidArgument, "the policy is not a valid AttestationPolicy JSON: " +
                                                  std::string(status.message()));
  }
  if (policy.version() != 1) {
    return Error(ErrorCode::kInvalidArgument,
                 "the policy has version " + std::to_string(policy.version()) + " (this verifier reads 1)");
  }
  return policy;
}

std::string PolicyToJson(const AttestationPolicy& policy) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(policy, &out, options);
  return out;
}

// ---- the verifier ---------------------------------------------------------------------------

namespace {

using Checks = std::vector<Check>;

void Add(Checks& checks, const std::string& name, bool passed, std::string reason) {
  checks.push_back({name, passed, std::move(reason)});
}
void AddStatus(Checks& checks, const std::string& name, const Status& st, std::string ok_reason) {
  if (st.ok()) {
    Add(checks, name, true, std::move(ok_reason));
  } else {
    Add(checks, name, false, st.error().message());
  }
}

Result<TPM2_ALG_ID> BankOf(const std::string& name) {
  if (name.empty() || name == "sha256") return TPM2_ALG_ID{TPM2_ALG_SHA256};
  if (name == "sha1") return TPM2_ALG_ID{TPM2_ALG_SHA1};
  if (name == "sha384") return TPM2_ALG_ID{TPM2_ALG_SHA384};
  return Error(ErrorCode::kInvalidArgument, "unknown PCR bank \"" + name + "\"");
}

std::string BankName(TPM2_ALG_ID alg) {
  switch (alg) {
    case TPM2_ALG_SHA1:
      return "sha1";
    case TPM2_ALG_SHA256:
      return "sha256";
    case TPM2_ALG_SHA384:
      return "sha384";
    default:
      return std::to_string(alg);
  }
}

bool Listed(const google::protobuf::RepeatedPtrField<std::string>& allowed, std::string_view bytes) {
  const std::string hex = HexEncode(bytes);
  return std::find(allowed.begin(), allowed.end(), hex) != allowed.end();
}

// The policy's PCR references against a quote's values.
Status CheckPcrs(const google::protobuf::RepeatedPtrField<PcrReference>& refs, const QuotedPcrs& pcrs) {
  for (const PcrReference& ref : refs) {
    VTM_ASSIGN_OR_RETURN(TPM2_ALG_ID bank, BankOf(ref.bank()));
    const std::string* value = pcrs.Find(bank, ref.pcr());
    const std::string where = BankName(bank) + ":" + std::to_string(ref.pcr());
    if (value == nullptr) return Error(ErrorCode::kFailedPrecondition, "PCR " + where + " is not in the quote");
    if (!Listed(ref.values(), *value)) {
      return Error(ErrorCode::kFailedPrecondition,
                   "PCR " + where + " is " + HexEncode(*value) + ", not an allowed value");
    }
  }
  return OkStatus();
}

// Every PCR a replay produced that the quote also covers must equal the quoted value;
// `which` limits the comparison to some PCRs (empty: all).
Status CompareReplay(const PcrReplay& replay, const QuotedPcrs& pcrs, const std::set<uint32_t>& which,
                     const char* log_name) {
  int compared = 0;
  for (const auto& [bank, values] : replay) {
    for (const auto& [pcr, value] : values) {
      if (!which.empty() && which.count(pcr) == 0) continue;
      const std::string* quoted = pcrs.Find(bank, pcr);
      if (quoted == nullptr) continue;
      ++compared;
      if (*quoted != value) {
        return Error(ErrorCode::kFailedPrecondition,
                     std::string(log_name) + " replays PCR " + BankName(bank) + ":" + std::to_string(pcr) + " to " +
                         HexEncode(value) + " but the quote has " + HexEncode(*quoted) +
                         " (an entry was edited, left out or added)");
      }
    }
  }
  if (compared == 0) {
    return Error(ErrorCode::kFailedPrecondition,
                 std::string(log_name) + " covers no PCR the quote covers, so it proves nothing");
  }
  return OkStatus();
}

std::string ChainKey(std::initializer_list<std::string_view> parts) {
  std::string preimage;
  for (std::string_view p : parts) {
    preimage += std::to_string(p.size()) + ":";
    preimage.append(p);
  }
  auto d = TpmDigest(TPM2_ALG_SHA256, preimage);
  return d.ok() ? *d : preimage;
}

}  // namespace

struct Verifier::Impl {
  AttestationPolicy policy;
  std::vector<X509Ptr> host_ek_anchors;
  std::vector<X509Ptr> host_ca_anchors;
  uint32_t freshness = kDefaultFreshnessSeconds;

  mutable std::mutex cache_mu;
  mutable std::map<std::string, Checks> chain_cache;  // guarded by cache_mu

  // Runs compute() once per key; later calls return the cached checks.
  template <typename F>
  Checks Cached(const std::string& key, F compute) const {
    {
      std::lock_guard<std::mutex> lock(cache_mu);
      auto it = chain_cache.find(key);
      if (it != chain_cache.end()) return it->second;
    }
    Checks checks = compute();
    std::lock_guard<std::mutex> lock(cache_mu);
    if (chain_cache.size() > 10000) chain_cache.clear();  // bound memory; a cache, not a record
    chain_cache.emplace(key, checks);
    return checks;
  }

  void Freshness(Checks& checks, const std::string& nonce, std::string_view expected, std::time_t now,
                 NonceTracker* nonces) const;
  Checks HostChain(const HostIdentity& host, std::time_t now) const;
  void HostQuoteAndLogs(Checks& checks, const HostEvidence& e, const std::string& leaf, ParsedQuote* parsed_out,
                        bool* parsed_ok) const;
  Checks VtpmChain(const HostIdentity& host, const VtpmIdentity& vtpm) const;
};

Verifier::~Verifier() = default;

Result<std::unique_ptr<Verifier>> Verifier::Create(const AttestationPolicy& policy) {
  std::unique_ptr<Verifier> v(new Verifier());
  v->impl_ = std::make_unique<Impl>();
  Impl& impl = *v->impl_;
  impl.policy = policy;
  if (policy.freshness_seconds() != 0) impl.freshness = policy.freshness_seconds();
  for (const std::string& pem : policy.host_ek_ca_pem()) {
    auto certs = LoadCertificates(pem);
    if (!certs.ok()) return std::move(certs).error().Context("policy host_ek_ca_pem");
    for (auto& c : *certs) impl.host_ek_anchors.push_back(std::move(c));
  }
  for (const std::string& pem : policy.host_ca_issuer_pem()) {
    auto certs = LoadCertificates(pem);
    if (!certs.ok()) return std::move(certs).error().Context("policy host_ca_issuer_pem");
    for (auto& c : *certs) impl.host_ca_anchors.push_back(std::move(c));
  }
  for (const auto* refs : {&policy.host_pcrs(), &policy.guest_pcrs()}) {
    for (const PcrReference& ref : *refs) {
      auto bank = BankOf(ref.bank());
      if (!bank.ok()) return std::move(bank).error().Context("policy");
      if (ref.pcr() > 23) return Error(ErrorCode::kInvalidArgument, "policy: PCR " + std::to_string(ref.pcr()));
    }
  }
  return v;
}

void Verifier::Impl::Freshness(Checks& checks, const std::string& nonce, std::string_view expected, std::time_t now,
                               NonceTracker* nonces) const {
  const bool match =
      nonce.size() == expected.size() && CRYPTO_memcmp(nonce.data(), expected.data(), expected.size()) == 0;
  Add(checks, "nonce_match", match,
      match ? "the evidence answers this verifier's nonce"
            : "the evidence answers nonce " + HexEncode(nonce) + ", not " + HexEncode(expected) +
                  " (replayed or for another request)");
  auto issued = NonceIssueTime(expected);
  if (!issued.ok()) {
    Add(checks, "nonce_fresh", false, issued.error().message());
  } else if (*issued > now + 60) {
    Add(checks, "nonce_fresh", false, "the nonce was issued in the future (clock skew over 60 s?)");
  } else if (now - *issued > static_cast<std::time_t>(freshness)) {
    Add(checks, "nonce_fresh", false,
        "the nonce was issued " + std::to_string(now - *issued) + " s ago; the freshness window is " +
            std::to_string(freshness) + " s");
  } else {
    Add(checks, "nonce_fresh", true, "issued " + std::to_string(now - *issued) + " s ago");
  }
  if (nonces != nullptr) {
    const bool first = issued.ok() && nonces->FirstUse(std::string(expected), *issued, now, freshness);
    Add(checks, "nonce_unused", first,
        first ? "first use of this nonce" : "this nonce was already used for an accepted appraisal (replay)");
  }
}

Checks Verifier::Impl::HostChain(const HostIdentity& host, std::time_t now) const {
  Checks checks;
  // The kind of host TPM.
  if (host.simulated_host_tpm()) {
    Add(checks, "host_tpm_kind", policy.accept_simulated_host_tpm(),
        policy.accept_simulated_host_tpm() ? "simulated host TPM (swtpm), accepted by policy"
                                           : "the host TPM is simulated (swtpm), not a hardware root of trust; "
                                             "the policy does not accept it");
  } else {
    Add(checks, "host_tpm_kind", true, "hardware host TPM (as the host claims; its EK certificate decides)");
  }
  // Host EK certificate -> manufacturer/fleet CA, and its key is the host EK.
  {
    Status st = [&]() -> Status {
      if (host.ek_certificate().empty()) return Error(ErrorCode::kFailedPrecondition, "no host EK certificate");
      auto cert = LoadCertificate(host.ek_certificate());
      if (!cert.ok()) return std::move(cert).error().Context("host EK certificate");
      std::vector<X509*> anchors;
      for (const auto& a : host_ek_anchors) anchors.push_back(a.get());
      VTM_RETURN_IF_ERROR(VerifyChain(cert->get(), {}, anchors, now));
      VTM_ASSIGN_OR_RETURN(std::string spki, CertificateSpki(cert->get()));
      auto ek = SpkiFromTpmPublic(host.ek_public());
      if (!ek.ok()) return std::move(ek).error().Context("host EK public");
      if (*ek != spki) {
        return Error(ErrorCode::kFailedPrecondition, "the host EK certificate is for another key than the host EK");
      }
      return OkStatus();
    }();
    AddStatus(checks, "host_ek_certificate", st, "chains to a trusted manufacturer/fleet CA and names the host EK");
  }
  // Host AK: a restricted signing key bound to the EK by an earlier credential activation.
  {
    Status st = [&]() -> Status {
      auto ak = ParseTpm2bPublic(host.ak_public(), "host AK public");
      if (!ak.ok()) return std::move(ak).error();
      const TPMA_OBJECT a = ak->publicArea.objectAttributes;
      if (!(a & TPMA_OBJECT_RESTRICTED) || !(a & TPMA_OBJECT_SIGN_ENCRYPT) || !(a & TPMA_OBJECT_FIXEDTPM)) {
        return Error(ErrorCode::kFailedPrecondition, "the host AK is not a restricted, fixedTPM signing key");
      }
      VTM_ASSIGN_OR_RETURN(std::string name, TpmNameOfPublic(host.ak_public()));
      if (!Listed(policy.activated_host_ak_names(), name)) {
        return Error(ErrorCode::kFailedPrecondition,
                     "host AK " + HexEncode(name) +
                         " was not bound to the host EK by a credential activation this verifier knows of "
                         "(add it to activated_host_ak_names after activating it)");
      }
      return OkStatus();
    }();
    AddStatus(checks, "host_ak_binding", st, "restricted fixedTPM signing key, bound to the host EK by activation");
  }
  // Host CA: its TPM2_Certify evidence is by the host AK; its issuer is trusted (or it is self-signed).
  {
    Status st = [&]() -> Status {
      if (host.ca_certificate().empty()) return Error(ErrorCode::kFailedPrecondition, "no host CA certificate");
      auto evidence = ExtractCertifyEvidence(host.ca_certificate());
      if (!evidence.ok()) return std::move(evidence).error().Context("host CA certificate");
      VTM_RETURN_IF_ERROR(VerifyCertifyEvidence(host.ca_certificate(), *evidence));
      if (evidence->ak_tpm2b_public != host.ak_public()) {
        return Error(ErrorCode::kFailedPrecondition,
                     "the host CA's TPM2_Certify is by another AK than this host's AK (a CA of another host)");
      }
      auto cert = LoadCertificate(host.ca_certificate());
      if (!cert.ok()) return std::move(cert).error();
      if (host_ca_anchors.empty()) return VerifySignedBy(host.ca_certificate(), host.ca_certificate());
      std::vector<X509Ptr> chain;
      std::vector<X509*> intermediates, anchors;
      for (const std::string& der : host.ca_chain()) {
        auto c = LoadCertificate(der);
        if (!c.ok()) return std::move(c).error().Context("host CA chain");
        intermediates.push_back(c->get());
        chain.push_back(std::move(*c));
      }
      for (const auto& a : host_ca_anchors) anchors.push_back(a.get());
      return VerifyChain(cert->get(), intermediates, anchors, now);
    }();
    AddStatus(checks, "host_ca_certify", st, "the host CA key is in the host TPM (TPM2_Certify by the host AK)");
  }
  return checks;
}

void Verifier::Impl::HostQuoteAndLogs(Checks& checks, const HostEvidence& e, const std::string& leaf,
                                      ParsedQuote* parsed_out, bool* parsed_ok) const {
  // The host quote: structure, signature by the host AK, pcrDigest over the PCR values.
  auto parsed = ParseQuote(e.host_quote());
  {
    Status st = [&]() -> Status {
      if (!parsed.ok()) return parsed.error();
      VTM_RETURN_IF_ERROR(CheckQuoteSignature(e.host_quote(), *parsed, e.host().ak_public()));
      return CheckQuotePcrDigest(*parsed);
    }();
    AddStatus(checks, "host_quote", st, "a TPM2_Quote by the host AK over the PCR values given");
  }
  *parsed_ok = parsed.ok();
  if (!parsed.ok()) {
    for (const char* name : {"merkle_proof", "host_pcrs", "uefi_event_log", "ima_log", "measurement_log"}) {
      Add(checks, name, false, "no host quote to check against");
    }
    return;
  }
  *parsed_out = *parsed;
  const QuotedPcrs& pcrs = parsed->pcrs;
  // This request's leaf is in the batch the host quote signed.
  {
    auto root = MerkleRootFromProof(leaf, e.proof());
    Status st = !root.ok() ? Status(root.error()) : CheckQuoteExtraData(*parsed, *root);
    if (!st.ok() && root.ok()) {
      st = Error(ErrorCode::kFailedPrecondition,
                 "the Merkle proof does not lead from this request's leaf to the root the host quote signed "
                 "(a proof for another request)");
    }
    AddStatus(checks, "merkle_proof", st,
              "leaf " + std::to_string(e.proof().leaf_index()) + " of a batch of " +
                  std::to_string(e.proof().tree_size()) + " under the quoted root");
  }
  AddStatus(checks, "host_pcrs", CheckPcrs(policy.host_pcrs(), pcrs),
            std::to_string(policy.host_pcrs_size()) + " PCRs match the policy");
  // The firmware event log replays to the quoted PCRs.
  if (e.uefi_event_log().empty()) {
    Add(checks, "uefi_event_log", true, "not given (the host exposes none); the host PCR policy decides");
  } else {
    Status st = [&]() -> Status {
      VTM_ASSIGN_OR_RETURN(TcgEventLog log, ParseTcgEventLog(e.uefi_event_log()));
      VTM_ASSIGN_OR_RETURN(PcrReplay replay, ReplayTcgEventLog(log));
      return CompareReplay(replay, pcrs, {}, "the UEFI event log");
    }();
    AddStatus(checks, "uefi_event_log", st, "replays to the quoted PCRs");
  }
  // The IMA log replays to PCR 10 and measures only allowed files.
  if (e.ima_log().empty()) {
    Add(checks, "ima_log", true, "not given (the host runs no IMA)");
  } else {
    Status st = [&]() -> Status {
      VTM_ASSIGN_OR_RETURN(std::vector<ImaEntry> entries, ParseImaLog(e.ima_log()));
      VTM_ASSIGN_OR_RETURN(PcrReplay replay, ReplayImaLog(entries));
      VTM_RETURN_IF_ERROR(CompareReplay(replay, pcrs, {}, "the IMA log"));
      if (policy.allowed_ima_file_digests_size() > 0) {
        for (const ImaEntry& entry : entries) {
          if (entry.file_name == "boot_aggregate" || entry.violation()) continue;
          if (!Listed(policy.allowed_ima_file_digests(), entry.file_digest)) {
            return Error(ErrorCode::kFailedPrecondition, "IMA measured " + entry.file_name + " with digest " +
                                                             HexEncode(entry.file_digest) + ", not allowed");
          }
        }
      }
      return OkStatus();
    }();
    AddStatus(checks, "ima_log", st, "replays to PCR 10");
  }
  // vtmd's measurement log replays to the chosen PCR; its vtmd is allowed.
  {
    const MeasurementLog& log = e.measurement_log();
    Status st = [&]() -> Status {
      if (!log.inconsistency().empty()) {
        return Error(ErrorCode::kFailedPrecondition, "vtmd reports the log inconsistent: " + log.inconsistency());
      }
      if (policy.measurement_pcr() != 0 && log.pcr() != policy.measurement_pcr()) {
        return Error(ErrorCode::kFailedPrecondition, "the log is for PCR " + std::to_string(log.pcr()) +
                                                         ", the policy expects PCR " +
                                                         std::to_string(policy.measurement_pcr()));
      }
      VTM_ASSIGN_OR_RETURN(std::string value, ReplayMeasurementLog(log));
      const std::string* quoted = pcrs.Find(TPM2_ALG_SHA256, log.pcr());
      if (quoted == nullptr) {
        return Error(ErrorCode::kFailedPrecondition,
                     "the host quote does not cover PCR " + std::to_string(log.pcr()) + " of the measurement log");
      }
      if (*quoted != value) {
        return Error(ErrorCode::kFailedPrecondition,
                     "the measurement log replays PCR " + std::to_string(log.pcr()) + " to " + HexEncode(value) +
                         " but the quote has " + HexEncode(*quoted) +
                         " (a foreign extend, a reset, or an edited entry)");
      }
      bool vtmd_seen = false;
      for (const MeasurementEvent& ev : log.events()) {
        if (ev.type() != MEASUREMENT_TYPE_VTMD_START || ev.event_data().empty()) continue;
        VtmdStart start;
        start.ParseFromString(ev.event_data());
        vtmd_seen = true;
        if (policy.allowed_vtmd_sha256_size() > 0 && !Listed(policy.allowed_vtmd_sha256(), start.vtmd_sha256())) {
          return Error(ErrorCode::kFailedPrecondition,
                       "vtmd binary " + HexEncode(start.vtmd_sha256()) + " is not an allowed vtmd");
        }
        if (!log.boot_id().empty() && start.boot_id() != log.boot_id()) {
          return Error(ErrorCode::kFailedPrecondition, "a vtmd start of another boot is in this boot's log");
        }
      }
      if (!vtmd_seen) return Error(ErrorCode::kFailedPrecondition, "the log has no vtmd start entry");
      return OkStatus();
    }();
    AddStatus(checks, "measurement_log", st,
              std::to_string(log.events_size()) + " entries replay to PCR " + std::to_string(log.pcr()) +
                  "; vtmd allowed");
  }
}

Checks Verifier::Impl::VtpmChain(const HostIdentity& host, const VtpmIdentity& vtpm) const {
  Checks checks;
  auto cert_check = [&](const std::string& der, const std::string& tpm_public, bool ek) -> Status {
    if (der.empty()) return Error(ErrorCode::kFailedPrecondition, "no certificate");
    auto cert = LoadCertificate(der);
    if (!cert.ok()) return std::move(cert).error();
    auto signed_by = VerifySignedBy(der, host.ca_certificate());
    if (!signed_by.ok()) {
      return Error(ErrorCode::kFailedPrecondition,
                   "not issued by this host's CA (" + signed_by.error().message() + ")");
    }
    VTM_ASSIGN_OR_RETURN(std::string spki, CertificateSpki(cert->get()));
    auto key = SpkiFromTpmPublic(tpm_public);
    if (!key.ok()) return std::move(key).error().Context("the vTPM's public key");
    if (*key != spki) return Error(ErrorCode::kFailedPrecondition, "the certificate is for another key");
    if (ek && HasCertificatePolicy(cert->get(), kUnprovisionedKeyPolicyOid)) {
      return Error(ErrorCode::kFailedPrecondition,
                   "issued through the swtpm_setup certificate tool for a key vtm did not create "
                   "(policy OID " + std::string(kUnprovisionedKeyPolicyOid) + "): not a vTPM EK certificate");
    }
    if (!ek) {
      const auto uris = CertificateUris(cert->get());
      const std::string want = "urn:uuid:" + vtpm.vm_uuid();
      if (std::find(uris.begin(), uris.end(), want) == uris.end()) {
        return Error(ErrorCode::kFailedPrecondition, "the AK certificate does not name VM " + vtpm.vm_uuid());
      }
    }
    return OkStatus();
  };
  AddStatus(checks, "vtpm_ek_certificate", cert_check(vtpm.ek_certificate(), vtpm.ek_public(), true),
            "issued by the host CA for the vTPM's EK");
  AddStatus(checks, "vtpm_ak_certificate", cert_check(vtpm.ak_certificate(), vtpm.ak_public(), false),
            "issued by the host CA for the vTPM's AK, naming the VM");
  return checks;
}

Verdict Verifier::AppraiseHost(const HostEvidence& evidence, std::string_view expected_nonce, std::time_t now,
                               NonceTracker* nonces) const {
  const Impl& impl = *impl_;
  Checks checks;
  Add(checks, "evidence_format", evidence.version() == 1,
      evidence.version() == 1 ? "version 1"
                              : "evidence version " + std::to_string(evidence.version()) + " (this verifier reads 1)");
  impl.Freshness(checks, evidence.nonce(), expected_nonce, now, nonces);
  const HostIdentity& host = evidence.host();
  Checks chain = impl.Cached(ChainKey({"host", host.SerializeAsString(), std::to_string(now / 3600)}),
                             [&] { return impl.HostChain(host, now); });
  checks.insert(checks.end(), chain.begin(), chain.end());
  ParsedQuote parsed;
  bool parsed_ok = false;
  impl.HostQuoteAndLogs(checks, evidence, HostLeaf(evidence.nonce()), &parsed, &parsed_ok);
  Verdict v;
  v.checks = std::move(checks);
  v.trusted = v.Failed().empty();
  return v;
}

Verdict Verifier::AppraiseDeep(const DeepEvidence& evidence, std::string_view expected_nonce, std::time_t now,
                               NonceTracker* nonces) const {
  const Impl& impl = *impl_;
  Checks checks;
  const HostEvidence& he = evidence.host();
  const VtpmIdentity& vtpm = evidence.vtpm();
  const bool format = evidence.version() == 1 && he.version() == 1;
  Add(checks, "evidence_format", format, format ? "version 1" : "unsupported evidence version (this verifier reads 1)");
  impl.Freshness(checks, he.nonce(), expected_nonce, now, nonces);
  Checks chain = impl.Cached(ChainKey({"host", he.host().SerializeAsString(), std::to_string(now / 3600)}),
                             [&] { return impl.HostChain(he.host(), now); });
  checks.insert(checks.end(), chain.begin(), chain.end());

  auto ek_name = TpmNameOfPublic(vtpm.ek_public());
  auto ak_name = TpmNameOfPublic(vtpm.ak_public());
  const std::string leaf = DeepLeaf(he.nonce(), vtpm.vm_uuid(), ek_name.ok() ? *ek_name : "",
                                    ak_name.ok() ? *ak_name : "", evidence.guest_quote().attest());
  ParsedQuote host_quote;
  bool host_ok = false;
  impl.HostQuoteAndLogs(checks, he, leaf, &host_quote, &host_ok);

  // The measured instance: vtmd launched this VM's vTPM with allowed binaries and this identity.
  {
    const AttestationPolicy& policy = impl.policy;
    Status st = [&]() -> Status {
      if (!ek_name.ok()) return ek_name.error();
      if (!ak_name.ok()) return ak_name.error();
      const InstanceLaunch* found = nullptr;
      InstanceLaunch launch;
      for (const MeasurementEvent& ev : he.measurement_log().events()) {
        if (ev.type() != MEASUREMENT_TYPE_INSTANCE_LAUNCH || ev.event_data().empty()) continue;
        InstanceLaunch l;
        if (!l.ParseFromString(ev.event_data()) || l.vm_uuid() != vtpm.vm_uuid()) continue;
        launch = l;  // the latest launch of this VM counts
        found = &launch;
      }
      if (found == nullptr) {
        return Error(ErrorCode::kFailedPrecondition,
                     "the measurement log has no launch of VM " + vtpm.vm_uuid() + " (not measured by vtmd)");
      }
      if (policy.allowed_swtpm_sha256_size() > 0 && !Listed(policy.allowed_swtpm_sha256(), found->swtpm_sha256())) {
        return Error(ErrorCode::kFailedPrecondition,
                     "swtpm binary " + HexEncode(found->swtpm_sha256()) + " is not an allowed swtpm");
      }
      if (policy.allowed_vtm_instance_sha256_size() > 0 &&
          !Listed(policy.allowed_vtm_instance_sha256(), found->vtm_instance_sha256())) {
        return Error(ErrorCode::kFailedPrecondition,
                     "vtm-instance binary " + HexEncode(found->vtm_instance_sha256()) + " is not allowed");
      }
      if (found->ek_name() != *ek_name || found->ak_name() != *ak_name) {
        return Error(ErrorCode::kFailedPrecondition,
                     "the launched vTPM's EK/AK names are not those of the vTPM in the evidence");
      }
      return OkStatus();
    }();
    AddStatus(checks, "measured_instance", st, "vtmd measured this VM's vTPM launch with allowed binaries");
  }
  Checks vchain = impl.Cached(
      ChainKey({"vtpm", he.host().ca_certificate(), vtpm.SerializeAsString()}),
      [&] { return impl.VtpmChain(he.host(), vtpm); });
  checks.insert(checks.end(), vchain.begin(), vchain.end());

  // The guest quote: by the vTPM AK, over the verifier's nonce.
  auto guest = ParseQuote(evidence.guest_quote());
  {
    Status st = [&]() -> Status {
      if (!guest.ok()) return Error(guest.error().code(), "guest quote: " + guest.error().message());
      VTM_RETURN_IF_ERROR(CheckQuoteSignature(evidence.guest_quote(), *guest, vtpm.ak_public()));
      VTM_RETURN_IF_ERROR(CheckQuoteExtraData(*guest, he.nonce()));
      return CheckQuotePcrDigest(*guest);
    }();
    AddStatus(checks, "guest_quote", st, "a TPM2_Quote by the vTPM's AK over the verifier's nonce");
  }
  if (guest.ok()) {
    AddStatus(checks, "guest_pcrs", CheckPcrs(impl.policy.guest_pcrs(), guest->pcrs),
              std::to_string(impl.policy.guest_pcrs_size()) + " guest PCRs match the policy");
    if (evidence.guest_event_log().empty()) {
      Add(checks, "guest_event_log", true, "not given; the guest PCR policy decides");
    } else {
      Status st = [&]() -> Status {
        VTM_ASSIGN_OR_RETURN(TcgEventLog log, ParseTcgEventLog(evidence.guest_event_log()));
        VTM_ASSIGN_OR_RETURN(PcrReplay replay, ReplayTcgEventLog(log));
        return CompareReplay(replay, guest->pcrs, {}, "the guest event log");
      }();
      AddStatus(checks, "guest_event_log", st, "replays to the guest's quoted PCRs");
    }
  } else {
    Add(checks, "guest_pcrs", false, "no guest quote to check against");
    Add(checks, "guest_event_log", false, "no guest quote to check against");
  }
  Verdict v;
  v.checks = std::move(checks);
  v.trusted = v.Failed().empty();
  return v;
}

AttestationPolicy LearnPolicy(const HostEvidence& host, const DeepEvidence* deep) {
  AttestationPolicy policy;
  policy.set_version(1);
  policy.set_freshness_seconds(kDefaultFreshnessSeconds);
  policy.set_accept_simulated_host_tpm(host.host().simulated_host_tpm());
  auto ak_name = TpmNameOfPublic(host.host().ak_public());
  if (ak_name.ok()) policy.add_activated_host_ak_names(HexEncode(*ak_name));
  auto add_pcrs = [](const Quote& q, google::protobuf::RepeatedPtrField<PcrReference>* out) {
    auto pcrs = ParsePcrValues(q.pcr_values());
    if (!pcrs.ok()) return;
    for (const PcrBank& bank : pcrs->banks) {
      for (const auto& [pcr, value] : bank.values) {
        PcrReference* ref = out->Add();
        ref->set_bank(BankName(bank.hash_alg));
        ref->set_pcr(pcr);
        ref->add_values(HexEncode(value));
      }
    }
  };
  // The measurement PCR's value changes with every launch: it is checked by replay, not pinned.
  const uint32_t mpcr = host.measurement_log().pcr();
  add_pcrs(host.host_quote(), policy.mutable_host_pcrs());
  auto* refs = policy.mutable_host_pcrs();
  refs->erase(std::remove_if(refs->begin(), refs->end(),
                             [&](const PcrReference& r) { return r.pcr() == mpcr && r.bank() == "sha256"; }),
              refs->end());
  policy.set_measurement_pcr(mpcr);
  std::set<std::string> vtmd, swtpm, instance;
  for (const MeasurementEvent& ev : host.measurement_log().events()) {
    if (ev.type() == MEASUREMENT_TYPE_VTMD_START) {
      VtmdStart s;
      if (s.ParseFromString(ev.event_data()) && !ev.event_data().empty()) vtmd.insert(HexEncode(s.vtmd_sha256()));
    } else if (ev.type() == MEASUREMENT_TYPE_INSTANCE_LAUNCH) {
      InstanceLaunch l;
      if (l.ParseFromString(ev.event_data()) && !ev.event_data().empty()) {
        swtpm.insert(HexEncode(l.swtpm_sha256()));
        instance.insert(HexEncode(l.vtm_instance_sha256()));
      }
    }
  }
  for (const auto& d : vtmd) policy.add_allowed_vtmd_sha256(d);
  for (const auto& d : swtpm) policy.add_allowed_swtpm_sha256(d);
  for (const auto& d : instance) policy.add_allowed_vtm_instance_sha256(d);
  if (deep != nullptr) add_pcrs(deep->guest_quote(), policy.mutable_guest_pcrs());
  return policy;
}

}  // namespace vtm::attest
