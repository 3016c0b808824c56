// The RA client over a real swtpm host TPM (host AK, measurement log, host CA, registry as vtmd
// has them): concurrent requests within the window share one host quote and each gets a proof
// that leads to the quote's qualifying data (checked with vtm_attest and with tpm2_checkquote,
// a tool we did not write); a lone request is its own batch of one; a window of 0 quotes per
// request; measurement-log entries of other VMs are redacted to digests that still replay.
#include <gtest/gtest.h>

#include <fstream>
#include <future>
#include <thread>

#include "attestation_rig.h"
#include "measurement_log.h"
#include "ra_client.h"
#include "vtm/hex.h"
#include "vtm/merkle.h"
#include "vtm/quote.h"
#include "vtm/tpm_structures.h"
#include "vtm/x509.h"

namespace vtm::testing {
namespace {

constexpr const char* kVmA = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
constexpr const char* kVmB = "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e";

class RaClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(rig_.Init().ok());
    // Two VMs launched: their entries in the log, their vTPM identity in the registry.
    ASSERT_TRUE(rig_.AddVm(kVmA, "vm-a", true).ok());
    ASSERT_TRUE(rig_.AddVm(kVmB, "vm-b", true).ok());
  }
  void TearDown() override { ra_.reset(); }
  void StartRa(std::chrono::microseconds window) {
    RaClientConfig c;
    c.quote_pcrs = PcrSelection::Parse("sha256:0,1,2,3,4,5,6,7,13").value();
    c.batch_window = window;
    ra_ = std::make_unique<RaClient>(*rig_.host, c);
  }
  // The root the proof leads to from leaf must be the quote's extraData, and the quote must be
  // by the host AK with PCR values that match its pcrDigest.
  void ExpectProvenBy(const attest::HostEvidence& ev, const std::string& leaf) {
    auto root = attest::MerkleRootFromProof(leaf, ev.proof());
    ASSERT_TRUE(root.ok()) << root.error().ToString();
    auto verified = attest::VerifyQuote(ev.host_quote(), ev.host().ak_public(), *root);
    EXPECT_TRUE(verified.ok()) << verified.error().ToString();
  }

  AttestationRig rig_;
  std::unique_ptr<RaClient> ra_;
};

TEST_F(RaClientTest, ConcurrentRequestsShareOneQuoteAndEachProofVerifies) {
  StartRa(std::chrono::milliseconds(500));
  constexpr int kN = 24;
  std::vector<std::future<Result<attest::HostEvidence>>> answers;
  for (int i = 0; i < kN; ++i) {
    answers.push_back(std::async(std::launch::async, [this, i] {
      return ra_->HostEvidence("nonce-number-" + std::to_string(i));
    }));
  }
  std::string quote_attest;
  std::set<uint64_t> indexes;
  for (int i = 0; i < kN; ++i) {
    auto ev = answers[i].get();
    ASSERT_TRUE(ev.ok()) << ev.error().ToString();
    EXPECT_EQ(ev->nonce(), "nonce-number-" + std::to_string(i));
    EXPECT_EQ(ev->proof().tree_size(), static_cast<uint64_t>(kN));
    indexes.insert(ev->proof().leaf_index());
    if (quote_attest.empty()) quote_attest = ev->host_quote().attest();
    EXPECT_EQ(ev->host_quote().attest(), quote_attest);  // one quote for all
    ExpectProvenBy(*ev, attest::HostLeaf(ev->nonce()));
    // A proof does not prove another request's leaf.
    auto other = attest::MerkleRootFromProof(attest::HostLeaf("nonce-number-x"), ev->proof());
    auto parsed = attest::ParseQuote(ev->host_quote());
    ASSERT_TRUE(parsed.ok());
    EXPECT_TRUE(!other.ok() || *other != parsed->extra_data);
  }
  EXPECT_EQ(indexes.size(), static_cast<size_t>(kN));
  EXPECT_EQ(ra_->quotes_made(), 1u);
}

