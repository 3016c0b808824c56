// The attestation challenge/answer frames; see attestation_wire.h.
#include "vtm/attestation_wire.h"

#include <openssl/rand.h>

#include <cstring>

#include "vtm/digest.h"

namespace vtm::tc {
namespace {

constexpr char kMagic[4] = {'\0', 'V', 'T', 'M'};
constexpr uint8_t kVersion = 1;
constexpr uint8_t kTypeChallenge = 1;
constexpr uint8_t kTypeAnswer = 2;
constexpr char kNonceDomain[] = "vtm-tc-attest-v1";
constexpr size_t kChallengeBodyMax = 8 + kChallengeRandomSize + 1 + kMaxPcrSelection;
constexpr size_t kAnswerBodyMax = 1 + 5 * 4 + 2 * kMaxQuotePart + kMaxQuotePcrs + kMaxEventLog + kMaxAnswerReason;

void PutU32(std::string* out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out->push_back(static_cast<char>((v >> shift) & 0xff));
}
void PutU64(std::string* out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out->push_back(static_cast<char>((v >> shift) & 0xff));
}
uint64_t GetBe(std::string_view bytes) {
  uint64_t v = 0;
  for (char c : bytes) v = (v << 8) | static_cast<uint8_t>(c);
  return v;
}

std::string Frame(uint8_t type, const std::string& body) {
  std::string out(kMagic, sizeof kMagic);
  out.push_back(static_cast<char>(kVersion));
  out.push_back(static_cast<char>(type));
  PutU32(&out, static_cast<uint32_t>(body.size()));
  return out + body;
}

Error Bad(const std::string& what) {
  return Error(ErrorCode::kInvalidArgument, "malformed attestation frame: " + what);
}

// Checks the header of `frame` (at least kAttestationHeaderSize bytes); the body length.
Result<size_t> CheckHeader(std::string_view header) {
  if (header.size() < kAttestationHeaderSize) return Bad("shorter than its 10-byte header");
  if (std::memcmp(header.data(), kMagic, sizeof kMagic) != 0) {
    return Bad("it does not start with the magic \\0VTM (the peer does not speak the attestation exchange)");
  }
  if (static_cast<uint8_t>(header[4]) != kVersion) {
    return Bad("version " + std::to_string(static_cast<uint8_t>(header[4])) + " (this side speaks version 1)");
  }
  const uint8_t type = static_cast<uint8_t>(header[5]);
  const size_t len = GetBe(header.substr(6, 4));
  if (type == kTypeChallenge) {
    if (len > kChallengeBodyMax) return Bad("a challenge of " + std::to_string(len) + " bytes (at most 169)");
  } else if (type == kTypeAnswer) {
    if (len > kAnswerBodyMax) return Bad("an answer of " + std::to_string(len) + " bytes (over the field limits)");
  } else {
    return Bad("unknown frame type " + std::to_string(type));
  }
  return len;
}

// Body of `frame` if its header says `type` and the length matches exactly.
Result<std::string_view> Body(std::string_view frame, uint8_t type, const char* name) {
  VTM_ASSIGN_OR_RETURN(size_t len, CheckHeader(frame));
  if (static_cast<uint8_t>(frame[5]) != type) return Bad(std::string("expected ") + name + ", got another frame type");
  if (frame.size() - kAttestationHeaderSize != len) {
    return Bad(std::string(name) + " length field says " + std::to_string(len) + " bytes, " +
               std::to_string(frame.size() - kAttestationHeaderSize) + " follow");
  }
  return frame.substr(kAttestationHeaderSize);
}

// Reads a u32-length field of at most max bytes from *body.
Result<std::string> Field(std::string_view* body, size_t max, const char* name) {
  if (body->size() < 4) return Bad(std::string("the answer ends before the length of its ") + name);
  const size_t len = GetBe(body->substr(0, 4));
  if (len > max) return Bad(std::string("the ") + name + " is " + std::to_string(len) + " bytes (at most " + std::to_string(max) + ")");
  if (body->size() - 4 < len) return Bad(std::string("the answer ends inside its ") + name);
  std::string out(body->substr(4, len));
  body->remove_prefix(4 + len);
  return out;
}

}  // namespace

Status CheckPcrSelection(std::string_view selection) {
  if (selection.empty() || selection.size() > kMaxPcrSelection) {
    return Error(ErrorCode::kInvalidArgument, "the PCR selection is empty or longer than 128 characters");
  }
  for (char c : selection) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == ':' || c == ',' || c == '+')) {
      return Error(ErrorCode::kInvalidArgument,
                   "the PCR selection '" + std::string(selection) + "' has a character outside a-z 0-9 : , + "
                   "(tpm2-tools syntax, e.g. sha256:0,1,2,10)");
    }
  }
  if (selection.find(':') == std::string_view::npos) {
    return Error(ErrorCode::kInvalidArgument, "the PCR selection '" + std::string(selection) + "' names no bank (BANK:PCRS)");
  }
  return OkStatus();
}

