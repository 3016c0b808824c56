// The sealed migration package without a TPM: a software ECC key in the import key's shape
// stands in for the destination's TPM key (attest::ActivateCredentialInSoftware does what
// TPM2_ActivateCredential does), so every refusal can be driven byte by byte. The same flow
// against real simulated host TPMs: tests/integration/migration_import_key_test.cc.
#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <tss2/tss2_mu.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "software_tpm_key.h"
#include "vtm/credential.h"
#include "vtm/fs.h"
#include "vtm/migration_package.h"
#include "vtm/ossl_ptr.h"
#include "vtm/tpm_structures.h"

namespace vtm::migration {
namespace {

using PkeyPtr = OsslPtr<EVP_PKEY, EVP_PKEY_free>;

// An ECC P-256 key in software with the TPM2B_PUBLIC of a KeyRole::kImport key.
struct SoftwareImportKey {
  PkeyPtr key;
  std::string tpm2b_public;
  std::string name;

  static SoftwareImportKey Make(TPMA_OBJECT attributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                                         TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                                                         TPMA_OBJECT_NODA | TPMA_OBJECT_RESTRICTED |
                                                         TPMA_OBJECT_DECRYPT) {
    SoftwareImportKey k;
    k.key.reset(EVP_EC_gen("P-256"));
    EXPECT_TRUE(k.key);
    k.tpm2b_public = vtm::testing::MarshalEccP256Public(k.key.get(), attributes);
    k.name = TpmNameOfPublic(k.tpm2b_public).value();
    return k;
  }

  // What the destination's TPM does with the credential.
  Result<SecretBytes> Activate(const TpmCredential& c) const {
    return attest::ActivateCredentialInSoftware(key.get(), tpm2b_public, c.id_object, c.encrypted_secret, name);
  }
};

SecretBytes Key(char fill) {
  SecretBytes k(32);
  for (size_t i = 0; i < k.size(); ++i) k.data()[i] = static_cast<uint8_t>(fill + i);
  return k;
}

KeyTransfer Payload() {
  KeyTransfer p;
  p.vm_uuid = "6b1c1d52-3c8e-4a59-9d7e-0f5a3b2c1d00";
  p.name = "web-1";
  p.service = "shop";
  p.generation = 7;
  p.state_key = Key('S');
  p.migration_key = Key('M');
  p.ek_name = std::string("\x00\x0b", 2) + std::string(32, 'e');
  p.ek_rsa_name = std::string("\x00\x0b", 2) + std::string(32, 'r');
  p.ak_name = std::string("\x00\x0b", 2) + std::string(32, 'a');
  p.ek_public = "ek-public-area";
  p.ak_public = "ak-public-area";
  p.state_files = {{"tpm2-00.permall", std::string(300, '\x5a')}, {"tpm2-00.volatilestate", "volatile"}};
  return p;
}

class MigrationPackageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dest_ = SoftwareImportKey::Make();
    header_ = PackageHeader{"mig-1", Payload().vm_uuid, 7, dest_.name, "host-a", "host-b"};
  }
  SealedPackage Seal() {
    auto sealed = SealForDestination(Payload(), header_, dest_.tpm2b_public);
    EXPECT_TRUE(sealed.ok()) << sealed.error().ToString();
    return sealed.ok() ? std::move(sealed).value() : SealedPackage{};
  }
  Result<KeyTransfer> Open(const SealedPackage& p, const PackageHeader& expected) {
    return OpenSealedPackage(p, expected, [&](const TpmCredential& c) {
      ++activations_;
      return dest_.Activate(c);
    });
  }

  SoftwareImportKey dest_;
  PackageHeader header_;
  int activations_ = 0;
};

void ExpectSamePayload(const KeyTransfer& got, const KeyTransfer& want) {
  EXPECT_EQ(got.vm_uuid, want.vm_uuid);
  EXPECT_EQ(got.name, want.name);
  EXPECT_EQ(got.service, want.service);
  EXPECT_EQ(got.generation, want.generation);
  ASSERT_EQ(got.state_key.size(), 32u);
  ASSERT_EQ(got.migration_key.size(), 32u);
  EXPECT_EQ(0, std::memcmp(got.state_key.data(), want.state_key.data(), 32));
  EXPECT_EQ(0, std::memcmp(got.migration_key.data(), want.migration_key.data(), 32));
  EXPECT_EQ(got.ek_name, want.ek_name);
  EXPECT_EQ(got.ek_rsa_name, want.ek_rsa_name);
  EXPECT_EQ(got.ak_name, want.ak_name);
  EXPECT_EQ(got.ek_public, want.ek_public);
  EXPECT_EQ(got.ak_public, want.ak_public);
  EXPECT_EQ(got.state_files, want.state_files);
}

