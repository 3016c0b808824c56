// vtm-verify: the verifier's command line. It lives with the library (attest/) rather than in
// ra-client/ because a verifier runs on the relying party's machine, which has no vtmd, no TPM
// and no RA client; it needs only vtm_attest.
//   vtm-verify nonce [--json]
//   vtm-verify host|deep --evidence FILE --policy FILE --nonce HEX [--json] [--now UNIX]
//                        [--replay-file FILE]
//   vtm-verify learn --evidence FILE [--deep] [--host-ek-ca PEM-FILE] [--host-ca-issuer PEM-FILE]
//   vtm-verify fetch host|deep --server HOST:PORT --tls-cert F --tls-key F --tls-ca F
//                  --nonce HEX --output FILE [deep: --vm VM --quote-message F
//                  --quote-signature F --quote-pcrs F [--guest-event-log F]]
//   vtm-verify fetch crl --server HOST:PORT --tls-cert F --tls-key F --tls-ca F --output FILE
//   vtm-verify activate --server HOST:PORT --tls-cert F --tls-key F --tls-ca F
//                  --evidence HOST-EVIDENCE --policy FILE
// fetch and activate reach vtmd's attestation endpoint (mutual TLS 1.3) and check that its
// TLS certificate was issued by the host CA in the evidence; activate binds the host AK to the
// host EK by a credential activation and records the AK in the policy's
// activated_host_ak_names (once per host AK; later appraisals rely on it).
// Evidence files hold a serialized HostEvidence / DeepEvidence (proto/attestation.proto), as
// `vtmctl attest` writes them. Exit codes (stable; scripts branch on them):
//   0 trusted, 1 refused (a check failed), 2 bad input (unreadable or malformed file, nonce,
//   policy), 3 the attestation endpoint is unreachable or refused the connection, 64 usage.
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <map>
#include <memory>
#include <string>

#include "attestation.pb.h"
#include "remote_client.h"
#include "vtm.pb.h"
#include "vtm/fs.h"
#include "vtm/quote.h"
#include "vtm/tls.h"
#include "vtm/hex.h"
#include "vtm/verifier.h"

