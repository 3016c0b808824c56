// Key wrapping under the master key, and the UUID/name checks on API input.
#include "master_key.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <map>

#include "manager.h"
#include "test_env.h"
#include "vtm/fs.h"
#include "vtm/hex.h"

namespace vtm {
namespace {

MasterKey TestKey(uint8_t fill) {
  SecretBytes k(32);
  for (size_t i = 0; i < k.size(); ++i) k.data()[i] = static_cast<uint8_t>(fill + i);
  return MasterKey::FromBytes(std::move(k));
}

TEST(MasterKeyTest, WrapUnwrapRoundTrip) {
  MasterKey mk = TestKey(1);
  auto secret = RandomSecret(32);
  ASSERT_TRUE(secret.ok());
  auto wrapped = mk.Wrap(*secret, "vtm:vm:x:state-key");
  ASSERT_TRUE(wrapped.ok());
  EXPECT_EQ(wrapped->size(), 4u + 1 + 12 + 32 + 16);
  // The plaintext key does not appear in the wrapped blob.
  EXPECT_EQ(wrapped->find(std::string(reinterpret_cast<const char*>(secret->data()), 32)), std::string::npos);
  auto back = mk.Unwrap(*wrapped, "vtm:vm:x:state-key");
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(back->data()), back->size()),
            std::string(reinterpret_cast<const char*>(secret->data()), secret->size()));
}

TEST(MasterKeyTest, WrongLabelWrongKeyAndTamperingAreRefused) {
  MasterKey mk = TestKey(1);
  auto secret = RandomSecret(32);
  ASSERT_TRUE(secret.ok());
  auto wrapped = mk.Wrap(*secret, WrapLabel("a", "state-key"));
  ASSERT_TRUE(wrapped.ok());
  auto other_vm = mk.Unwrap(*wrapped, WrapLabel("b", "state-key"));
  ASSERT_FALSE(other_vm.ok());
  EXPECT_EQ(other_vm.error().code(), ErrorCode::kDataLoss);
  EXPECT_FALSE(mk.Unwrap(*wrapped, WrapLabel("a", "migration-key")).ok());
  EXPECT_FALSE(TestKey(2).Unwrap(*wrapped, WrapLabel("a", "state-key")).ok());
  for (size_t i = 0; i < wrapped->size(); ++i) {
    std::string t = *wrapped;
    t[i] ^= 0x01;
    EXPECT_FALSE(mk.Unwrap(t, WrapLabel("a", "state-key")).ok()) << "flip at " << i;
  }
  EXPECT_FALSE(mk.Unwrap("", "x").ok());
  EXPECT_FALSE(mk.Unwrap(wrapped->substr(0, 20), WrapLabel("a", "state-key")).ok());
}

// A host TPM in software, for the master key's sealed-file logic at unit speed: an object
// "unseals" while the fake's PCRs hold the values it was sealed to (the real policy is tested
// against swtpm in host_tpm_test and reseal_test). The blobs are structurally valid TPM2B
// encodings, so SealedObject::Parse accepts them; the secret is masked, not protected.
class FakeHostTpm : public HostTpm {
 public:
  FakeHostTpm() {
    for (int i = 0; i < 24; ++i) pcrs_[i] = std::string(32, '\0');
  }
  std::string Describe() override { return "fake"; }
  Result<PcrValues> ReadPcrs(const PcrSelection& selection) override {
    PcrValues v;
    v.selection = selection;
    for (int pcr : selection.pcrs) v.digests[pcr] = pcrs_[pcr];
    return v;
  }
  Status ExtendPcr(const std::string&, int pcr, const std::string& digest) override {
    pcrs_[pcr] = testing::Sha256(pcrs_[pcr] + digest);
    return OkStatus();
  }
  Result<SecretBytes> GetRandom(size_t n) override { return RandomSecret(n); }
  Result<SealedObject> Seal(const SecretBytes& secret, const PcrSelection& selection) override {
    VTM_ASSIGN_OR_RETURN(PcrValues now, ReadPcrs(selection));
    return SealToPcrValues(secret, now);
  }
  Result<SealedObject> SealToPcrValues(const SecretBytes& secret, const PcrValues& values) override {
    ++seals_;
    std::string body = Policy(values);  // 32 bytes
    for (size_t i = 0; i < secret.size(); ++i) body.push_back(static_cast<char>(secret.data()[i] ^ 0x5a));
    SealedObject sealed;
    // TPM2B_PUBLIC of a keyedhash object: type, nameAlg, attributes, empty authPolicy, NULL
    // scheme, empty unique.
    sealed.tpm2b_public = *HexDecode("000e0008000b00000012000000100000");
    sealed.tpm2b_private = std::string{static_cast<char>(body.size() >> 8), static_cast<char>(body.size())} + body;
    sealed.pcrs_at_seal = values;
    return sealed;
  }
  Result<SecretBytes> Unseal(const SealedObject& sealed) override {
    if (fail_with_tpm_error_) return Error(ErrorCode::kTpm, "TPM2_Load failed: the TPM is in failure mode");
    const std::string body = sealed.tpm2b_private.substr(2);
    VTM_ASSIGN_OR_RETURN(PcrValues now, ReadPcrs(sealed.pcrs_at_seal.selection));
    if (body.substr(0, 32) != Policy(now)) return Error(ErrorCode::kPolicyMismatch, "host PCR policy fails (fake)");
    SecretBytes out(body.size() - 32);
    for (size_t i = 0; i < out.size(); ++i) out.data()[i] = static_cast<uint8_t>(body[32 + i] ^ 0x5a);
    return out;
  }
  void SetOwnerAuth(const SecretBytes&) override {}