Result<AttestationChallenge> NewChallenge(std::time_t now, const std::string& pcr_selection) {
  VTM_RETURN_IF_ERROR(CheckPcrSelection(pcr_selection));
  AttestationChallenge c;
  c.issued = static_cast<uint64_t>(now);
  c.random.resize(kChallengeRandomSize);
  if (RAND_bytes(reinterpret_cast<unsigned char*>(c.random.data()), static_cast<int>(c.random.size())) != 1) {
    return Error(ErrorCode::kInternal, "no random bytes for the attestation challenge");
  }
  c.pcr_selection = pcr_selection;
  return c;
}

std::string SessionNonce(std::string_view exporter, const AttestationChallenge& challenge) {
  std::string nonce;
  PutU64(&nonce, challenge.issued);
  std::string bound = Sha256Digest(std::string(kNonceDomain) + std::string(exporter) + challenge.random);
  return nonce + bound.substr(0, 24);
}

std::string EncodeChallenge(const AttestationChallenge& c) {
  std::string body;
  PutU64(&body, c.issued);
  body += c.random;
  body.push_back(static_cast<char>(c.pcr_selection.size()));
  body += c.pcr_selection;
  return Frame(kTypeChallenge, body);
}

std::string EncodeAnswer(const AttestationAnswer& a) {
  std::string body(1, a.quoted ? '\0' : '\1');
  for (const std::string* f : {&a.quote_message, &a.quote_signature, &a.quote_pcrs, &a.event_log, &a.reason}) {
    PutU32(&body, static_cast<uint32_t>(f->size()));
    body += *f;
  }
  return Frame(kTypeAnswer, body);
}

Result<AttestationChallenge> DecodeChallenge(std::string_view frame) {
  VTM_ASSIGN_OR_RETURN(std::string_view body, Body(frame, kTypeChallenge, "a challenge"));
  if (body.size() < 8 + kChallengeRandomSize + 1) return Bad("the challenge is shorter than 41 bytes");
  AttestationChallenge c;
  c.issued = GetBe(body.substr(0, 8));
  c.random = std::string(body.substr(8, kChallengeRandomSize));
  const size_t len = static_cast<uint8_t>(body[8 + kChallengeRandomSize]);
  if (body.size() != 8 + kChallengeRandomSize + 1 + len) {
    return Bad("the challenge's PCR selection length says " + std::to_string(len) + " bytes, " +
               std::to_string(body.size() - 41) + " follow");
  }
  c.pcr_selection = std::string(body.substr(8 + kChallengeRandomSize + 1));
  VTM_RETURN_IF_ERROR(CheckPcrSelection(c.pcr_selection));
  return c;
}

Result<AttestationAnswer> DecodeAnswer(std::string_view frame) {
  VTM_ASSIGN_OR_RETURN(std::string_view body, Body(frame, kTypeAnswer, "an answer"));
  if (body.empty()) return Bad("the answer has no status");
  const uint8_t status = static_cast<uint8_t>(body[0]);
  if (status > 1) return Bad("answer status " + std::to_string(status) + " (0 quoted, 1 refused)");
  body.remove_prefix(1);
  AttestationAnswer a;
  a.quoted = status == 0;
  VTM_ASSIGN_OR_RETURN(a.quote_message, Field(&body, kMaxQuotePart, "quote message"));
  VTM_ASSIGN_OR_RETURN(a.quote_signature, Field(&body, kMaxQuotePart, "quote signature"));
  VTM_ASSIGN_OR_RETURN(a.quote_pcrs, Field(&body, kMaxQuotePcrs, "quoted PCRs"));
  VTM_ASSIGN_OR_RETURN(a.event_log, Field(&body, kMaxEventLog, "event log"));
  VTM_ASSIGN_OR_RETURN(a.reason, Field(&body, kMaxAnswerReason, "reason"));
  if (!body.empty()) return Bad(std::to_string(body.size()) + " bytes after the answer's last field");
  if (a.quoted && (a.quote_message.empty() || a.quote_signature.empty() || a.quote_pcrs.empty())) {
    return Bad("the answer says quoted but lacks the quote message, signature or PCRs");
  }
  if (!a.quoted && a.reason.empty()) return Bad("the answer refuses without a reason");
  return a;
}

Result<std::string> ReadAttestationFrame(Stream& stream, std::string_view already_read) {
  if (already_read.size() > kAttestationHeaderSize) return Bad("more than a header was taken before reading it");
  std::string frame(already_read);
  frame.resize(kAttestationHeaderSize);
  VTM_RETURN_IF_ERROR(stream.ReadAll(frame.data() + already_read.size(), kAttestationHeaderSize - already_read.size()));
  VTM_ASSIGN_OR_RETURN(size_t len, CheckHeader(frame));
  frame.resize(kAttestationHeaderSize + len);
  if (len > 0) VTM_RETURN_IF_ERROR(stream.ReadAll(frame.data() + kAttestationHeaderSize, len));
  return frame;
}

}  // namespace vtm::tc