namespace vtm::attest {
namespace {

constexpr int kTrusted = 0;
constexpr int kRefused = 1;
constexpr int kBadInput = 2;
constexpr int kUnreachable = 3;
constexpr int kUsage = 64;

int Usage(const std::string& why) {
  std::cerr << "vtm-verify: " << why << "\n"
            << "usage: vtm-verify nonce [--json]\n"
            << "       vtm-verify host|deep --evidence FILE --policy FILE --nonce HEX [--json] [--now UNIX]\n"
            << "                            [--replay-file FILE]\n"
            << "       vtm-verify learn --evidence FILE [--deep] [--host-ek-ca PEM-FILE] [--host-ca-issuer PEM-FILE]\n"
            << "       vtm-verify fetch host|deep --server HOST:PORT --tls-cert F --tls-key F --tls-ca F --nonce HEX\n"
            << "                  --output FILE [deep: --vm VM --quote-message F --quote-signature F\n"
            << "                  --quote-pcrs F [--guest-event-log F]]\n"
            << "       vtm-verify fetch crl --server HOST:PORT --tls-cert F --tls-key F --tls-ca F --output FILE\n"
            << "       vtm-verify activate --server HOST:PORT --tls-cert F --tls-key F --tls-ca F\n"
            << "                  --evidence HOST-EVIDENCE --policy FILE\n"
            << "exit codes: 0 trusted/done, 1 refused, 2 bad input, 3 endpoint unreachable, 64 usage\n";
  return kUsage;
}

int BadInput(const std::string& what) {
  std::cerr << "vtm-verify: " << what << "\n";
  return kBadInput;
}

// The TLS connection of fetch and activate.
Result<std::unique_ptr<RemoteAttestationClient>> ConnectEndpoint(std::map<std::string, std::string>& opt) {
  auto creds = ReadTlsCredentialFiles(opt["tls-cert"], opt["tls-key"], opt["tls-ca"]);
  if (!creds.ok()) return Error(ErrorCode::kInvalidArgument, "reading the TLS credentials: " + creds.error().message());
  return RemoteAttestationClient::Connect(opt["server"], *creds, std::chrono::seconds(60));
}

int ExitForRemote(const Error& e) {
  std::cerr << "vtm-verify: " << e.message() << "\n";
  switch (e.code()) {
    case ErrorCode::kUnavailable: return kUnreachable;
    case ErrorCode::kPermissionDenied: return kRefused;
    default: return kBadInput;
  }
}

// The host CA's CRL, over the same authenticated channel (the CRL is signed; the channel only
// spares relying parties another distribution point).
int FetchCrl(std::map<std::string, std::string>& opt) {
  for (const char* need : {"server", "tls-cert", "tls-key", "tls-ca", "output"}) {
    if (opt[need].empty()) return Usage(std::string("fetch crl: --") + need + " is required");
  }
  auto client = ConnectEndpoint(opt);
  if (!client.ok()) return ExitForRemote(client.error());
  auto crl = (*client)->Crl();
  if (!crl.ok()) return ExitForRemote(crl.error());
  if (auto st = WriteFileAtomic(opt["output"], *crl, 0644); !st.ok()) return BadInput(st.error().message());
  std::cerr << "wrote the CRL of " << opt["server"] << "'s host CA to " << opt["output"] << "\n";
  return kTrusted;
}

int Fetch(const std::string& kind, std::map<std::string, std::string>& opt) {
  if (kind == "crl") return FetchCrl(opt);
  for (const char* need : {"server", "tls-cert", "tls-key", "tls-ca", "nonce", "output"}) {
    if (opt[need].empty()) return Usage(std::string("fetch: --") + need + " is required");
  }
  auto nonce = HexDecode(opt["nonce"]);
  if (!nonce.ok()) return BadInput("--nonce: " + nonce.error().message());
  api::AttestDeepRequest deep_request;
  if (kind == "deep") {
    if (opt["vm"].empty()) return Usage("fetch deep: --vm is required");
    auto quote = ReadTpm2ToolsQuote(opt["quote-message"], opt["quote-signature"], opt["quote-pcrs"]);
    if (!quote.ok()) return BadInput(quote.error().message());
    deep_request.set_vm(opt["vm"]);
    deep_request.set_nonce(*nonce);
    *deep_request.mutable_guest_quote() = std::move(quote).value();
    if (!opt["guest-event-log"].empty()) {
      auto log = ReadFile(opt["guest-event-log"]);
      if (!log.ok()) return BadInput("--guest-event-log: " + log.error().message());
      deep_request.set_guest_event_log(std::move(log).value());
    }
  } else if (kind != "host") {
    return Usage("fetch host, fetch deep or fetch crl");
  }
  auto client = ConnectEndpoint(opt);
  if (!client.ok()) return ExitForRemote(client.error());
  std::string bytes;
  Status served = OkStatus();
  if (kind == "host") {
    auto ev = (*client)->HostEvidence(*nonce);
    if (!ev.ok()) return ExitForRemote(ev.error());
    served = (*client)->CheckServedBy(ev->host());
    bytes = ev->SerializeAsString();
  } else {
    auto ev = (*client)->DeepEvidence(deep_request);
    if (!ev.ok()) return ExitForRemote(ev.error());
    served = (*client)->CheckServedBy(ev->host().host());
    bytes = ev->SerializeAsString();
  }
  if (!served.ok()) return ExitForRemote(served.error());
  if (auto st = WriteFileAtomic(opt["output"], bytes, 0644); !st.ok()) return BadInput(st.error().message());
  std::cerr << "wrote " << kind << " evidence (" << bytes.size() << " bytes) from " << opt["server"] << " to "
            << opt["output"] << "; appraise it with `vtm-verify " << kind << "`\n";
  return kTrusted;
}

int Activate(std::map<std::string, std::string>& opt) {
  for (const char* need : {"server", "tls-cert", "tls-key", "tls-ca", "evidence", "policy"}) {
    if (opt[need].empty()) return Usage(std::string("activate: --") + need + " is required");
  }
  auto bytes = ReadFile(opt["evidence"]);
  if (!bytes.ok()) return BadInput("reading the evidence: " + bytes.error().message());
  HostEvidence evidence;
  if (!evidence.ParseFromString(*bytes)) return BadInput(opt["evidence"] + " is not a serialized HostEvidence");
  auto policy_json = ReadFile(opt["policy"]);
  if (!policy_json.ok()) return BadInput("reading the policy: " + policy_json.error().message());
  auto policy = ParsePolicyJson(*policy_json);
  if (!policy.ok()) return BadInput(opt["policy"] + ": " + policy.error().message());
  auto client = ConnectEndpoint(opt);
  if (!client.ok()) return ExitForRemote(client.error());
  if (Status served = (*client)->CheckServedBy(evidence.host()); !served.ok()) return ExitForRemote(served.error());
  auto name = ActivateHostAk(**client, evidence.host());
  if (!name.ok()) return ExitForRemote(name.error());
  const std::string hex = HexEncode(*name);
  bool listed = false;
  for (const auto& n : policy->activated_host_ak_names()) listed = listed || n == hex;
  if (!listed) policy->add_activated_host_ak_names(hex);
  if (auto st = WriteFileAtomic(opt["policy"], PolicyToJson(*policy) + "\n", 0644); !st.ok()) {
    return BadInput(st.error().message());
  }
  std::cout << "host AK " << hex << " is in the TPM of the host EK (credential activated by "
            << evidence.host().host_name() << "); " << (listed ? "already in " : "recorded in ") << opt["policy"]
            << "\n";
  return kTrusted;
}

int Run(int argc, char** argv) {
  if (argc < 2) return Usage("no command");
  const std::string command = argv[1];
  if (command == "fetch") {
    if (argc < 3) return Usage("fetch host or fetch deep");
    // Re-parse: fetch takes a kind before its options.
    std::map<std::string, std::string> fopt;
    for (int i = 3; i < argc; ++i) {
      const std::string a = argv[i];
      if (a.rfind("--", 0) != 0 || i + 1 >= argc) return Usage("unexpected argument '" + a + "'");
      fopt[a.substr(2)] = argv[++i];
    }
    return Fetch(argv[2], fopt);
  }
  std::map<std::string, std::string> opt;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json" || a == "--deep") {
      opt[a.substr(2)] = "1";
    } else if (a.rfind("--", 0) == 0 && i + 1 < argc) {
      opt[a.substr(2)] = argv[++i];
    } else {
      return Usage("unexpected argument '" + a + "'");
    }
  }
  const bool json = opt.count("json") != 0;
  const std::time_t now = std::time(nullptr);