TEST_F(RaClientTest, TpmCheckquoteAcceptsTheHostQuoteWithTheMerkleRoot) {
  StartRa(std::chrono::milliseconds(1));
  auto ev = ra_->HostEvidence("verifier-nonce-1");
  ASSERT_TRUE(ev.ok()) << ev.error().ToString();
  auto parsed = attest::ParseQuote(ev->host_quote());
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  const std::string d = rig_.dir.path() + "/";
  std::ofstream(d + "ak.pem") << ca::DerToPem(rig_.ak->ak_public().spki_der, "PUBLIC KEY");
  std::ofstream(d + "msg", std::ios::binary) << ev->host_quote().attest();
  std::ofstream(d + "sig", std::ios::binary) << ev->host_quote().signature();
  std::ofstream(d + "pcrs", std::ios::binary) << attest::Tpm2ToolsPcrFile(parsed->pcrs);
  auto root = attest::MerkleRootFromProof(attest::HostLeaf("verifier-nonce-1"), ev->proof());
  ASSERT_TRUE(root.ok());
  auto r = RunCommand({"tpm2_checkquote", "-u", d + "ak.pem", "-m", d + "msg", "-s", d + "sig", "-f", d + "pcrs", "-g",
                       "sha256", "-q", HexEncode(*root)});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  // ...and refuses it for another qualifying data.
  r = RunCommand({"tpm2_checkquote", "-u", d + "ak.pem", "-m", d + "msg", "-s", d + "sig", "-f", d + "pcrs", "-g",
                  "sha256", "-q", HexEncode(attest::HostLeaf("verifier-nonce-1"))});
  EXPECT_NE(r.exit_code, 0) << r.output;
}

TEST_F(RaClientTest, LoneRequestIsABatchOfOneAndWindowZeroQuotesEachRequest) {
  StartRa(std::chrono::microseconds(0));
  for (int i = 0; i < 3; ++i) {
    auto ev = ra_->HostEvidence("lonely-nonce-" + std::to_string(i));
    ASSERT_TRUE(ev.ok()) << ev.error().ToString();
    EXPECT_EQ(ev->proof().tree_size(), 1u);
    EXPECT_EQ(ev->proof().path_size(), 0);
    ExpectProvenBy(*ev, attest::HostLeaf(ev->nonce()));
  }
  EXPECT_EQ(ra_->quotes_made(), 3u);
}

TEST_F(RaClientTest, OtherVmsEntriesAreRedactedToDigestsThatStillReplay) {
  StartRa(std::chrono::milliseconds(1));
  auto host = ra_->HostEvidence("redaction-nonce");
  ASSERT_TRUE(host.ok()) << host.error().ToString();
  const auto& log = host->measurement_log();
  ASSERT_EQ(log.events_size(), 2);
  for (const auto& e : log.events()) EXPECT_TRUE(e.event_data().empty());  // host evidence: no VM's details
  // The quoted PCR 13 is what the redacted log replays to.
  auto parsed = attest::ParseQuote(host->host_quote());
  ASSERT_TRUE(parsed.ok());
  const std::string* pcr13 = parsed->pcrs.Find(TPM2_ALG_SHA256, 13);
  ASSERT_NE(pcr13, nullptr);
  EXPECT_EQ(*pcr13, ReplayMeasurements(log));

  attest::Quote guest;
  guest.set_attest("guest-attest-bytes");
  guest.set_signature("guest-signature");
  auto deep = ra_->DeepEvidence(kVmA, "deep-nonce-1", guest, "");
  ASSERT_TRUE(deep.ok()) << deep.error().ToString();
  const auto& dlog = deep->host().measurement_log();
  ASSERT_EQ(dlog.events_size(), 2);
  attest::InstanceLaunch mine;
  ASSERT_TRUE(mine.ParseFromString(dlog.events(0).event_data()));
  EXPECT_EQ(mine.vm_uuid(), kVmA);
  EXPECT_TRUE(dlog.events(1).event_data().empty());  // VM B: digest only
  EXPECT_EQ(ReplayMeasurements(dlog), *pcr13);
  auto ek_name = TpmNameOfPublic(deep->vtpm().ek_public());
  auto ak_name = TpmNameOfPublic(deep->vtpm().ak_public());
  ASSERT_TRUE(ek_name.ok() && ak_name.ok());
  ExpectProvenBy(deep->host(), attest::DeepLeaf("deep-nonce-1", kVmA, *ek_name, *ak_name, guest.attest()));
  // The same proof does not link the guest quote to another VM.
  auto other = attest::MerkleRootFromProof(attest::DeepLeaf("deep-nonce-1", kVmB, *ek_name, *ak_name, guest.attest()),
                                           deep->host().proof());
  auto quoted = attest::ParseQuote(deep->host().host_quote());
  ASSERT_TRUE(quoted.ok());
  EXPECT_TRUE(!other.ok() || *other != quoted->extra_data);
}

TEST_F(RaClientTest, BadNoncesAndUnknownVmsAreRefused) {
  StartRa(std::chrono::milliseconds(1));
  EXPECT_EQ(ra_->HostEvidence("short").error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(ra_->HostEvidence(std::string(65, 'n')).error().code(), ErrorCode::kInvalidArgument);
  attest::Quote guest;
  guest.set_attest("a");
  guest.set_signature("s");
  EXPECT_EQ(ra_->DeepEvidence("no-such-vm", "deep-nonce-1", guest, "").error().code(), ErrorCode::kNotFound);
  EXPECT_EQ(ra_->quotes_made(), 0u);
}

}  // namespace
}  // namespace vtm::testing
