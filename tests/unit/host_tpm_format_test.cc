// Unit tests for the host TPM's text and byte formats: PCR selections as operators write them
// and sealed objects as stored on disk. No TPM needed; the parsers see hostile input, so most
// cases here are malformed ones.
#include <gtest/gtest.h>
#include <tss2/tss2_mu.h>

#include <random>
#include <string>

#include "vtm/host_tpm.h"

namespace vtm {
namespace {

std::string Marshal(const TPM2B_PUBLIC& pub) {
  uint8_t buf[sizeof pub];
  size_t off = 0;
  EXPECT_EQ(Tss2_MU_TPM2B_PUBLIC_Marshal(&pub, buf, sizeof buf, &off), TSS2_RC_SUCCESS);
  return std::string(reinterpret_cast<char*>(buf), off);
}

std::string Marshal(const TPM2B_PRIVATE& priv) {
  uint8_t buf[sizeof priv];
  size_t off = 0;
  EXPECT_EQ(Tss2_MU_TPM2B_PRIVATE_Marshal(&priv, buf, sizeof buf, &off), TSS2_RC_SUCCESS);
  return std::string(reinterpret_cast<char*>(buf), off);
}

TPM2B_PUBLIC SealedDataPublic() {
  TPM2B_PUBLIC pub{};
  pub.publicArea.type = TPM2_ALG_KEYEDHASH;
  pub.publicArea.nameAlg = TPM2_ALG_SHA256;
  pub.publicArea.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT;
  pub.publicArea.authPolicy.size = 32;
  pub.publicArea.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_NULL;
  return pub;
}

// A structurally valid sealed object (the TPM would reject its contents, Parse must not).
SealedObject ExampleSealedObject() {
  SealedObject sealed;
  sealed.tpm2b_public = Marshal(SealedDataPublic());
  TPM2B_PRIVATE priv{};
  priv.size = 80;
  for (int i = 0; i < priv.size; ++i) priv.buffer[i] = static_cast<uint8_t>(i);
  sealed.tpm2b_private = Marshal(priv);
  sealed.pcrs_at_seal.selection = *PcrSelection::Parse("sha256:0,7,16");
  sealed.pcrs_at_seal.digests[0] = std::string(32, '\x00');
  sealed.pcrs_at_seal.digests[7] = std::string(32, '\x07');
  sealed.pcrs_at_seal.digests[16] = std::string(32, '\x16');
  return sealed;
}

void ExpectSameSealedObject(const SealedObject& a, const SealedObject& b) {
  EXPECT_EQ(a.tpm2b_public, b.tpm2b_public);
  EXPECT_EQ(a.tpm2b_private, b.tpm2b_private);
  EXPECT_EQ(a.pcrs_at_seal.selection.ToString(), b.pcrs_at_seal.selection.ToString());
  EXPECT_EQ(a.pcrs_at_seal.digests, b.pcrs_at_seal.digests);
}

TEST(PcrSelectionTest, ParsesBankAndPcrs) {
  auto sel = PcrSelection::Parse("sha256:0,1,7");
  ASSERT_TRUE(sel.ok()) << sel.error().ToString();
  EXPECT_EQ(sel->bank, "sha256");
  EXPECT_EQ(sel->pcrs, (std::vector<int>{0, 1, 7}));
  EXPECT_EQ(sel->ToString(), "sha256:0,1,7");

  for (const char* text :
       {"sha1:23", "sha384:0", "sha512:0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23"}) {
    auto parsed = PcrSelection::Parse(text);
    ASSERT_TRUE(parsed.ok()) << text << ": " << parsed.error().ToString();
    EXPECT_EQ(parsed->ToString(), text);
  }
}

TEST(PcrSelectionTest, SortsPcrs) {
  auto sel = PcrSelection::Parse("sha256:16,7,0");
  ASSERT_TRUE(sel.ok()) << sel.error().ToString();
  EXPECT_EQ(sel->pcrs, (std::vector<int>{0, 7, 16}));
  EXPECT_EQ(sel->ToString(), "sha256:0,7,16");
}

TEST(PcrSelectionTest, RejectsMalformedText) {
  struct Case {
    const char* text;
    const char* message_part;
  };
  const Case cases[] = {
      {"", "empty"},
      {"sha256", "names no PCRs"},
      {"sha256:", "names no PCRs"},
      {":0", "unknown bank"},
      {"md5:0", "unknown bank \"md5\""},
      {"SHA256:0", "unknown bank"},
      {"sha256:24", "PCR \"24\" is not an index from 0 to 23"},
      {"sha256:100", "not an index"},
      {"sha256:-1", "not an index"},
      {"sha256:+1", "not an index"},
      {"sha256:1,,2", "PCR \"\""},
      {"sha256:1,", "PCR \"\""},
      {",1", "names no PCRs"},
      {"sha256: 1", "not an index"},
      {"sha256:1a", "not an index"},
      {"sha256:99999999999999999999", "not an index"},
      {"sha256:7,1,7", "PCR 7 is listed twice"},
      {"sha256:0:1", "not an index"},
  };
  for (const auto& c : cases) {
    auto sel = PcrSelection::Parse(c.text);
    ASSERT_FALSE(sel.ok()) << "accepted \"" << c.text << "\"";
    EXPECT_EQ(sel.error().code(), ErrorCode::kInvalidArgument) << c.text;
    EXPECT_NE(sel.error().message().find(c.message_part), std::string::npos)
        << "\"" << c.text << "\": " << sel.error().message();
    EXPECT_NE(sel.error().message().find("invalid PCR selection"), std::string::npos) << sel.error().message();
  }
}

TEST(PcrSelectionTest, QuotesHostileInputSafely) {
  std::string text = "sha256:" + std::string(1000, '\x01');
  auto sel = PcrSelection::Parse(text);
  ASSERT_FALSE(sel.ok());
  EXPECT_LT(sel.error().message().size(), 300u);
  EXPECT_EQ(sel.error().message().find('\x01'), std::string::npos);
}

TEST(SealedObjectTest, SerializeParseRoundTrip) {
  SealedObject sealed = ExampleSealedObject();
  std::string bytes = sealed.Serialize();
  EXPECT_EQ(bytes.substr(0, 8), "VTMSEAL1");
  auto parsed = SealedObject::Parse(bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  ExpectSameSealedObject(sealed, *parsed);
  EXPECT_EQ(parsed->Serialize(), bytes);
}

TEST(SealedObjectTest, RejectsEveryTruncation) {
  std::string bytes = ExampleSealedObject().Serialize();
  for (size_t len = 0; len < bytes.size(); ++len) {
    auto parsed = SealedObject::Parse(bytes.substr(0, len));
    ASSERT_FALSE(parsed.ok()) << "accepted a " << len << "-byte prefix";
    EXPECT_EQ(parsed.error().code(), ErrorCode::kDataLoss) << parsed.error().ToString();
  }
}

TEST(SealedObjectTest, RejectsTrailingBytes) {
  auto parsed = SealedObject::Parse(ExampleSealedObject().Serialize() + "x");
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.error().code(), ErrorCode::kDataLoss);
  EXPECT_NE(parsed.error().message().find("unexpected bytes after the end"), std::string::npos)
      << parsed.error().message();
}

TEST(SealedObjectTest, RejectsWrongMagicAndVersion) {
  std::string bytes = ExampleSealedObject().Serialize();
  std::string v2 = bytes;
  v2[7] = '2';
  auto parsed = SealedObject::Parse(v2);
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.error().code(), ErrorCode::kDataLoss);
  EXPECT_NE(parsed.error().message().find("format version \"2\""), std::string::npos) << parsed.error().message();

