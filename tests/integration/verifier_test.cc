// The verifier against real TPM output: an swtpm stands in for the host TPM (EK with a
// certificate from a test manufacturer CA, AK, a host CA key certified by the AK), a second
// swtpm for a VM's vTPM (EK and AK with certificates from that host CA). Firmware, IMA and
// vtmd's measurement log are extended into the host PCRs and the guest firmware log into the
// vTPM's, so the logs really replay to the quoted values. The whole chain is accepted (and
// tpm2_checkquote and openssl verify agree); each negative case changes one link and must fail
// exactly its check.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "attest_world.h"
#include "event_log_builder.h"
#include "test_env.h"
#include "tpm2_tools.h"
#include "vtm/certificates.h"
#include "vtm/event_log.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/host_tpm.h"
#include "vtm/merkle.h"
#include "vtm/quote.h"
#include "vtm/tpm.h"
#include "vtm/tpm_structures.h"
#include "vtm/verifier.h"
#include "vtm/x509.h"

namespace vtm::attest {
namespace {

using testing::AttestWorld;
using testing::kMeasurePcr;
using testing::kVm;
using testing::Must;
using vtm::testing::RunCommand;
using vtm::testing::Sha256;
using vtm::testing::TempDir;

// Holds the directory so that it outlives the world's swtpm processes (bases are destroyed
// after the members and bases that follow them).
struct TempDirHolder {
  TempDir tmp_;
};

class VerifierTest : public ::testing::Test, protected TempDirHolder, public AttestWorld {
 protected:
  void SetUp() override { Build(tmp_.path()); }

  Verdict Deep(const DeepEvidence& d, std::time_t at = 0) {
    auto v = Must(Verifier::Create(policy_));
    return v->AppraiseDeep(d, nonce_, at == 0 ? now_ : at);
  }