TEST_F(MigrationPackageTest, RoundTripThroughBytes) {
  SealedPackage sealed = Seal();
  const std::string bytes = sealed.Serialize();
  // The keys never appear in clear in what travels.
  const KeyTransfer want = Payload();
  EXPECT_EQ(bytes.find(std::string(reinterpret_cast<const char*>(want.state_key.data()), 32)), std::string::npos);
  EXPECT_EQ(bytes.find(std::string(reinterpret_cast<const char*>(want.migration_key.data()), 32)), std::string::npos);
  EXPECT_EQ(bytes.find("tpm2-00.permall"), std::string::npos);
  auto parsed = SealedPackage::Parse(bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  EXPECT_EQ(parsed->header, header_);
  EXPECT_EQ(parsed->Serialize(), bytes);
  auto opened = Open(*parsed, header_);
  ASSERT_TRUE(opened.ok()) << opened.error().ToString();
  ExpectSamePayload(*opened, want);
  // Live migration: no state files.
  KeyTransfer live = Payload();
  live.state_files.clear();
  auto sealed_live = SealForDestination(live, header_, dest_.tpm2b_public);
  ASSERT_TRUE(sealed_live.ok());
  auto opened_live = Open(*sealed_live, header_);
  ASSERT_TRUE(opened_live.ok()) << opened_live.error().ToString();
  EXPECT_TRUE(opened_live->state_files.empty());
  // Each sealing draws a fresh transport key and IV.
  SealedPackage again = Seal();
  EXPECT_NE(again.iv, sealed.iv);
  EXPECT_NE(again.credential.encrypted_secret, sealed.credential.encrypted_secret);
}

TEST_F(MigrationPackageTest, AHeaderOtherThanTheOnePreparedIsRefusedBeforeActivation) {
  SealedPackage sealed = Seal();
  struct Case {
    void (*edit)(PackageHeader&);
    const char* says;
  };
  const Case cases[] = {
      {[](PackageHeader& h) { h.migration_id = "mig-2"; }, "it is for migration mig-1, this destination prepared migration mig-2"},
      {[](PackageHeader& h) { h.vm_uuid = "another-vm"; }, "it carries VM"},
      {[](PackageHeader& h) { h.generation = 8; }, "it is of generation 7"},
      {[](PackageHeader& h) { h.import_key_name[5] ^= 1; }, "it is sealed to import key"},
      {[](PackageHeader& h) { h.destination_host = "host-c"; }, "it is addressed to host host-b, this is host host-c"},
      {[](PackageHeader& h) { h.source_host = "host-x"; }, "it comes from host host-a"},
  };
  for (const Case& c : cases) {
    PackageHeader expected = header_;
    c.edit(expected);
    auto opened = Open(sealed, expected);
    ASSERT_FALSE(opened.ok()) << c.says;
    EXPECT_EQ(opened.error().code(), ErrorCode::kPermissionDenied) << opened.error().ToString();
    EXPECT_NE(opened.error().message().find(c.says), std::string::npos) << opened.error().message();
  }
  EXPECT_EQ(activations_, 0);
  // A header edited in the package itself to match another migration: the AAD no longer
  // matches what was sealed.
  SealedPackage forged = sealed;
  forged.header.migration_id = "mig-2";
  PackageHeader expected = header_;
  expected.migration_id = "mig-2";
  auto opened = Open(forged, expected);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.error().code(), ErrorCode::kDataLoss) << opened.error().ToString();
  EXPECT_NE(opened.error().message().find("fails authentication"), std::string::npos);
}

TEST_F(MigrationPackageTest, AnotherDestinationsKeyCannotOpenIt) {
  SealedPackage sealed = Seal();
  SoftwareImportKey other = SoftwareImportKey::Make();
  auto opened = OpenSealedPackage(sealed, header_, [&](const TpmCredential& c) { return other.Activate(c); });
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.error().code(), ErrorCode::kDataLoss) << opened.error().ToString();
  // An activation that fails is reported as such, with the migration named.
  auto failed = OpenSealedPackage(sealed, header_, [](const TpmCredential&) -> Result<SecretBytes> {
    return Error(ErrorCode::kTpm, "TPM2_ActivateCredential failed");
  });
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.error().code(), ErrorCode::kTpm);
  EXPECT_NE(failed.error().message().find("mig-1"), std::string::npos);
}

