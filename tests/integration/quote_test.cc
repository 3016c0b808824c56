// Quote checks of vtm_attest against REAL quotes: an swtpm stands in for the host TPM, the
// Tpm class makes the AK and the quotes, and tpm2_checkquote (tpm2-tools, which we did not
// write) must agree with every verdict: it accepts what VerifyQuote accepts and refuses the
// altered PCR value, the wrong nonce and the other AK that VerifyQuote refuses.
#include <gtest/gtest.h>
#include <tss2/tss2_mu.h>

#include <memory>
#include <string>
#include <vector>

#include "simulated_host_tpm_test.h"
#include "test_env.h"
#include "tpm2_tools.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/host_tpm.h"
#include "vtm/quote.h"
#include "vtm/tpm.h"
#include "vtm/tpm_structures.h"

namespace vtm::attest {
namespace {

using vtm::testing::CommandResult;
using vtm::testing::RunCommand;
using vtm::testing::Sha256;
using vtm::testing::TempDir;

class QuoteTest : public vtm::testing::SimulatedHostTpmTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(SimulatedHostTpmTest::SetUp());
    // Non-trivial PCR values: extend PCRs 1 and 10 as firmware and IMA would.
    ASSERT_TRUE(tpm_->ExtendPcr("sha256", 1, Sha256("firmware")).ok());
    ASSERT_TRUE(tpm_->ExtendPcr("sha256", 10, Sha256("ima")).ok());
    ASSERT_TRUE(tpm_->ExtendPcr("sha1", 10, std::string(20, '\x11')).ok());
    auto srk = tpm_->CreateSrk();
    ASSERT_TRUE(srk.ok()) << srk.error().ToString();
    srk_ = std::move(srk).value();
    ak_ = LoadKey(KeyRole::kAttestation, &ak_public_);
  }

  TpmKey LoadKey(KeyRole role, std::string* tpm2b_public) {
    auto blob = tpm_->CreateKey(srk_, role, SecretBytes());
    EXPECT_TRUE(blob.ok()) << blob.error().ToString();
    if (!blob.ok()) return TpmKey();
    auto key = tpm_->LoadKey(srk_, *blob);
    EXPECT_TRUE(key.ok()) << key.error().ToString();
    *tpm2b_public = blob->tpm2b_public;
    return key.ok() ? std::move(key).value() : TpmKey();
  }

  // A Quote message over the given banks ("sha256:0,1,10" ...), PCR values read from the TPM
  // right after the quote (nothing extends in between).
  Quote MakeQuote(const TpmKey& ak, const std::vector<std::string>& selections, const std::string& nonce) {
    Quote q;
    std::vector<PcrBank> banks;
    PcrSelection first;
    for (const std::string& text : selections) {
      auto sel = PcrSelection::Parse(text);
      EXPECT_TRUE(sel.ok());
      if (!sel.ok()) return q;
      auto values = tpm_->ReadPcrs(*sel);
      EXPECT_TRUE(values.ok()) << values.error().ToString();
      if (!values.ok()) return q;
      PcrBank bank;
      bank.hash_alg = sel->bank == "sha1" ? TPM2_ALG_SHA1 : TPM2_ALG_SHA256;
      for (const auto& [pcr, digest] : values->digests) bank.values[static_cast<uint32_t>(pcr)] = digest;
      banks.push_back(std::move(bank));
      if (first.pcrs.empty()) first = *sel;
    }
    // Tpm::Quote selects one bank; multi-bank quotes are made with tpm2_quote below.
    EXPECT_EQ(selections.size(), 1u);
    auto attestation = tpm_->Quote(ak, first, nonce);
    EXPECT_TRUE(attestation.ok()) << attestation.error().ToString();
    if (!attestation.ok()) return q;
    q.set_attest(attestation->attest);
    q.set_signature(attestation->signature);
    auto marshalled = MarshalPcrValues(banks);
    EXPECT_TRUE(marshalled.ok()) << marshalled.error().ToString();
    if (marshalled.ok()) q.set_pcr_values(*marshalled);
    return q;
  }

  // tpm2_checkquote's verdict on q.
  CommandResult CheckQuote(const Quote& q, const std::string& ak_tpm2b_public, const std::string& nonce) {
    return vtm::testing::Tpm2Checkquote(q, ak_tpm2b_public, nonce, dir_.path());
  }

  TpmKey srk_;
  TpmKey ak_;
  std::string ak_public_;
};

TEST_F(QuoteTest, RealQuoteIsAcceptedByVerifyQuoteAndTpm2Checkquote) {
  const std::string nonce = Sha256("verifier nonce");
  const Quote q = MakeQuote(ak_, {"sha256:0,1,2,3,4,5,6,7,10"}, nonce);
  auto parsed = VerifyQuote(q, ak_public_, nonce);
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  ASSERT_NE(parsed->pcrs.Find(TPM2_ALG_SHA256, 10), nullptr);
  EXPECT_EQ(parsed->pcrs.Find(TPM2_ALG_SHA256, 8), nullptr);
  EXPECT_EQ(*parsed->pcrs.Find(TPM2_ALG_SHA256, 10), Sha256(std::string(32, '\0') + Sha256("ima")));
  CommandResult tool = CheckQuote(q, ak_public_, nonce);
  EXPECT_EQ(tool.exit_code, 0) << tool.output;
}

