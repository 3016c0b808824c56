// vtm-verify: the verifier's command line. It lives with the library (attest/) rather than in
// ra-client/ because a verifier runs on the relying party's machine, which has no vtmd, no TPM
// and no RA client; it needs only vtm_attest.
//   vtm-verify nonce [--json]
//   vtm-verify host|deep --evidence FILE --policy FILE --nonce HEX [--json] [--now UNIX]
//                        [--replay-file FILE]
//   vtm-verify learn --evidence FILE [--deep]
// Evidence files hold a serialized HostEvidence / DeepEvidence (proto/attestation.proto), as
// `vtmctl attest` writes them. Exit codes (stable; scripts branch on them):
//   0 trusted, 1 refused (a check failed), 2 bad input (unreadable or malformed file, nonce,
//   policy), 64 usage.
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <map>
#include <string>

#include "attestation.pb.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/verifier.h"

namespace vtm::attest {
namespace {

constexpr int kTrusted = 0;
constexpr int kRefused = 1;
constexpr int kBadInput = 2;
constexpr int kUsage = 64;

int Usage(const std::string& why) {
  std::cerr << "vtm-verify: " << why << "\n"
            << "usage: vtm-verify nonce [--json]\n"
            << "       vtm-verify host|deep --evidence FILE --policy FILE --nonce HEX [--json] [--now UNIX]\n"
            << "                            [--replay-file FILE]\n"
            << "       vtm-verify learn --evidence FILE [--deep]\n"
            << "exit codes: 0 trusted, 1 refused, 2 bad input, 64 usage\n";
  return kUsage;
}

int BadInput(const std::string& what) {
  std::cerr << "vtm-verify: " << what << "\n";
  return kBadInput;
}

Result<std::string> FromHex(const std::string& hex) {
  if (hex.size() % 2 != 0) return Error(ErrorCode::kInvalidArgument, "odd number of hex digits");
  std::string out;
  for (size_t i = 0; i < hex.size(); i += 2) {
    int v = 0;
    for (size_t j = i; j < i + 2; ++j) {
      const char c = hex[j];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) return Error(ErrorCode::kInvalidArgument, "not a hex digit: '" + std::string(1, c) + "'");
      v = v * 16 + d;
    }
    out += static_cast<char>(v);
  }
  return out;
}

int Run(int argc, char** argv) {
  if (argc < 2) return Usage("no command");
  const std::string command = argv[1];
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
    std::cout << PolicyToJson(LearnPolicy(host, deep ? &deep_evidence : nullptr)) << "\n";
    return kTrusted;
  }

  if (opt["policy"].empty()) return Usage("--policy is required");
  if (opt["nonce"].empty()) return Usage("--nonce is required (from `vtm-verify nonce`)");
  auto policy_json = ReadFile(opt["policy"]);
  if (!policy_json.ok()) return BadInput("reading the policy: " + policy_json.error().ToString());
  auto policy = ParsePolicyJson(*policy_json);
  if (!policy.ok()) return BadInput(opt["policy"] + ": " + policy.error().message());
  auto nonce = FromHex(opt["nonce"]);
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
        auto bytes = FromHex(line);
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