TEST_F(MigrationPackageTest, EveryFlippedBitIsRefused) {
  const std::string bytes = Seal().Serialize();
  int parse_refusals = 0, open_refusals = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string flipped = bytes;
      flipped[i] = static_cast<char>(flipped[i] ^ (1 << bit));
      auto parsed = SealedPackage::Parse(flipped);
      if (!parsed.ok()) {
        EXPECT_EQ(parsed.error().code(), ErrorCode::kInvalidArgument) << parsed.error().ToString();
        ++parse_refusals;
        continue;
      }
      auto opened = Open(*parsed, header_);
      ASSERT_FALSE(opened.ok()) << "bit " << bit << " of byte " << i << " flipped and the package still opened";
      EXPECT_TRUE(opened.error().code() == ErrorCode::kPermissionDenied ||
                  opened.error().code() == ErrorCode::kDataLoss || opened.error().code() == ErrorCode::kInvalidArgument)
          << opened.error().ToString();
      ++open_refusals;
    }
  }
  // Both layers did work: the format check and the cryptography.
  EXPECT_GT(parse_refusals, 0);
  EXPECT_GT(open_refusals, 0);
}

TEST_F(MigrationPackageTest, TruncatedAndGarbageInputIsRefused) {
  const std::string bytes = Seal().Serialize();
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto parsed = SealedPackage::Parse(bytes.substr(0, n));
    if (parsed.ok()) {
      EXPECT_FALSE(Open(*parsed, header_).ok()) << "a package cut to " << n << " bytes opened";
    } else {
      EXPECT_EQ(parsed.error().code(), ErrorCode::kInvalidArgument);
    }
  }
  for (const std::string& junk : {std::string(), std::string("not a package"), std::string(1000, '\xff'),
                                  std::string("\x08\x02", 2)}) {
    auto parsed = SealedPackage::Parse(junk);
    ASSERT_FALSE(parsed.ok());
    EXPECT_EQ(parsed.error().code(), ErrorCode::kInvalidArgument) << parsed.error().ToString();
  }
  // Version 2 and trailing unknown fields are refused with what is wrong.
  auto v2 = SealedPackage::Parse(std::string("\x08\x02", 2) + bytes.substr(2));
  ASSERT_FALSE(v2.ok());
  EXPECT_NE(v2.error().message().find("version 2"), std::string::npos) << v2.error().message();
  auto extra = SealedPackage::Parse(bytes + std::string("\x50\x01", 2));  // field 10, varint 1
  ASSERT_FALSE(extra.ok());
  EXPECT_NE(extra.error().message().find("canonical"), std::string::npos) << extra.error().message();
}

TEST_F(MigrationPackageTest, SealRefusesAKeyOrHeaderThatDoNotFit) {
  // The header names another key than the one given.
  PackageHeader wrong_name = header_;
  wrong_name.import_key_name = SoftwareImportKey::Make().name;
  auto s = SealForDestination(Payload(), wrong_name, dest_.tpm2b_public);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kInvalidArgument);
  // The payload is another generation than the header's.
  KeyTransfer stale = Payload();
  stale.generation = 6;
  s = SealForDestination(stale, header_, dest_.tpm2b_public);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kInvalidArgument);
  // A key that could leave its TPM (no fixedTPM) or is no restricted decryption key.
  for (TPMA_OBJECT attrs : {TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                                TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT,
                            TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                                TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_DECRYPT}) {
    SoftwareImportKey loose = SoftwareImportKey::Make(attrs);
    PackageHeader h = header_;
    h.import_key_name = loose.name;
    s = SealForDestination(Payload(), h, loose.tpm2b_public);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.error().code(), ErrorCode::kPermissionDenied) << s.error().ToString();
  }
  // Empty header fields.
  PackageHeader empty = header_;
  empty.migration_id.clear();
  EXPECT_FALSE(SealForDestination(Payload(), empty, dest_.tpm2b_public).ok());
  EXPECT_FALSE(SealForDestination(Payload(), header_, "junk").ok());
}