  if (command == "nonce") {
    auto nonce = IssueNonce(now);
    if (!nonce.ok()) return BadInput(nonce.error().ToString());
    if (json) {
      std::cout << "{\"nonce\":\"" << HexEncode(*nonce) << "\",\"issued_at\":" << now << "}\n";
    } else {
      std::cout << HexEncode(*nonce) << "\n";
    }
    return kTrusted;
  }
  if (command == "activate") return Activate(opt);
  if (command != "host" && command != "deep" && command != "learn") return Usage("unknown command '" + command + "'");
  if (opt["evidence"].empty()) return Usage("--evidence is required");
  auto evidence_bytes = ReadFile(opt["evidence"]);
  if (!evidence_bytes.ok()) return BadInput("reading the evidence: " + evidence_bytes.error().ToString());
  const bool deep = command == "deep" || (command == "learn" && opt.count("deep") != 0);
  DeepEvidence deep_evidence;
  HostEvidence host_evidence;
  if (deep ? !deep_evidence.ParseFromString(*evidence_bytes) : !host_evidence.ParseFromString(*evidence_bytes)) {
    return BadInput(opt["evidence"] + " is not a serialized " + (deep ? "DeepEvidence" : "HostEvidence"));
  }

  if (command == "learn") {
    const HostEvidence& host = deep ? deep_evidence.host() : host_evidence;
    AttestationPolicy learned = LearnPolicy(host, deep ? &deep_evidence : nullptr);
    // The one thing evidence cannot teach: whom to trust for host EK certificates (the TPM
    // manufacturer's or the fleet's CA). The operator names it; without it the policy trusts none.
    // Likewise whom to trust for a host CA certificate a fleet CA issued (--host-ca-issuer);
    // without it the host CA certificate must be self-signed.
    for (const char* name : {"host-ek-ca", "host-ca-issuer"}) {
      if (opt[name].empty()) continue;
      auto pem = ReadFile(opt[name]);
      if (!pem.ok()) return BadInput(std::string("--") + name + ": " + pem.error().message());
      if (pem->find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
        return BadInput(std::string("--") + name + ": " + opt[name] + " holds no PEM certificate");
      }
      if (std::string(name) == "host-ek-ca") learned.add_host_ek_ca_pem(*pem);
      else learned.add_host_ca_issuer_pem(*pem);
    }
    std::cout << PolicyToJson(learned) << "\n";
    return kTrusted;
  }

