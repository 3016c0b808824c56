// The attestation exchange of a trusted connection (ISO/IEC 27071 clause 6.5) on the wire: over
// an established mutual TLS 1.3 connection, before any data, the device sends a challenge and
// the service answers with a quote of its vTPM by its AK on a nonce bound to THIS TLS session:
//
//   nonce = u64be(challenge.issued) || SHA-256("vtm-tc-attest-v1" || exporter || random)[0..24)
//   exporter = TLS-Exporter("EXPORTER-vtm-attestation", no context, 32)   (RFC 8446 7.5)
//
// Each side computes the nonce from its own view of the session, so a quote made on another
// session (relayed by a man in the middle, or replayed) answers another nonce. The nonce keeps
// the issue-time prefix of vtm-verify's nonces, so the verifier's freshness check applies.
//
// Frames (all integers big-endian): magic "\0VTM" (a NUL: no text protocol starts with one,
// so a service tells an attestation frame from data by the first byte), version u8 = 1,
// type u8 (1 challenge, 2 answer), body length u32, body:
//   challenge: issued u64 | random (32) | selection length u8 | PCR selection (ASCII, tpm2-tools
//              syntax, e.g. "sha256:0,1,2,3,4,5,6,7,10"; characters a-z 0-9 : , +)
//   answer:    status u8 (0 quoted, 1 refused) | five fields, each u32 length + bytes:
//              quote message (TPMS_ATTEST, `tpm2_quote -m`), quote signature (TPMT_SIGNATURE,
//              `-s`), quoted PCRs (`tpm2_quote -o` file), the guest's TCG event log (may be
//              empty), the service's reason (status 1)
// Anything else (unknown version or type, a length past the field limits below, trailing
// bytes) is refused with kInvalidArgument naming what is wrong. docs/trusted-connection.md.
//
// Thread safety: free functions, no shared state.
#pragma once

#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>

#include "vtm/error.h"
#include "vtm/stream.h"

namespace vtm::tc {

inline constexpr char kAttestationExporterLabel[] = "EXPORTER-vtm-attestation";
inline constexpr size_t kAttestationExporterSize = 32;
inline constexpr size_t kChallengeRandomSize = 32;
inline constexpr size_t kAttestationHeaderSize = 10;
inline constexpr size_t kMaxPcrSelection = 128;
inline constexpr size_t kMaxQuotePart = 4096;          // TPMS_ATTEST, TPMT_SIGNATURE
inline constexpr size_t kMaxQuotePcrs = 16384;         // tpm2_quote -o file
inline constexpr size_t kMaxEventLog = 1 << 20;        // firmware logs are KBs to a few 100 KB
inline constexpr size_t kMaxAnswerReason = 4096;
inline constexpr char kDefaultPcrSelection[] = "sha256:0,1,2,3,4,5,6,7,10";

struct AttestationChallenge {
  uint64_t issued = 0;        // Unix seconds, the device's clock
  std::string random;         // kChallengeRandomSize bytes from the device
  std::string pcr_selection;  // what the service quotes
};

struct AttestationAnswer {
  bool quoted = false;  // false: the service refused, see reason
  std::string quote_message;
  std::string quote_signature;
  std::string quote_pcrs;
  std::string event_log;
  std::string reason;
};

// A fresh challenge (random from OpenSSL's DRBG). kInvalidArgument for a bad selection.
Result<AttestationChallenge> NewChallenge(std::time_t now, const std::string& pcr_selection = kDefaultPcrSelection);
// The quote nonce for a challenge on a session whose exporter value is `exporter`.
std::string SessionNonce(std::string_view exporter, const AttestationChallenge& challenge);
// Characters and length of a PCR selection (the service passes it to tpm2_quote -l).
Status CheckPcrSelection(std::string_view selection);

std::string EncodeChallenge(const AttestationChallenge& challenge);
std::string EncodeAnswer(const AttestationAnswer& answer);
// Whole frames (header and body), as ReadAttestationFrame returns them.
Result<AttestationChallenge> DecodeChallenge(std::string_view frame);
Result<AttestationAnswer> DecodeAnswer(std::string_view frame);

// Reads one frame from stream; `already_read` are its first bytes if the caller took them
// (a service peeks at the first byte). The length is checked before the body is read.
Result<std::string> ReadAttestationFrame(Stream& stream, std::string_view already_read = {});

}  // namespace vtm::tc