  parsed = SealedObject::Parse("-----BEGIN PRIVATE KEY-----\n");
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.error().code(), ErrorCode::kDataLoss);
  EXPECT_NE(parsed.error().message().find("does not start with VTMSEAL1"), std::string::npos);
}

TEST(SealedObjectTest, RejectsOversizedInput) {
  std::string bytes = ExampleSealedObject().Serialize() + std::string(1 << 20, '\0');
  auto parsed = SealedObject::Parse(bytes);
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.error().code(), ErrorCode::kDataLoss);
  EXPECT_NE(parsed.error().message().find("more than a sealed object can hold"), std::string::npos);
}

TEST(SealedObjectTest, RejectsHugeLengthFields) {
  // A length field claiming 4 GiB must fail on the bounds check, not allocate or read past the end.
  SealedObject sealed = ExampleSealedObject();
  std::string bytes = sealed.Serialize();
  size_t public_len_at = bytes.size() - sealed.tpm2b_private.size() - 4 - sealed.tpm2b_public.size() - 4;
  for (int i = 0; i < 4; ++i) bytes[public_len_at + i] = '\xff';
  auto parsed = SealedObject::Parse(bytes);
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.error().code(), ErrorCode::kDataLoss);
  EXPECT_NE(parsed.error().message().find("TPM2B_PUBLIC is 4294967295 bytes"), std::string::npos)
      << parsed.error().message();
}