  if (opt["policy"].empty()) return Usage("--policy is required");
  if (opt["nonce"].empty()) return Usage("--nonce is required (from `vtm-verify nonce`)");
  auto policy_json = ReadFile(opt["policy"]);
  if (!policy_json.ok()) return BadInput("reading the policy: " + policy_json.error().ToString());
  auto policy = ParsePolicyJson(*policy_json);
  if (!policy.ok()) return BadInput(opt["policy"] + ": " + policy.error().message());
  auto nonce = HexDecode(opt["nonce"]);
  if (!nonce.ok()) return BadInput("--nonce: " + nonce.error().message());
  if (!NonceIssueTime(*nonce).ok()) return BadInput("--nonce: " + NonceIssueTime(*nonce).error().message());
  std::time_t at = now;
  if (!opt["now"].empty()) {
    char* end = nullptr;
    const long long v = std::strtoll(opt["now"].c_str(), &end, 10);
    if (end == opt["now"].c_str() || *end != '\0' || v < 0) return Usage("--now takes Unix seconds");
    at = static_cast<std::time_t>(v);
  }
  auto verifier = Verifier::Create(*policy);
  if (!verifier.ok()) return BadInput(opt["policy"] + ": " + verifier.error().message());

  // --replay-file: nonces already accepted, one hex nonce a line; a trusted verdict appends.
  NonceTracker tracker;
  const std::string replay_file = opt["replay-file"];
  if (!replay_file.empty()) {
    auto seen = ReadFile(replay_file);
    if (seen.ok()) {
      size_t start = 0;
      while (start < seen->size()) {
        const size_t end = seen->find('\n', start);
        const std::string line = seen->substr(start, end == std::string::npos ? std::string::npos : end - start);
        auto bytes = HexDecode(line);
        auto issued = bytes.ok() ? NonceIssueTime(*bytes) : Result<std::time_t>(bytes.error());
        if (issued.ok()) (void)tracker.FirstUse(*bytes, *issued, at, policy->freshness_seconds() == 0
                                                                     ? kDefaultFreshnessSeconds
                                                                     : policy->freshness_seconds());
        if (end == std::string::npos) break;
        start = end + 1;
      }
    }
  }
  const Verdict v = deep ? (*verifier)->AppraiseDeep(deep_evidence, *nonce, at, replay_file.empty() ? nullptr : &tracker)
                         : (*verifier)->AppraiseHost(host_evidence, *nonce, at, replay_file.empty() ? nullptr : &tracker);
  if (v.trusted && !replay_file.empty()) {
    auto previous = ReadFile(replay_file);
    std::string content = previous.ok() ? *previous : "";
    content += HexEncode(*nonce) + "\n";
    if (!WriteFileAtomic(replay_file, content, 0600).ok()) return BadInput("cannot update " + replay_file);
  }
  std::cout << (json ? v.ToJson() + "\n" : v.ToText());
  return v.trusted ? kTrusted : kRefused;
}

}  // namespace
}  // namespace vtm::attest

int main(int argc, char** argv) { return vtm::attest::Run(argc, argv); }
