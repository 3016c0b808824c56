// The verifier (ISO/IEC 27070 6.4): appraises host evidence and deep evidence
// (proto/attestation.proto) against an AttestationPolicy (proto/attestation_policy.proto) and
// returns a Verdict that lists EVERY check with its outcome and reason, so an operator sees
// all that is wrong at once and scripts can branch on check names. The chain walked, and what
// is and is not proven, is in docs/attestation.md. Used by vtm-verify and, for appraising a
// destination host, by the migration engine.
//
// Nonces: IssueNonce makes 32 bytes = issue time (8 bytes, big-endian Unix seconds) || 24
// random bytes, so the verifier can check a nonce's age without keeping state; a
// NonceTracker remembers nonces already accepted within the freshness window (replay).
//
// Thread safety: a Verifier is immutable after Create except for its chain cache, which has
// its own lock; AppraiseHost/AppraiseDeep may run on several threads. NonceTracker is
// thread-safe.
#pragma once

#include <ctime>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "attestation.pb.h"
#include "attestation_policy.pb.h"
#include "vtm/error.h"

namespace vtm::attest {

inline constexpr size_t kNonceSize = 32;
inline constexpr uint32_t kDefaultFreshnessSeconds = 300;

Result<std::string> IssueNonce(std::time_t now);
// The issue time inside a nonce IssueNonce made; kInvalidArgument for another size.
Result<std::time_t> NonceIssueTime(std::string_view nonce);

class NonceTracker {
 public:
  // True the first time nonce is presented; false again until it has aged out of the window.
  bool FirstUse(const std::string& nonce, std::time_t issued, std::time_t now, uint32_t window_seconds);

 private:
  std::mutex mu_;
  std::multimap<std::time_t, std::string> by_time_;  // issue time -> nonce, for expiry
  std::map<std::string, std::time_t> seen_;
};

struct Check {
  std::string name;
  bool passed = false;
  std::string reason;  // why it failed, or what was established
};

struct Verdict {
  bool trusted = false;  // every check passed
  std::vector<Check> checks;

  const Check* Find(std::string_view name) const;
  std::vector<std::string> Failed() const;
  // Stable JSON: {"trusted":bool,"checks":[{"name":..,"passed":..,"reason":..},...]}.
  std::string ToJson() const;
  std::string ToText() const;
};

// Policy files: protobuf JSON mapping; unknown fields are refused (a typo must not silently
// weaken a policy). kInvalidArgument with the parser's reason.
Result<AttestationPolicy> ParsePolicyJson(std::string_view json);
std::string PolicyToJson(const AttestationPolicy& policy);

class Verifier {
 public:
  // Parses the policy's certificates once. kInvalidArgument for a malformed policy.
  static Result<std::unique_ptr<Verifier>> Create(const AttestationPolicy& policy);
  ~Verifier();

  Verdict AppraiseHost(const HostEvidence& evidence, std::string_view expected_nonce, std::time_t now,
                       NonceTracker* nonces = nullptr) const;
  Verdict AppraiseDeep(const DeepEvidence& evidence, std::string_view expected_nonce, std::time_t now,
                       NonceTracker* nonces = nullptr) const;

 private:
  Verifier() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A starting policy from evidence of a known-good host (trust on first use: the operator
// vouches for that host): its quoted PCR values, the measurement PCR, the vtmd/swtpm/
// vtm-instance digests in its measurement log, its AK as activated (the operator must have
// bound it by credential activation), its EK certificate's issuer is NOT added (the operator
// names the manufacturer CAs), and the guest's PCRs if deep evidence is given.
AttestationPolicy LearnPolicy(const HostEvidence& host, const DeepEvidence* deep);

}  // namespace vtm::attest
