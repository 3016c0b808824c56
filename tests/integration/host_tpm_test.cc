// Integration tests of HostTpm against a real swtpm (SimulatedHostTpm), cross-checked with the
// independent tpm2-tools: sealing, PCR policies, restarts, tampering. Every swtpm is owned by a
// fixture member, so it is stopped even when an assertion fails half-way.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <sys/stat.h>

#include <cstdlib>

#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "test_env.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/host_tpm.h"
#include "vtm/secret.h"
#include "vtm/subprocess.h"

namespace vtm {
namespace {

using vtm::testing::AsString;
using vtm::testing::CommandResult;
using vtm::testing::RunCommand;
using vtm::testing::Sha256;
using vtm::testing::TempDir;

SecretBytes SecretFrom(const std::string& s) {
  return SecretBytes(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

PcrSelection Selection(const std::string& text) {
  auto sel = PcrSelection::Parse(text);
  EXPECT_TRUE(sel.ok()) << sel.error().ToString();
  return sel.ok() ? *sel : PcrSelection{};
}

class HostTpmTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(StartTpm()); }

  void StartTpm() {
    auto sim = SimulatedHostTpm::Start(state_dir());
    ASSERT_TRUE(sim.ok()) << sim.error().ToString();
    sim_ = std::move(sim).value();
    auto tpm = HostTpm::Open(sim_->tcti());
    ASSERT_TRUE(tpm.ok()) << tpm.error().ToString();
    tpm_ = std::move(tpm).value();
  }

  // Like a host reboot: the swtpm process ends, its seeds stay in state_dir, PCRs reset.
  void RestartTpm() {
    tpm_.reset();
    sim_.reset();
    StartTpm();
  }

  std::string state_dir() const { return dir_.path() + "/host-tpm"; }

  // Runs one of tpm2-tools against the simulated host TPM.
  CommandResult Tpm2Tool(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"env", "TPM2TOOLS_TCTI=" + sim_->tcti()};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv);
  }