  // The verdict failed exactly `check`, with a reason containing `fragment`.
  void ExpectOnly(const Verdict& v, const std::string& check, const std::string& fragment) {
    EXPECT_FALSE(v.trusted);
    EXPECT_EQ(v.Failed(), std::vector<std::string>{check}) << v.ToText();
    const Check* c = v.Find(check);
    ASSERT_NE(c, nullptr);
    EXPECT_NE(c->reason.find(fragment), std::string::npos) << c->reason;
  }

};

TEST_F(VerifierTest, WholeChainIsAcceptedAndOutsideToolsAgree) {
  const DeepEvidence d = MakeDeep();
  const Verdict v = Deep(d);
  EXPECT_TRUE(v.trusted) << v.ToText();
  for (const char* name : {"nonce_match", "nonce_fresh", "host_tpm_kind", "host_ek_certificate", "host_ak_binding",
                           "host_ca_certify", "host_quote", "merkle_proof", "host_pcrs", "uefi_event_log", "ima_log",
                           "measurement_log", "measured_instance", "vtpm_ek_certificate", "vtpm_ak_certificate",
                           "guest_quote", "guest_pcrs", "guest_event_log"}) {
    EXPECT_NE(v.Find(name), nullptr) << name;
  }
  // tpm2_checkquote accepts both quotes (the host's over the Merkle root).
  const std::string root = d.host().host_quote().attest().empty() ? "" : Must(MerkleRootFromProof(
      DeepLeaf(nonce_, kVm, vtpm_.ek.name, vtpm_ak_pub_.name, d.guest_quote().attest()), d.host().proof()));
  auto host_tool = vtm::testing::Tpm2Checkquote(d.host().host_quote(), host_ak_pub_.tpm2b_public, root, dir_);
  EXPECT_EQ(host_tool.exit_code, 0) << host_tool.output;
  auto guest_tool = vtm::testing::Tpm2Checkquote(d.guest_quote(), vtpm_ak_pub_.tpm2b_public, nonce_, dir_);
  EXPECT_EQ(guest_tool.exit_code, 0) << guest_tool.output;
  // openssl verify accepts the certificate chains in the envelope.
  const std::string d_ = dir_ + "/";
  ASSERT_TRUE(WriteFileAtomic(d_ + "manufacturer.pem", ca::DerToPem(manufacturer_cert_), 0600).ok());
  ASSERT_TRUE(WriteFileAtomic(d_ + "host-ek.pem", ca::DerToPem(host_ek_cert_), 0600).ok());
  ASSERT_TRUE(WriteFileAtomic(d_ + "host-ca.pem", ca::DerToPem(host_ca_cert_), 0600).ok());
  ASSERT_TRUE(WriteFileAtomic(d_ + "vtpm.pem", ca::DerToPem(vtpm_ek_cert_) + ca::DerToPem(vtpm_ak_cert_), 0600).ok());
  auto ek_chain = RunCommand({"openssl", "verify", "-CAfile", d_ + "manufacturer.pem", d_ + "host-ek.pem"});
  EXPECT_EQ(ek_chain.exit_code, 0) << ek_chain.output;
  ASSERT_TRUE(WriteFileAtomic(d_ + "vtpm-ak.pem", ca::DerToPem(vtpm_ak_cert_), 0600).ok());
  auto ak_chain = RunCommand({"openssl", "verify", "-CAfile", d_ + "host-ca.pem", d_ + "vtpm-ak.pem"});
  EXPECT_EQ(ak_chain.exit_code, 0) << ak_chain.output;
  // The JSON form lists every check.
  EXPECT_NE(v.ToJson().find("\"trusted\":true"), std::string::npos);
}

TEST_F(VerifierTest, HostEvidenceAloneIsAccepted) {
  auto v = Must(Verifier::Create(policy_))->AppraiseHost(MakeHost(), nonce_, now_);
  EXPECT_TRUE(v.trusted) << v.ToText();
}

TEST_F(VerifierTest, ReplayedNonceIsRefused) {
  const DeepEvidence d = MakeDeep();
  auto verifier = Must(Verifier::Create(policy_));
  NonceTracker tracker;
  EXPECT_TRUE(verifier->AppraiseDeep(d, nonce_, now_, &tracker).trusted);
  ExpectOnly(verifier->AppraiseDeep(d, nonce_, now_, &tracker), "nonce_unused", "already used");
  // Old evidence offered for a new nonce.
  const std::string fresh = Must(IssueNonce(now_));
  ExpectOnly(verifier->AppraiseDeep(d, fresh, now_), "nonce_match", "replayed or for another request");
}

TEST_F(VerifierTest, EditedEventLogEntryIsRefused) {
  DeepEvidence d = MakeDeep();
  auto events = vtm::testing::TypicalFirmwareEvents();
  events[1].data = "a different firmware volume";
  d.mutable_host()->set_uefi_event_log(vtm::testing::BuildCryptoAgileLog(events));
  ExpectOnly(Deep(d), "uefi_event_log", "replays PCR");
}

TEST_F(VerifierTest, PcrValueThatDoesNotReplayIsRefused) {
  host_.Extend(10, "an unlogged measurement");
  ExpectOnly(Deep(MakeDeep()), "ima_log", "replays PCR");
}

TEST_F(VerifierTest, UnknownSwtpmDigestIsRefused) {
  policy_.clear_allowed_swtpm_sha256();
  policy_.add_allowed_swtpm_sha256(HexEncode(Sha256("another swtpm")));
  ExpectOnly(Deep(MakeDeep()), "measured_instance", "not an allowed swtpm");
}

TEST_F(VerifierTest, ForeignExtendOfTheMeasurementPcrIsRefused) {
  ASSERT_TRUE(host_.tpm->ExtendPcr("sha256", kMeasurePcr, Sha256("foreign")).ok());
  ExpectOnly(Deep(MakeDeep()), "measurement_log", "foreign extend");
}

TEST_F(VerifierTest, LogVtmdMarkedInconsistentIsRefused) {
  mlog_.set_inconsistency("PCR 15 was extended outside vtmd");
  ExpectOnly(Deep(MakeDeep()), "measurement_log", "vtmd reports the log inconsistent");
}

TEST_F(VerifierTest, AkCertificateFromAnotherHostsCaIsRefused) {
  auto other = Must(ca::SoftwareSigner::Generate());
  ca::CaCertRequest req;
  req.common_name = "vtm host CA other-host";
  const std::string other_ca = Must(ca::CreateSelfSignedCaCertificate(*other, req));
  vtpm_ak_cert_ = IssueVtpmAkCert(*other, other_ca);
  ExpectOnly(Deep(MakeDeep()), "vtpm_ak_certificate", "not issued by this host's CA");
}

// The same EK key certified by the same host CA, but through issue_ek_cert (swtpm_setup's
// certificate tool, for a key vtm did not create): refused as a vTPM EK certificate, alone.
TEST_F(VerifierTest, EkCertificateIssuedForAnOutsideKeyIsRefused) {
  vtpm_ek_cert_ = IssueVtpmEkCert(*host_ca_signer_, host_ca_cert_, /*unprovisioned=*/true);
  ExpectOnly(Deep(MakeDeep()), "vtpm_ek_certificate", "swtpm_setup certificate tool");
}

TEST_F(VerifierTest, CaCertificateWithoutValidCertifyIsRefused) {
  ca::CaCertRequest req;
  req.common_name = "vtm host CA test-host";  // same key and name, no TPM2_Certify evidence
  host_ca_cert_ = Must(ca::CreateSelfSignedCaCertificate(*host_ca_signer_, req));
  ExpectOnly(Deep(MakeDeep()), "host_ca_certify", "no certify-evidence extension");
}

TEST_F(VerifierTest, GuestQuoteFromAnotherVtpmIsRefused) {
  ExpectOnly(Deep(MakeDeep(other_ak_)), "guest_quote", "does not verify with this AK");
}

TEST_F(VerifierTest, MerkleProofForAnotherRequestIsRefused) {
  DeepEvidence d = MakeDeep();
  MerkleProof p = d.host().proof();
  // The proof of the request at index 0 (another requester's).
  MerkleTree tree = Must(MerkleTree::Build(
      {HostLeaf("someone"), DeepLeaf(nonce_, kVm, vtpm_.ek.name, vtpm_ak_pub_.name, d.guest_quote().attest()),
       HostLeaf("someone else")}));
  *d.mutable_host()->mutable_proof() = Must(tree.Proof(0));
  ExpectOnly(Deep(d), "merkle_proof", "a proof for another request");
}

TEST_F(VerifierTest, EvidenceOlderThanTheFreshnessWindowIsRefused) {
  policy_.set_freshness_seconds(60);
  ExpectOnly(Deep(MakeDeep(), now_ + 61), "nonce_fresh", "freshness window is 60 s");
}

TEST_F(VerifierTest, SimulatedHostTpmIsRefusedByDefault) {
  policy_.set_accept_simulated_host_tpm(false);
  ExpectOnly(Deep(MakeDeep()), "host_tpm_kind", "not a hardware root of trust");
}

TEST_F(VerifierTest, HostAkWithoutActivationIsRefused) {
  policy_.clear_activated_host_ak_names();
  ExpectOnly(Deep(MakeDeep()), "host_ak_binding", "credential activation");
}

TEST_F(VerifierTest, LearnedPolicyAcceptsTheHostItWasLearnedFrom) {
  const DeepEvidence d = MakeDeep();
  AttestationPolicy learned = LearnPolicy(d.host(), &d);
  learned.add_host_ek_ca_pem(ca::DerToPem(manufacturer_cert_));  // the operator names the manufacturer
  auto round_trip = ParsePolicyJson(PolicyToJson(learned));
  ASSERT_TRUE(round_trip.ok()) << round_trip.error().ToString();
  policy_ = *round_trip;
  EXPECT_TRUE(Deep(d).trusted) << Deep(d).ToText();
  EXPECT_FALSE(ParsePolicyJson("{\"version\": 1, \"unknownField\": 3}").ok());
}

}  // namespace
}  // namespace vtm::attest