TEST_F(QuoteTest, AlteredPcrValueIsRefusedByBoth) {
  const std::string nonce = Sha256("n");
  Quote q = MakeQuote(ak_, {"sha256:0,1,10"}, nonce);
  auto pcrs = ParsePcrValues(q.pcr_values());
  ASSERT_TRUE(pcrs.ok());
  pcrs->banks[0].values[1] = Sha256("other firmware");
  q.set_pcr_values(*MarshalPcrValues(pcrs->banks));
  auto parsed = ParseQuote(q);
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  EXPECT_TRUE(CheckQuoteSignature(q, *parsed, ak_public_).ok());
  EXPECT_TRUE(CheckQuoteExtraData(*parsed, nonce).ok());
  Status digest = CheckQuotePcrDigest(*parsed);
  ASSERT_FALSE(digest.ok());
  EXPECT_NE(digest.error().message().find("pcrDigest"), std::string::npos) << digest.error().message();
  EXPECT_NE(CheckQuote(q, ak_public_, nonce).exit_code, 0);
}

TEST_F(QuoteTest, WrongNonceIsRefusedByBoth) {
  const Quote q = MakeQuote(ak_, {"sha256:0,10"}, Sha256("old nonce"));
  auto parsed = VerifyQuote(q, ak_public_, Sha256("fresh nonce"));
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.error().code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(parsed.error().message().find("extraData"), std::string::npos);
  EXPECT_NE(CheckQuote(q, ak_public_, Sha256("fresh nonce")).exit_code, 0);
}

TEST_F(QuoteTest, QuoteByAnotherAkIsRefusedByBoth) {
  std::string other_public;
  TpmKey other = LoadKey(KeyRole::kAttestation, &other_public);
  const std::string nonce = Sha256("n");
  const Quote q = MakeQuote(other, {"sha256:0,10"}, nonce);
  ASSERT_TRUE(VerifyQuote(q, other_public, nonce).ok());
  auto parsed = VerifyQuote(q, ak_public_, nonce);
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.error().code(), ErrorCode::kDataLoss);
  EXPECT_NE(CheckQuote(q, ak_public_, nonce).exit_code, 0);
}

// Verifying builds the AK as an OpenSSL key once and keeps it by its exact bytes: a public
// area that differs in one bit (a point off the curve) is checked, and refused, every time,
// and the cached AK still accepts only its own signatures.
TEST_F(QuoteTest, CachedAkKeyNeverStandsInForOtherKeyBytes) {
  const std::string nonce = Sha256("n");
  const Quote q = MakeQuote(ak_, {"sha256:0,10"}, nonce);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(VerifyQuote(q, ak_public_, nonce).ok());
  auto pub = ParseTpm2bPublic(ak_public_, "AK");
  ASSERT_TRUE(pub.ok());
  pub->publicArea.unique.ecc.y.buffer[pub->publicArea.unique.ecc.y.size - 1] ^= 1;
  uint8_t buf[sizeof(TPM2B_PUBLIC)];
  size_t size = 0;
  ASSERT_EQ(Tss2_MU_TPM2B_PUBLIC_Marshal(&*pub, buf, sizeof buf, &size), TSS2_RC_SUCCESS);
  const std::string off_curve(reinterpret_cast<const char*>(buf), size);
  for (int i = 0; i < 2; ++i) {
    auto parsed = VerifyQuote(q, off_curve, nonce);
    ASSERT_FALSE(parsed.ok());
    EXPECT_NE(parsed.error().message().find("not a valid key"), std::string::npos) << parsed.error().message();
  }
  std::string other_public;
  TpmKey other = LoadKey(KeyRole::kAttestation, &other_public);
  const Quote by_other = MakeQuote(other, {"sha256:0,10"}, nonce);
  EXPECT_FALSE(VerifyQuote(by_other, ak_public_, nonce).ok());
  EXPECT_TRUE(VerifyQuote(by_other, other_public, nonce).ok());
  EXPECT_TRUE(VerifyQuote(q, ak_public_, nonce).ok());
}

TEST_F(QuoteTest, QuoteByAnUnrestrictedKeyIsRefused) {
  std::string signing_public;
  TpmKey signing = LoadKey(KeyRole::kSigning, &signing_public);
  const std::string nonce = Sha256("n");
  const Quote q = MakeQuote(signing, {"sha256:0"}, nonce);
  auto parsed = VerifyQuote(q, signing_public, nonce);
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.error().message().find("not a restricted signing key"), std::string::npos);
}

TEST_F(QuoteTest, PcrValuesForAnotherSelectionAreRefused) {
  const std::string nonce = Sha256("n");
  Quote q = MakeQuote(ak_, {"sha256:0,1"}, nonce);
  PcrBank bank{TPM2_ALG_SHA256, {{0, std::string(32, '\0')}}};
  q.set_pcr_values(*MarshalPcrValues({bank}));
  auto parsed = ParseQuote(q);
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.error().message().find("not for the PCRs the quote selected"), std::string::npos);
}