  void Tpm2ExtendPcr(int pcr, const std::string& bank, const std::string& digest) {
    CommandResult r = Tpm2Tool({"tpm2_pcrextend", std::to_string(pcr) + ":" + bank + "=" + HexEncode(digest)});
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  std::string PcrValue(const std::string& bank, int pcr) {
    auto values = tpm_->ReadPcrs(Selection(bank + ":" + std::to_string(pcr)));
    EXPECT_TRUE(values.ok()) << values.error().ToString();
    return values.ok() ? values->digests[pcr] : std::string();
  }

  // Members are destroyed in reverse order: the TPM connection, then swtpm, then its directory.
  TempDir dir_;
  std::unique_ptr<SimulatedHostTpm> sim_;
  std::unique_ptr<HostTpm> tpm_;
};

TEST_F(HostTpmTest, DescribesTheTpm) {
  std::string description = tpm_->Describe();
  EXPECT_NE(description.find(sim_->tcti()), std::string::npos) << description;
  EXPECT_NE(description.find("manufacturer IBM"), std::string::npos) << description;  // swtpm/libtpms
  EXPECT_NE(description.find("firmware "), std::string::npos) << description;
}

TEST_F(HostTpmTest, KeepsStateInAPrivateDirectory) {
  struct stat st {};
  ASSERT_EQ(stat(state_dir().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  EXPECT_TRUE(PathExists(state_dir() + "/swtpm.log"));
  EXPECT_GT(sim_->pid(), 0);
  EXPECT_EQ(sim_->tcti().rfind("swtpm:host=127.0.0.1,port=", 0), 0u) << sim_->tcti();
}

TEST_F(HostTpmTest, SealsAndUnseals) {
  auto secret = RandomSecret(32);
  ASSERT_TRUE(secret.ok());
  PcrSelection selection = Selection("sha256:0,7,16");
  auto sealed = tpm_->Seal(*secret, selection);
  ASSERT_TRUE(sealed.ok()) << sealed.error().ToString();

  auto now = tpm_->ReadPcrs(selection);
  ASSERT_TRUE(now.ok()) << now.error().ToString();
  EXPECT_EQ(sealed->pcrs_at_seal.selection.ToString(), "sha256:0,7,16");
  EXPECT_EQ(sealed->pcrs_at_seal.digests, now->digests);
  // Only TPM-encrypted material is stored: the secret appears nowhere in the serialized object.
  std::string stored = sealed->Serialize();
  EXPECT_EQ(stored.find(AsString(*secret)), std::string::npos);

  auto unsealed = tpm_->Unseal(*sealed);
  ASSERT_TRUE(unsealed.ok()) << unsealed.error().ToString();
  EXPECT_EQ(AsString(*unsealed), AsString(*secret));

  // And through the file format, as vtmd does at start.
  auto parsed = SealedObject::Parse(stored);
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  unsealed = tpm_->Unseal(*parsed);
  ASSERT_TRUE(unsealed.ok()) << unsealed.error().ToString();
  EXPECT_EQ(AsString(*unsealed), AsString(*secret));
}

TEST_F(HostTpmTest, SealsSecretsOfOneTo128Bytes) {
  for (size_t size : {size_t{1}, size_t{128}}) {
    SecretBytes secret = SecretFrom(std::string(size, 'k'));
    auto sealed = tpm_->Seal(secret, Selection("sha256:16"));
    ASSERT_TRUE(sealed.ok()) << sealed.error().ToString();
    auto unsealed = tpm_->Unseal(*sealed);
    ASSERT_TRUE(unsealed.ok()) << unsealed.error().ToString();
    EXPECT_EQ(AsString(*unsealed), std::string(size, 'k'));
  }
  for (size_t size : {size_t{0}, size_t{129}}) {
    auto sealed = tpm_->Seal(SecretFrom(std::string(size, 'k')), Selection("sha256:16"));
    ASSERT_FALSE(sealed.ok());
    EXPECT_EQ(sealed.error().code(), ErrorCode::kInvalidArgument) << sealed.error().ToString();
  }
  auto no_pcrs = tpm_->Seal(SecretFrom("x"), PcrSelection{});
  ASSERT_FALSE(no_pcrs.ok());
  EXPECT_EQ(no_pcrs.error().code(), ErrorCode::kInvalidArgument) << no_pcrs.error().ToString();
}

TEST_F(HostTpmTest, ExtendingASealedPcrBreaksUnsealAndNamesThePcr) {
  auto sealed = tpm_->Seal(SecretFrom("master key"), Selection("sha256:7,16"));
  ASSERT_TRUE(sealed.ok()) << sealed.error().ToString();
  std::string before = PcrValue("sha256", 16);

  ASSERT_NO_FATAL_FAILURE(Tpm2ExtendPcr(16, "sha256", Sha256("a new boot component")));
  std::string after = PcrValue("sha256", 16);
  ASSERT_NE(before, after);

  auto unsealed = tpm_->Unseal(*sealed);
  ASSERT_FALSE(unsealed.ok());
  EXPECT_EQ(unsealed.error().code(), ErrorCode::kPolicyMismatch) << unsealed.error().ToString();
  const std::string& message = unsealed.error().message();
  EXPECT_NE(message.find("host PCR sha256:16 changed since the master key was sealed (sealed value " +
                         HexEncode(before) + ", now " + HexEncode(after) + ")"),
            std::string::npos)
      << message;
  EXPECT_EQ(message.find("sha256:7 "), std::string::npos) << "PCR 7 did not change: " << message;
}

TEST_F(HostTpmTest, ExtendingOtherPcrsKeepsUnsealWorking) {
  auto sealed = tpm_->Seal(SecretFrom("master key"), Selection("sha256:16"));
  ASSERT_TRUE(sealed.ok()) << sealed.error().ToString();

  ASSERT_NO_FATAL_FAILURE(Tpm2ExtendPcr(23, "sha256", Sha256("unrelated")));
  ASSERT_TRUE(tpm_->ExtendPcr("sha256", 15, Sha256("also unrelated")).ok());
  // The same index in another bank is another PCR as far as the policy is concerned.
  ASSERT_NO_FATAL_FAILURE(Tpm2ExtendPcr(16, "sha1", std::string(20, '\x01')));

  auto unsealed = tpm_->Unseal(*sealed);
  ASSERT_TRUE(unsealed.ok()) << unsealed.error().ToString();
  EXPECT_EQ(AsString(*unsealed), "master key");
}

// Re-sealing ahead of a planned change: a secret sealed to values the PCRs do not hold yet
// unseals only once they do (here after a reboot and one extend of PCR 16).
TEST_F(HostTpmTest, SealsToExpectedPcrValuesThatUnsealOnlyOnceReached) {
  const std::string update = Sha256("firmware v2");
  auto now = tpm_->ReadPcrs(Selection("sha256:7,16"));
  ASSERT_TRUE(now.ok()) << now.error().ToString();
  PcrValues expected = *now;
  expected.digests[16] = Sha256(std::string(32, '\0') + update);  // after a reboot and one extend
  auto sealed = tpm_->SealToPcrValues(SecretFrom("master key"), expected);
  ASSERT_TRUE(sealed.ok()) << sealed.error().ToString();
  EXPECT_EQ(sealed->pcrs_at_seal.digests, expected.digests);
  auto early = tpm_->Unseal(*sealed);
  ASSERT_FALSE(early.ok());
  EXPECT_EQ(early.error().code(), ErrorCode::kPolicyMismatch);
  EXPECT_NE(early.error().message().find("host PCR sha256:16 "), std::string::npos) << early.error().message();

  ASSERT_NO_FATAL_FAILURE(RestartTpm());
  ASSERT_TRUE(tpm_->ExtendPcr("sha256", 16, update).ok());
  ASSERT_EQ(PcrValue("sha256", 16), expected.digests[16]);
  auto unsealed = tpm_->Unseal(*sealed);
  ASSERT_TRUE(unsealed.ok()) << unsealed.error().ToString();
  EXPECT_EQ(AsString(*unsealed), "master key");

  // Values that do not fit the selection are refused before the TPM is asked.
  PcrValues short_value = expected;
  short_value.digests[16] = std::string(20, 'x');
  auto refused = tpm_->SealToPcrValues(SecretFrom("k"), short_value);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(refused.error().message().find("a value for PCR sha256:16 has 32 bytes (64 hex digits), not 20"),
            std::string::npos)
      << refused.error().message();
  PcrValues missing = expected;
  missing.digests.erase(7);
  EXPECT_EQ(tpm_->SealToPcrValues(SecretFrom("k"), missing).error().code(), ErrorCode::kInvalidArgument);
  PcrValues extra = expected;
  extra.digests[8] = std::string(32, '\0');
  EXPECT_EQ(tpm_->SealToPcrValues(SecretFrom("k"), extra).error().code(), ErrorCode::kInvalidArgument);
}

TEST_F(HostTpmTest, RestartKeepsSeedsAndResetsPcrs) {
  auto sealed = tpm_->Seal(SecretFrom("survives reboots"), Selection("sha256:16"));
  ASSERT_TRUE(sealed.ok()) << sealed.error().ToString();
  std::string stored = sealed->Serialize();
  ASSERT_TRUE(tpm_->ExtendPcr("sha256", 16, Sha256("this boot only")).ok());
  auto refused = tpm_->Unseal(*sealed);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::kPolicyMismatch);

  ASSERT_NO_FATAL_FAILURE(RestartTpm());
  EXPECT_EQ(PcrValue("sha256", 16), std::string(32, '\0'));
  auto parsed = SealedObject::Parse(stored);
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  auto unsealed = tpm_->Unseal(*parsed);
  ASSERT_TRUE(unsealed.ok()) << unsealed.error().ToString();
  EXPECT_EQ(AsString(*unsealed), "survives reboots");
}

TEST_F(HostTpmTest, ReadPcrsAgreesWithTpm2Pcrread) {
  ASSERT_NO_FATAL_FAILURE(Tpm2ExtendPcr(16, "sha256", Sha256("one")));
  std::string old23 = PcrValue("sha256", 23);
  std::string digest = Sha256("two");
  ASSERT_TRUE(tpm_->ExtendPcr("sha256", 23, digest).ok());
  EXPECT_EQ(PcrValue("sha256", 23), Sha256(old23 + digest));  // extend = H(old || digest)

  // All 24 PCRs: more than one TPM2_PCR_Read returns.
  std::string all = "sha256:0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23";
  auto ours = tpm_->ReadPcrs(Selection(all));
  ASSERT_TRUE(ours.ok()) << ours.error().ToString();
  ASSERT_EQ(ours->digests.size(), 24u);

  CommandResult theirs = Tpm2Tool({"tpm2_pcrread", all});
  ASSERT_EQ(theirs.exit_code, 0) << theirs.output;
  // Lines look like "    16: 0x90F4...".
  std::istringstream lines(theirs.output);
  std::string line;
  int compared = 0;
  while (std::getline(lines, line)) {
    size_t colon = line.find(": 0x");
    if (colon == std::string::npos) continue;
    int pcr = std::stoi(line.substr(0, colon));
    std::string hex = line.substr(colon + 4);
    for (auto& c : hex) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    EXPECT_EQ(HexEncode(ours->digests[pcr]), hex) << "PCR " << pcr;
    ++compared;
  }
  EXPECT_EQ(compared, 24) << theirs.output;
}

// The sealed object is a standard TPM object under the standard ECC storage key: tpm2-tools
// can unseal it with its own PCR policy session. Catches a template or policy that only our
// code understands.
TEST_F(HostTpmTest, Tpm2ToolsUnsealWhatWeSeal) {
  auto sealed = tpm_->Seal(SecretFrom("interop-secret"), Selection("sha256:0,16"));
  ASSERT_TRUE(sealed.ok()) << sealed.error().ToString();
  const std::string dir = dir_.path();
  ASSERT_TRUE(WriteFileAtomic(dir + "/seal.pub", sealed->tpm2b_public, 0600).ok());
  ASSERT_TRUE(WriteFileAtomic(dir + "/seal.priv", sealed->tpm2b_private, 0600).ok());

  CommandResult r = Tpm2Tool({"tpm2_createprimary", "-Q", "-C", "o", "-g", "sha256", "-G", "ecc256:aes128cfb", "-a",
                              "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt", "-c",
                              dir + "/primary.ctx"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // Without a resource manager every tool leaves its objects loaded, and swtpm has only three
  // transient slots: flush them between the steps (the saved .ctx files stay usable).
  ASSERT_EQ(Tpm2Tool({"tpm2_flushcontext", "-t"}).exit_code, 0);
  r = Tpm2Tool({"tpm2_load", "-Q", "-C", dir + "/primary.ctx", "-u", dir + "/seal.pub", "-r", dir + "/seal.priv",
                "-c", dir + "/seal.ctx"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_EQ(Tpm2Tool({"tpm2_flushcontext", "-t"}).exit_code, 0);
  r = Tpm2Tool({"tpm2_unseal", "-c", dir + "/seal.ctx", "-p", "pcr:sha256:0,16"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "interop-secret");
}

TEST_F(HostTpmTest, TamperedSealedObjectFailsWithAClearError) {
  auto sealed = tpm_->Seal(SecretFrom("master key"), Selection("sha256:16"));
  ASSERT_TRUE(sealed.ok()) << sealed.error().ToString();

  SealedObject bad_private = *sealed;
  bad_private.tpm2b_private[bad_private.tpm2b_private.size() / 2] ^= 0x01;
  auto unsealed = tpm_->Unseal(bad_private);
  ASSERT_FALSE(unsealed.ok());
  EXPECT_EQ(unsealed.error().code(), ErrorCode::kDataLoss) << unsealed.error().ToString();
  EXPECT_NE(unsealed.error().message().find("TPM2_Load(sealed object) failed"), std::string::npos)
      << unsealed.error().message();
  EXPECT_NE(unsealed.error().message().find("corrupt"), std::string::npos) << unsealed.error().message();

  // The public part is bound to the private part through its name: changing its policy is
  // caught too, rather than granting a weaker policy.
  SealedObject bad_public = *sealed;
  bad_public.tpm2b_public[bad_public.tpm2b_public.size() - 3] ^= 0x01;
  unsealed = tpm_->Unseal(bad_public);
  ASSERT_FALSE(unsealed.ok());
  EXPECT_NE(unsealed.error().code(), ErrorCode::kInternal) << unsealed.error().ToString();

  // A PCR record edited to claim other values does not unlock anything, and the message
  // says the record is inconsistent rather than blaming an unchanged PCR.
  SealedObject bad_record = *sealed;
  ASSERT_TRUE(tpm_->ExtendPcr("sha256", 16, Sha256("change")).ok());
  bad_record.pcrs_at_seal.digests[16] = PcrValue("sha256", 16);
  unsealed = tpm_->Unseal(bad_record);
  ASSERT_FALSE(unsealed.ok());
  EXPECT_EQ(unsealed.error().code(), ErrorCode::kPolicyMismatch);
  EXPECT_NE(unsealed.error().message().find("does not match its policy"), std::string::npos)
      << unsealed.error().message();

  // Nothing above leaked a TPM object slot: sealing still works (swtpm has only a few).
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(tpm_->Seal(SecretFrom("x"), Selection("sha256:0")).ok());
}

// Parameter encryption on salted sessions: the secret crosses the TCTI (a bus or socket
// anyone on the host may sniff) only encrypted, both into TPM2_Create and out of TPM2_Unseal.
// tpm2-tss's pcap TCTI records every command and response byte.
TEST_F(HostTpmTest, SecretNeverCrossesTheTctiInClear) {
  tpm_.reset();  // swtpm serves one client at a time
  const std::string capture = dir_.path() + "/tcti.pcap";
  ASSERT_EQ(setenv("TCTI_PCAP_FILE", capture.c_str(), 1), 0);
  auto traced = HostTpm::Open("pcap:" + sim_->tcti());
  unsetenv("TCTI_PCAP_FILE");
  ASSERT_TRUE(traced.ok()) << traced.error().ToString();

  const std::string secret = "0123456789abcdef-distinctive-secret";
  auto sealed = (*traced)->Seal(SecretFrom(secret), Selection("sha256:16"));
  ASSERT_TRUE(sealed.ok()) << sealed.error().ToString();
  auto unsealed = (*traced)->Unseal(*sealed);
  ASSERT_TRUE(unsealed.ok()) << unsealed.error().ToString();
  EXPECT_EQ(AsString(*unsealed), secret);
  // Control: a response sent without encryption does show up in the capture.
  auto random = (*traced)->GetRandom(32);
  ASSERT_TRUE(random.ok());
  traced->reset();  // closes the capture file

  auto pcap = ReadFile(capture);
  ASSERT_TRUE(pcap.ok()) << pcap.error().ToString();
  EXPECT_NE(pcap->find(AsString(*random)), std::string::npos) << "the capture misses clear responses";
  EXPECT_EQ(pcap->find(secret), std::string::npos) << "the secret crossed the TCTI in clear";
  EXPECT_EQ(pcap->find(secret.substr(0, 16)), std::string::npos);
}

TEST_F(HostTpmTest, GetsRandomBytes) {
  auto a = tpm_->GetRandom(100);
  auto b = tpm_->GetRandom(100);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->size(), 100u);
  EXPECT_NE(AsString(*a), AsString(*b));
  auto none = tpm_->GetRandom(0);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST_F(HostTpmTest, ExtendPcrRejectsBadArguments) {
  EXPECT_EQ(tpm_->ExtendPcr("sha256", 16, "short").error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(tpm_->ExtendPcr("sha256", 24, Sha256("x")).error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(tpm_->ExtendPcr("md5", 16, Sha256("x")).error().code(), ErrorCode::kInvalidArgument);
  // PCR 17 is for locality 4 (DRTM) only: the TPM itself refuses, as a kTpm error.
  Status drtm = tpm_->ExtendPcr("sha256", 17, Sha256("x"));
  ASSERT_FALSE(drtm.ok());
  EXPECT_EQ(drtm.error().code(), ErrorCode::kTpm);
  EXPECT_NE(drtm.error().message().find("TPM2_PCR_Extend(sha256:17) failed: "), std::string::npos)
      << drtm.error().message();
}

TEST(HostTpmOpenTest, UnreachableTpmIsUnavailable) {
  auto tpm = HostTpm::Open("swtpm:host=127.0.0.1,port=1");
  ASSERT_FALSE(tpm.ok());
  EXPECT_EQ(tpm.error().code(), ErrorCode::kUnavailable) << tpm.error().ToString();
  EXPECT_NE(tpm.error().message().find("swtpm:host=127.0.0.1,port=1"), std::string::npos);
  EXPECT_FALSE(HostTpm::Open("").ok());
}

TEST(SimulatedHostTpmTest, OneStateDirectoryServesOneSwtpm) {
  TempDir dir;
  auto first = SimulatedHostTpm::Start(dir.path() + "/tpm");
  ASSERT_TRUE(first.ok()) << first.error().ToString();
  auto second = SimulatedHostTpm::Start(dir.path() + "/tpm");
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.error().message().find("swtpm.log"), std::string::npos) << second.error().message();

  // A second state directory gets its own swtpm on its own ports.
  auto other = SimulatedHostTpm::Start(dir.path() + "/other");
  ASSERT_TRUE(other.ok()) << other.error().ToString();
  EXPECT_NE((*first)->tcti(), (*other)->tcti());
  int pid = (*other)->pid();
  other->reset();
  EXPECT_FALSE(ProcessAlive(pid));
}

}  // namespace
}  // namespace vtm