namespace vtm::attest {
namespace {

TEST_F(VerifierTest, VtmVerifyCliExitCodesAndJson) {
  const std::string bin = vtm::testing::BuildPath("attest/vtm-verify");
  const std::string d = tmp_.path() + "/";
  const DeepEvidence deep = MakeDeep();
  ASSERT_TRUE(WriteFileAtomic(d + "deep.pb", deep.SerializeAsString(), 0600).ok());
  ASSERT_TRUE(WriteFileAtomic(d + "policy.json", PolicyToJson(policy_), 0600).ok());
  const std::string nonce = HexEncode(nonce_);
  auto ok = RunCommand({bin, "deep", "--evidence", d + "deep.pb", "--policy", d + "policy.json", "--nonce", nonce,
                        "--json", "--replay-file", d + "seen"});
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_EQ(ok.output.rfind("{\"trusted\":true,\"checks\":[{\"name\":\"evidence_format\"", 0), 0u) << ok.output;
  // The same nonce again: refused as a replay.
  auto replay = RunCommand({bin, "deep", "--evidence", d + "deep.pb", "--policy", d + "policy.json", "--nonce", nonce,
                            "--replay-file", d + "seen"});
  EXPECT_EQ(replay.exit_code, 1) << replay.output;
  EXPECT_NE(replay.output.find("FAIL  nonce_unused"), std::string::npos) << replay.output;
  // Another nonce: refused (1); garbage policy or evidence: bad input (2); no command: usage (64).
  auto fresh = RunCommand({bin, "nonce"});
  ASSERT_EQ(fresh.exit_code, 0);
  EXPECT_EQ(fresh.output.size(), 65u);
  auto other = RunCommand({bin, "deep", "--evidence", d + "deep.pb", "--policy", d + "policy.json", "--nonce",
                           fresh.output.substr(0, 64)});
  EXPECT_EQ(other.exit_code, 1) << other.output;
  ASSERT_TRUE(WriteFileAtomic(d + "bad.json", "{\"version\": 1, \"no_such_field\": 1}", 0600).ok());
  EXPECT_EQ(RunCommand({bin, "deep", "--evidence", d + "deep.pb", "--policy", d + "bad.json", "--nonce", nonce})
                .exit_code,
            2);
  ASSERT_TRUE(WriteFileAtomic(d + "bad.pb", "\xff\xff\xff", 0600).ok());
  EXPECT_EQ(RunCommand({bin, "deep", "--evidence", d + "bad.pb", "--policy", d + "policy.json", "--nonce", nonce})
                .exit_code,
            2);
  EXPECT_EQ(RunCommand({bin}).exit_code, 64);
  // learn prints a policy that parses.
  auto learned = RunCommand({bin, "learn", "--deep", "--evidence", d + "deep.pb"});
  ASSERT_EQ(learned.exit_code, 0) << learned.output;
  EXPECT_TRUE(ParsePolicyJson(learned.output).ok()) << learned.output;
}

}  // namespace
}  // namespace vtm::attest