TEST(KeyTransferTest, RoundTripAndStrictParsing) {
  auto bytes = SerializeKeyTransfer(Payload());
  ASSERT_TRUE(bytes.ok()) << bytes.error().ToString();
  auto parsed = ParseKeyTransfer(*bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  ExpectSamePayload(*parsed, Payload());
  // Every cut is refused with kDataLoss.
  for (size_t n = 0; n < bytes->size(); ++n) {
    auto cut = ParseKeyTransfer(SecretBytes(bytes->data(), n));
    ASSERT_FALSE(cut.ok()) << n;
    EXPECT_EQ(cut.error().code(), ErrorCode::kDataLoss);
  }
  // Another version; a trailing byte.
  SecretBytes v2 = bytes->Clone();
  v2.data()[0] = 2;
  EXPECT_NE(ParseKeyTransfer(v2).error().message().find("version 2"), std::string::npos);
  SecretBytes longer(bytes->size() + 1);
  std::memcpy(longer.data(), bytes->data(), bytes->size());
  EXPECT_FALSE(ParseKeyTransfer(longer).ok());
}

TEST(KeyTransferTest, StateFileNamesArePlainAndKeysHave32Bytes) {
  for (const char* bad : {"", ".", "..", "../tpm2-00.permall", "dir/file", "/etc/passwd"}) {
    KeyTransfer p = Payload();
    p.state_files[bad] = "x";
    auto s = SerializeKeyTransfer(p);
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.error().code(), ErrorCode::kInvalidArgument);
  }
  KeyTransfer short_key = Payload();
  short_key.state_key = SecretBytes(16);
  EXPECT_FALSE(SerializeKeyTransfer(short_key).ok());
  KeyTransfer no_uuid = Payload();
  no_uuid.vm_uuid.clear();
  EXPECT_FALSE(SerializeKeyTransfer(no_uuid).ok());
  // A parsed entry named "../x" (crafted bytes, as a faulty source would send) is refused.
  KeyTransfer p = Payload();
  p.state_files = {{"AAx", "contents"}};
  auto bytes = SerializeKeyTransfer(p);
  ASSERT_TRUE(bytes.ok());
  SecretBytes crafted = bytes->Clone();
  uint8_t* name = crafted.data() + crafted.size() - std::string("AAx").size() - std::string("contents").size();
  std::memcpy(name, "../", 3);
  auto parsed = ParseKeyTransfer(crafted);
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.error().message().find("not a plain file name"), std::string::npos) << parsed.error().message();
}

// The fuzzer's checked-in seeds (fuzz/corpus/migration_package_fuzzer): two packages (cold and
// live) and two plaintexts, made by this code. They must stay readable as the formats evolve;
// VTM_WRITE_FUZZ_SEEDS=1 rewrites them.
TEST_F(MigrationPackageTest, FuzzSeedsAreCurrent) {
  const std::string dir = std::string(VTM_SOURCE_DIR) + "/fuzz/corpus/migration_package_fuzzer/";
  KeyTransfer live = Payload();
  live.state_files.clear();
  const std::pair<const char*, bool> seeds[] = {
      {"package-cold", true}, {"package-live", true}, {"transfer-cold", false}, {"transfer-live", false}};
  if (std::getenv("VTM_WRITE_FUZZ_SEEDS") != nullptr) {
    ASSERT_TRUE(MakeDir(dir, 0755).ok());
    auto to_string = [](const SecretBytes& b) { return std::string(reinterpret_cast<const char*>(b.data()), b.size()); };
    ASSERT_TRUE(WriteFileAtomic(dir + "package-cold", Seal().Serialize(), 0644).ok());
    ASSERT_TRUE(WriteFileAtomic(dir + "package-live", SealForDestination(live, header_, dest_.tpm2b_public)->Serialize(), 0644).ok());
    ASSERT_TRUE(WriteFileAtomic(dir + "transfer-cold", to_string(*SerializeKeyTransfer(Payload())), 0644).ok());
    ASSERT_TRUE(WriteFileAtomic(dir + "transfer-live", to_string(*SerializeKeyTransfer(live)), 0644).ok());
  }
  for (const auto& [file, is_package] : seeds) {
    auto bytes = ReadFile(dir + file);
    ASSERT_TRUE(bytes.ok()) << bytes.error().ToString();
    EXPECT_LE(bytes->size(), 4096u) << file << ": the smoke run reads at most 4096 bytes";
    if (is_package) {
      auto parsed = SealedPackage::Parse(*bytes);
      EXPECT_TRUE(parsed.ok()) << file << ": " << parsed.error().ToString();
    } else {
      auto parsed = ParseKeyTransfer(SecretBytes(reinterpret_cast<const uint8_t*>(bytes->data()), bytes->size()));
      EXPECT_TRUE(parsed.ok()) << file << ": " << parsed.error().ToString();
    }
  }
}

TEST(ImportKeyQualifyingTest, BindsBothFieldsWithoutAmbiguity) {
  const std::string q = ImportKeyQualifying("mig-1", "nonce");
  EXPECT_EQ(q.size(), 32u);
  EXPECT_EQ(q, ImportKeyQualifying("mig-1", "nonce"));
  EXPECT_NE(q, ImportKeyQualifying("mig-2", "nonce"));
  EXPECT_NE(q, ImportKeyQualifying("mig-1", "nonce2"));
  // Length prefixes: moving bytes between the fields changes the result.
  EXPECT_NE(ImportKeyQualifying("ab", "c"), ImportKeyQualifying("a", "bc"));
}

}  // namespace
}  // namespace vtm::migration