  int seals_ = 0;
  bool fail_with_tpm_error_ = false;

 private:
  static std::string Policy(const PcrValues& values) {
    std::string all = values.selection.ToString();
    for (const auto& [pcr, digest] : values.digests) all += digest;
    return testing::Sha256(all);
  }
  std::map<int, std::string> pcrs_;
};

class MasterKeyResealTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto sel = PcrSelection::Parse("sha256:0,7");
    ASSERT_TRUE(sel.ok());
    pcrs_ = *sel;
  }
  std::string sealed_path() const { return dir_.path() + "/master-key.sealed"; }
  std::string prepared_path() const { return MasterKey::PreparedPath(sealed_path()); }
  // The wrapped blob of a key only the same master key opens.
  static std::string WrapProbe(const MasterKey& mk) {
    auto secret = RandomSecret(32);
    auto wrapped = mk.Wrap(*secret, "probe");
    EXPECT_TRUE(wrapped.ok());
    return wrapped.ok() ? *wrapped : "";
  }

  testing::TempDir dir_;
  FakeHostTpm tpm_;
  PcrSelection pcrs_;
};

TEST_F(MasterKeyResealTest, PreparedCopyIsAdoptedOnceThePcrsHoldTheExpectedValues) {
  auto mk = MasterKey::LoadOrCreate(tpm_, sealed_path(), pcrs_);
  ASSERT_TRUE(mk.ok()) << mk.error().ToString();
  const std::string probe = WrapProbe(*mk);
  auto current = ReadFile(sealed_path());
  ASSERT_TRUE(current.ok());

  const std::string update = testing::Sha256("firmware v2");
  const std::string expected = testing::Sha256(std::string(32, '\0') + update);
  auto prepared = mk->PrepareReseal(tpm_, sealed_path(), pcrs_, {{7, expected}});
  ASSERT_TRUE(prepared.ok()) << prepared.error().ToString();
  EXPECT_EQ(prepared->path, prepared_path());
  EXPECT_EQ(prepared->current_path, sealed_path());
  EXPECT_EQ(prepared->changed, std::vector<int>{7});
  EXPECT_EQ(prepared->expected.digests.at(7), expected);
  EXPECT_EQ(prepared->expected.digests.at(0), std::string(32, '\0'));
  EXPECT_EQ(*ReadFile(sealed_path()), *current);  // the current copy stays

  // Before the update: the current copy is used, the prepared one waits.
  auto again = MasterKey::LoadOrCreate(tpm_, sealed_path(), pcrs_);
  ASSERT_TRUE(again.ok()) << again.error().ToString();
  EXPECT_TRUE(PathExists(prepared_path()));

  // After it: the prepared copy unseals, replaces the current one, and is the same key.
  ASSERT_TRUE(tpm_.ExtendPcr("sha256", 7, update).ok());
  const std::string prepared_bytes = *ReadFile(prepared_path());
  auto adopted = MasterKey::LoadOrCreate(tpm_, sealed_path(), pcrs_);
  ASSERT_TRUE(adopted.ok()) << adopted.error().ToString();
  EXPECT_FALSE(PathExists(prepared_path()));
  EXPECT_EQ(*ReadFile(sealed_path()), prepared_bytes);
  auto secret = adopted->Unwrap(probe, "probe");
  EXPECT_TRUE(secret.ok()) << "the adopted copy holds another key";
}