TEST(SealedObjectTest, RejectsInconsistentPcrRecord) {
  SealedObject wrong_size = ExampleSealedObject();
  wrong_size.pcrs_at_seal.digests[7] = std::string(20, 'x');  // a sha1 digest in a sha256 record
  auto parsed = SealedObject::Parse(wrong_size.Serialize());
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.error().code(), ErrorCode::kDataLoss);
  EXPECT_NE(parsed.error().message().find("PCR 7 value is 20 bytes"), std::string::npos) << parsed.error().message();

  SealedObject missing = ExampleSealedObject();
  missing.pcrs_at_seal.digests.erase(16);
  parsed = SealedObject::Parse(missing.Serialize());
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.error().code(), ErrorCode::kDataLoss);

  SealedObject bad_selection = ExampleSealedObject();
  bad_selection.pcrs_at_seal.selection.pcrs = {0, 7, 99};
  parsed = SealedObject::Parse(bad_selection.Serialize());
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.error().code(), ErrorCode::kDataLoss);
  EXPECT_NE(parsed.error().message().find("not an index from 0 to 23"), std::string::npos) << parsed.error().message();
}

TEST(SealedObjectTest, RejectsBlobsThatDoNotUnmarshal) {
  SealedObject sealed = ExampleSealedObject();
  sealed.tpm2b_public = sealed.tpm2b_public.substr(0, sealed.tpm2b_public.size() - 1);
  auto parsed = SealedObject::Parse(sealed.Serialize());
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.error().code(), ErrorCode::kDataLoss);
  EXPECT_NE(parsed.error().message().find("unmarshalling TPM2B_PUBLIC"), std::string::npos) << parsed.error().message();

  sealed = ExampleSealedObject();
  sealed.tpm2b_private += "zz";
  parsed = SealedObject::Parse(sealed.Serialize());
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.error().code(), ErrorCode::kDataLoss);
  EXPECT_NE(parsed.error().message().find("TPM2B_PRIVATE is followed by 2 stray bytes"), std::string::npos)
      << parsed.error().message();
}

TEST(SealedObjectTest, RejectsAKeyInPlaceOfSealedData) {
  SealedObject sealed = ExampleSealedObject();
  TPM2B_PUBLIC key{};
  key.publicArea.type = TPM2_ALG_ECC;
  key.publicArea.nameAlg = TPM2_ALG_SHA256;
  key.publicArea.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
  key.publicArea.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
  key.publicArea.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
  key.publicArea.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  sealed.tpm2b_public = Marshal(key);
  auto parsed = SealedObject::Parse(sealed.Serialize());
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.error().code(), ErrorCode::kDataLoss);
  EXPECT_NE(parsed.error().message().find("not a sealed data object"), std::string::npos) << parsed.error().message();
}

// Every single-byte corruption either parses into something that serializes back to the same
// bytes, or fails with kDataLoss; never anything else. (ASan builds turn an out-of-bounds read
// here into a failure.)
TEST(SealedObjectTest, SurvivesEverySingleByteCorruption) {
  const std::string bytes = ExampleSealedObject().Serialize();
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (uint8_t flip : {0x01, 0x80, 0xff}) {
      std::string corrupt = bytes;
      corrupt[i] = static_cast<char>(corrupt[i] ^ flip);
      auto parsed = SealedObject::Parse(corrupt);
      if (parsed.ok()) {
        EXPECT_EQ(parsed->Serialize(), corrupt) << "byte " << i;
      } else {
        EXPECT_EQ(parsed.error().code(), ErrorCode::kDataLoss) << "byte " << i << ": " << parsed.error().ToString();
      }
    }
  }
}

TEST(SealedObjectTest, RejectsRandomGarbage) {
  std::mt19937 rng(1234);  // fixed seed: the same inputs every run
  for (int i = 0; i < 2000; ++i) {
    std::string garbage(rng() % 300, '\0');
    for (auto& c : garbage) c = static_cast<char>(rng());
    if (i % 2 == 0) garbage.replace(0, std::min<size_t>(8, garbage.size()), "VTMSEAL1");
    auto parsed = SealedObject::Parse(garbage);
    if (!parsed.ok()) {
      EXPECT_EQ(parsed.error().code(), ErrorCode::kDataLoss);
    }
  }
}

}  // namespace
}  // namespace vtm