TEST_F(QuoteTest, MultiBankQuoteFromTpm2QuoteIsAccepted) {
  // A quote tpm2-tools made (its own AK, sha1 and sha256 banks, 9 PCRs each: more than one
  // TPML_DIGEST) is accepted, and our tpm2-tools PCR file is byte-identical to tpm2_quote's.
  const std::string d = dir_.path() + "/";
  // Free our transient slots for the tools (swtpm has three).
  ak_ = TpmKey();
  srk_ = TpmKey();
  ASSERT_EQ(Tpm2Tool({"tpm2_createek", "-c", d + "ek.ctx", "-G", "ecc"}).exit_code, 0);
  CommandResult ak = Tpm2Tool({"tpm2_createak", "-C", d + "ek.ctx", "-c", d + "ak.ctx", "-G", "ecc", "-g", "sha256",
                           "-s", "ecdsa", "-u", d + "ak.pub", "-n", d + "ak.name"});
  ASSERT_EQ(ak.exit_code, 0) << ak.output;
  ASSERT_EQ(Tpm2Tool({"tpm2_flushcontext", "-t"}).exit_code, 0);
  const std::string nonce = Sha256("multi-bank");
  CommandResult quote = Tpm2Tool({"tpm2_quote", "-c", d + "ak.ctx", "-l", "sha1:0,1,2,3,4,5,6,7,10+sha256:0,1,2,3,4,5,6,7,10",
                              "-q", HexEncode(nonce), "-m", d + "q.attest", "-s", d + "q.sig", "-o", d + "q.pcrs",
                              "-g", "sha256"});
  ASSERT_EQ(quote.exit_code, 0) << quote.output;
  Quote q;
  q.set_attest(*ReadFile(d + "q.attest"));
  q.set_signature(*ReadFile(d + "q.sig"));
  // Rebuild our pcr_values from the values tpm2_pcrread reports, then check that our
  // tpm2-tools file is byte-identical to the one tpm2_quote wrote.
  std::vector<PcrBank> banks;
  for (const auto& [name, alg] : {std::pair<std::string, TPM2_ALG_ID>{"sha1", TPM2_ALG_SHA1},
                                  std::pair<std::string, TPM2_ALG_ID>{"sha256", TPM2_ALG_SHA256}}) {
    auto sel = PcrSelection::Parse(name + ":0,1,2,3,4,5,6,7,10");
    ASSERT_TRUE(sel.ok());
    auto values = tpm_->ReadPcrs(*sel);
    ASSERT_TRUE(values.ok()) << values.error().ToString();
    PcrBank bank{alg, {}};
    for (const auto& [pcr, digest] : values->digests) bank.values[static_cast<uint32_t>(pcr)] = digest;
    banks.push_back(bank);
  }
  auto marshalled = MarshalPcrValues(banks);
  ASSERT_TRUE(marshalled.ok());
  q.set_pcr_values(*marshalled);
  auto ak_public = ReadFile(d + "ak.pub");
  ASSERT_TRUE(ak_public.ok());
  auto parsed = VerifyQuote(q, *ak_public, nonce);
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  EXPECT_EQ(parsed->pcrs.banks.size(), 2u);
  EXPECT_EQ(Tpm2ToolsPcrFile(parsed->pcrs), *ReadFile(d + "q.pcrs"));
  // And back: tpm2_quote's own file becomes the same pcr_values (what vtmctl attest deep reads).
  auto from_tool = PcrValuesFromTpm2ToolsFile(*ReadFile(d + "q.pcrs"));
  ASSERT_TRUE(from_tool.ok()) << from_tool.error().ToString();
  EXPECT_EQ(*from_tool, *marshalled);
  // A file cut short, one with a byte more, and one whose selection claims a PCR more than
  // its digests hold are refused, each with the same clear message prefix.
  const std::string file = *ReadFile(d + "q.pcrs");
  std::string more_selected = file;
  more_selected[4 + 3 + 1] = static_cast<char>(more_selected[4 + 3 + 1] | 0x08);  // sha1 PCR 11
  for (const std::string& bad : {file.substr(0, file.size() - 1), file + "x", more_selected, std::string()}) {
    auto r = PcrValuesFromTpm2ToolsFile(bad);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(r.error().message().find("tpm2-tools PCR file"), std::string::npos) << r.error().message();
  }
  // Found by tpm_public_fuzzer: two selections of the same bank (sha256, no PCR) were turned
  // into pcr_values that ParsePcrValues then refused; now the file is refused.
  std::string same_bank_twice(4 + 16 * 8 + 4, '\0');
  same_bank_twice[0] = 2;
  same_bank_twice[4] = same_bank_twice[12] = 0x0b;
  auto twice = PcrValuesFromTpm2ToolsFile(same_bank_twice);
  ASSERT_FALSE(twice.ok());
  EXPECT_EQ(twice.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(twice.error().message().find("is given twice"), std::string::npos) << twice.error().message();
}

}  // namespace
}  // namespace vtm::attest