TEST_F(MasterKeyResealTest, NeitherCopyUnsealingNamesBothAndKeepsBoth) {
  auto mk = MasterKey::LoadOrCreate(tpm_, sealed_path(), pcrs_);
  ASSERT_TRUE(mk.ok());
  ASSERT_TRUE(mk->PrepareReseal(tpm_, sealed_path(), pcrs_, {{7, std::string(32, 'e')}}).ok());
  ASSERT_TRUE(tpm_.ExtendPcr("sha256", 7, testing::Sha256("something else")).ok());
  auto refused = MasterKey::LoadOrCreate(tpm_, sealed_path(), pcrs_);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::kPolicyMismatch);
  const std::string& m = refused.error().message();
  EXPECT_NE(m.find("neither its copy nor the re-sealed one unseals"), std::string::npos) << m;
  EXPECT_NE(m.find(sealed_path() + ": host PCR policy fails"), std::string::npos) << m;
  EXPECT_NE(m.find("Re-sealed copy " + prepared_path()), std::string::npos) << m;
  EXPECT_NE(m.find("vtmctl host reseal"), std::string::npos) << m;
  EXPECT_TRUE(PathExists(sealed_path()));
  EXPECT_TRUE(PathExists(prepared_path()));

  // A corrupt prepared copy is named too, and nothing is renamed.
  ASSERT_TRUE(WriteFileAtomic(prepared_path(), "garbage", 0600).ok());
  auto corrupt = MasterKey::LoadOrCreate(tpm_, sealed_path(), pcrs_);
  ASSERT_FALSE(corrupt.ok());
  EXPECT_NE(corrupt.error().message().find("reading sealed master key " + prepared_path()), std::string::npos)
      << corrupt.error().message();
  EXPECT_TRUE(PathExists(prepared_path()));
}

TEST_F(MasterKeyResealTest, OnlyAPolicyFailureFallsBackToThePreparedCopy) {
  auto mk = MasterKey::LoadOrCreate(tpm_, sealed_path(), pcrs_);
  ASSERT_TRUE(mk.ok());
  ASSERT_TRUE(mk->PrepareReseal(tpm_, sealed_path(), pcrs_, {{7, std::string(32, 'e')}}).ok());
  tpm_.fail_with_tpm_error_ = true;
  auto failed = MasterKey::LoadOrCreate(tpm_, sealed_path(), pcrs_);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.error().code(), ErrorCode::kTpm);
  EXPECT_TRUE(PathExists(prepared_path()));

  // Without the sealed copy, a prepared one does not let vtmd start over with a new key.
  tpm_.fail_with_tpm_error_ = false;
  ASSERT_EQ(::unlink(sealed_path().c_str()), 0);
  auto missing = MasterKey::LoadOrCreate(tpm_, sealed_path(), pcrs_);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(missing.error().message().find("is missing but " + prepared_path()), std::string::npos);
  EXPECT_FALSE(PathExists(sealed_path()));
}

TEST_F(MasterKeyResealTest, PrepareRefusesBadInputBeforeSealing) {
  auto mk = MasterKey::LoadOrCreate(tpm_, sealed_path(), pcrs_);
  ASSERT_TRUE(mk.ok());
  const int seals = tpm_.seals_;
  auto none = mk->PrepareReseal(tpm_, sealed_path(), pcrs_, {});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code(), ErrorCode::kInvalidArgument);
  auto outside = mk->PrepareReseal(tpm_, sealed_path(), pcrs_, {{8, std::string(32, 'e')}});
  ASSERT_FALSE(outside.ok());
  EXPECT_EQ(outside.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(outside.error().message().find("PCR 8 is not one the master key is sealed to (sha256:0,7"),
            std::string::npos)
      << outside.error().message();
  auto short_value = mk->PrepareReseal(tpm_, sealed_path(), pcrs_, {{7, std::string(20, 'e')}});
  ASSERT_FALSE(short_value.ok());
  EXPECT_NE(short_value.error().message().find(
                "the expected value of PCR sha256:7 has 20 bytes (40 hex digits); a sha256 PCR holds 32 (64 hex digits)"),
            std::string::npos)
      << short_value.error().message();
  EXPECT_EQ(tpm_.seals_, seals);
  EXPECT_FALSE(PathExists(prepared_path()));
}

TEST(ValidationTest, Uuids) {
  auto u = NormalizeUuid("6F1B2E6C-0A1B-4C2D-8E3F-00112233AABB");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(*u, "6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb");
  EXPECT_FALSE(NormalizeUuid("6f1b2e6c0a1b4c2d8e3f00112233aabb").ok());
  EXPECT_FALSE(NormalizeUuid("6f1b2e6c-0a1b-4c2d-8e3f-00112233aabbc").ok());
  EXPECT_FALSE(NormalizeUuid("../../etc/passwd").ok());
  EXPECT_FALSE(NormalizeUuid("").ok());
  auto g = GenerateUuid();
  ASSERT_TRUE(g.ok());
  EXPECT_TRUE(NormalizeUuid(*g).ok());
  EXPECT_EQ((*g)[14], '4');
}

TEST(ValidationTest, Names) {
  EXPECT_TRUE(ValidateVmName("web-01.prod_a").ok());
  EXPECT_FALSE(ValidateVmName("").ok());
  EXPECT_FALSE(ValidateVmName("-x").ok());
  EXPECT_FALSE(ValidateVmName("a/b").ok());
  EXPECT_FALSE(ValidateVmName("..\n").ok());
  EXPECT_FALSE(ValidateVmName(std::string(65, 'a')).ok());
}

}  // namespace
}  // namespace vtm
