// Unit tests of the attestation challenge/answer frames of a trusted connection
// (vtm/attestation_wire.h): round trips, the session nonce's layout, and every refusal of a
// malformed frame with its reason.
#include "vtm/attestation_wire.h"

#include <gtest/gtest.h>

#include <cstring>
#include <optional>

#include "test_env.h"
#include "vtm/digest.h"

namespace vtm::tc {
namespace {

// A Stream over a string, for ReadAttestationFrame.
class StringStream : public Stream {
 public:
  explicit StringStream(std::string data) : data_(std::move(data)) {}
  Status WriteAll(const void*, size_t) override { return OkStatus(); }
  Status ReadAll(void* out, size_t len) override {
    if (data_.size() - off_ < len) return Error(ErrorCode::kUnavailable, "EOF");
    std::memcpy(out, data_.data() + off_, len);
    off_ += len;
    return OkStatus();
  }

 private:
  std::string data_;
  size_t off_ = 0;
};

template <typename T>
std::optional<Error> Refusal(const Result<T>& r) {
  if (r.ok()) return std::nullopt;
  return r.error();
}

TEST(AttestationWire, ChallengeRoundTripAndNonceLayout) {
  auto c = NewChallenge(1700000000, "sha256:0,1,2,10");
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  EXPECT_EQ(c->random.size(), kChallengeRandomSize);
  const std::string frame = EncodeChallenge(*c);
  EXPECT_EQ(frame.substr(0, 6), std::string("\0VTM\x01\x01", 6));
  auto back = DecodeChallenge(frame);
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(back->issued, 1700000000u);
  EXPECT_EQ(back->random, c->random);
  EXPECT_EQ(back->pcr_selection, "sha256:0,1,2,10");

  const std::string exporter(32, 'x');
  const std::string nonce = SessionNonce(exporter, *c);
  ASSERT_EQ(nonce.size(), 32u);
  EXPECT_EQ(nonce.substr(0, 8), std::string("\0\0\0\0\x65\x53\xf1\x00", 8));  // 1700000000 big-endian
  EXPECT_EQ(nonce.substr(8), Sha256Digest("vtm-tc-attest-v1" + exporter + c->random).substr(0, 24));
  // Another session (exporter) or another challenge: another nonce.
  EXPECT_NE(SessionNonce(std::string(32, 'y'), *c), nonce);
  auto c2 = NewChallenge(1700000000);
  ASSERT_TRUE(c2.ok());
  EXPECT_NE(SessionNonce(exporter, *c2), nonce);
  EXPECT_EQ(c2->pcr_selection, kDefaultPcrSelection);
}

TEST(AttestationWire, AnswerRoundTripAndStreamRead) {
  AttestationAnswer a;
  a.quoted = true;
  a.quote_message = std::string("\xff\x54\x43\x47", 4);
  a.quote_signature = "sig";
  a.quote_pcrs = "pcrs";
  a.event_log = std::string(3000, 'l');
  const std::string frame = EncodeAnswer(a);
  StringStream s(frame + "trailing data");
  auto read = ReadAttestationFrame(s);
  ASSERT_TRUE(read.ok()) << read.error().ToString();
  EXPECT_EQ(*read, frame);
  auto back = DecodeAnswer(*read);
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_TRUE(back->quoted);
  EXPECT_EQ(back->quote_message, a.quote_message);
  EXPECT_EQ(back->event_log, a.event_log);
  // The first byte already taken by the caller (a service peeks at it).
  StringStream rest(frame.substr(1));
  auto read2 = ReadAttestationFrame(rest, frame.substr(0, 1));
  ASSERT_TRUE(read2.ok()) << read2.error().ToString();
  EXPECT_EQ(*read2, frame);

  AttestationAnswer refusal;
  refusal.reason = "tpm2_quote failed";
  auto r = DecodeAnswer(EncodeAnswer(refusal));
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_FALSE(r->quoted);
  EXPECT_EQ(r->reason, "tpm2_quote failed");
}

TEST(AttestationWire, RefusesMalformedFramesWithReason) {
  auto c = NewChallenge(1);
  ASSERT_TRUE(c.ok());
  const std::string good = EncodeChallenge(*c);
  AttestationAnswer quoted;
  quoted.quoted = true;
  quoted.quote_message = "m";
  quoted.quote_signature = "s";
  quoted.quote_pcrs = "p";
  const std::string answer = EncodeAnswer(quoted);
  auto with = [](std::string f, size_t at, char v) {
    f[at] = v;
    return f;
  };
  struct Case {
    std::string frame;
    bool challenge;
    std::string reason;
  } cases[] = {
      {"", true, "shorter than its 10-byte header"},
      {with(good, 1, 'X'), true, "does not start with the magic"},
      {with(good, 4, 2), true, "version 2 (this side speaks version 1)"},
      {with(good, 5, 7), true, "unknown frame type 7"},
      {answer, true, "expected a challenge"},
      {good + "x", true, "length field says"},
      {with(good, 9, static_cast<char>(good.size())), true, "length field says"},
      {std::string("\0VTM\x01\x01\x00\x00\x10\x00", 10), true, "a challenge of 4096 bytes"},
      {std::string("\0VTM\x01\x02\x7f\x00\x00\x00", 10), false, "over the field limits"},
      {with(good, good.size() - 3, ';'), true, "has a character outside"},
      {with(good, 50, 3), true, "PCR selection length says 3"},
      {with(answer, 10, 2), false, "answer status 2"},
      {with(answer, 13, 1), false, "the answer ends inside its quote message"},
      {with(answer.substr(0, answer.size() - 4), 9, static_cast<char>(answer[9] - 4)), false,
       "the answer ends before the length of its reason"},
      {with(answer, 14, 0), false, "the quote signature is"},
      {answer.substr(0, 9) + static_cast<char>(answer[9] + 1) + answer.substr(10) + "z", false, "1 bytes after"},
      {EncodeAnswer(AttestationAnswer{}), false, "refuses without a reason"},
      {EncodeAnswer(AttestationAnswer{true, "m", "", "p", "", ""}), false, "lacks the quote message, signature or PCRs"},
  };
  for (const auto& k : cases) {
    std::optional<Error> e = k.challenge ? Refusal(DecodeChallenge(k.frame)) : Refusal(DecodeAnswer(k.frame));
    ASSERT_TRUE(e.has_value()) << "accepted, expected: " << k.reason;
    EXPECT_EQ(e->code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(e->message().find(k.reason), std::string::npos) << e->message();
  }
  // A reader refuses an oversized length before reading (or allocating) the body.
  StringStream big(std::string("\0VTM\x01\x02\x7f\xff\xff\xff", 10));
  auto r = ReadAttestationFrame(big);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("over the field limits"), std::string::npos) << r.error().message();
  EXPECT_FALSE(NewChallenge(1, "sha256:0;rm -rf /").ok());
  EXPECT_FALSE(NewChallenge(1, "0,1,2").ok());
  EXPECT_FALSE(NewChallenge(1, std::string(129, 'a') + ":1").ok());
}

}  // namespace
}  // namespace vtm::tc
