// The destination's import key in real simulated host TPMs (swtpm): an owner-hierarchy primary,
// certified by the host AK for one migration, checked by the source (migration::VerifyImportKey),
// and a credential made to it (our software MakeCredential and tpm2-tools' own) activated only in
// that TPM. Two hosts: what is made for host A opens nowhere else.
#include <gtest/gtest.h>
#include <tss2/tss2_mu.h>

#include <memory>
#include <string>

#include "external_formats.h"
#include "host_attestation_key.h"
#include "migration_import_key.h"
#include "test_env.h"
#include "vtm/credential.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/host_tpm.h"
#include "vtm/host_tpm_executor.h"
#include "vtm/migration_package.h"
#include "vtm/tpm_structures.h"

namespace vtm {
namespace {

using testing::AsString;
using testing::RunCommand;
using testing::SpkiDerToPem;
using testing::TempDir;

// One host: a simulated host TPM, its executor and host AK, as vtmd holds them.
struct Host {
  std::unique_ptr<SimulatedHostTpm> sim;
  std::unique_ptr<HostTpmExecutor> executor;
  std::unique_ptr<HostAttestationKey> ak;

  void Start(const std::string& dir) {
    auto s = SimulatedHostTpm::Start(dir + "/host-tpm");
    ASSERT_TRUE(s.ok()) << s.error().ToString();
    sim = std::move(s).value();
    auto tpm = Tpm::OpenTcti(sim->tcti());
    ASSERT_TRUE(tpm.ok()) << tpm.error().ToString();
    executor = std::make_unique<HostTpmExecutor>(std::move(tpm).value());
    auto a = HostAttestationKey::LoadOrCreate(*executor, dir + "/id", SecretBytes());
    ASSERT_TRUE(a.ok()) << a.error().ToString();
    ak = std::move(a).value();
  }
  ~Host() {
    ak.reset();
    executor.reset();
    sim.reset();
  }
};

TpmCredential CredentialTo(const TpmKeyPublic& key, const std::string& secret) {
  auto made = attest::MakeCredential(key.tpm2b_public, secret, key.name);
  EXPECT_TRUE(made.ok()) << made.error().ToString();
  if (!made.ok()) return {};
  return TpmCredential{made->id_object, made->encrypted_secret};
}

class MigrationImportKeyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(a_.Start(dir_.path() + "/a"));
    ASSERT_NO_FATAL_FAILURE(b_.Start(dir_.path() + "/b"));
  }
  ImportKey MustCreate(Host& host, const std::string& migration_id = "mig-1", const std::string& nonce = "nonce-1") {
    auto key = CreateImportKey(*host.ak, migration_id, nonce);
    EXPECT_TRUE(key.ok()) << key.error().ToString();
    return key.ok() ? std::move(key).value() : ImportKey{};
  }
  std::string Path(const std::string& name) const { return dir_.path() + "/" + name; }

  TempDir dir_;
  Host a_, b_;
  const std::string secret_ = "0123456789abcdef0123456789abcdef";  // a 32-byte transport key
};

TEST_F(MigrationImportKeyTest, ImportKeyIsCertifiedFixedInItsTpmAndActivatesItsCredential) {
  ImportKey key = MustCreate(a_);
  ASSERT_FALSE(key.pub.name.empty());
  // The source's check, with the AK the verifier accepted for A.
  const std::string qualifying = migration::ImportKeyQualifying("mig-1", "nonce-1");
  ASSERT_EQ(qualifying.size(), 32u);
  Status verified =
      migration::VerifyImportKey(key.pub.tpm2b_public, key.certify, a_.ak->ak_public().tpm2b_public, qualifying);
  ASSERT_TRUE(verified.ok()) << verified.error().ToString();
  // The template as documented: ECC P-256 restricted decryption, AES-128-CFB, SHA-256 name.
  auto pub = ParseTpm2bPublic(key.pub.tpm2b_public, "import key");
  ASSERT_TRUE(pub.ok());
  const TPMT_PUBLIC& area = pub->publicArea;
  EXPECT_EQ(area.type, TPM2_ALG_ECC);
  EXPECT_EQ(area.nameAlg, TPM2_ALG_SHA256);
  EXPECT_EQ(area.parameters.eccDetail.curveID, TPM2_ECC_NIST_P256);
  EXPECT_EQ(area.parameters.eccDetail.symmetric.algorithm, TPM2_ALG_AES);
  EXPECT_EQ(area.parameters.eccDetail.symmetric.keyBits.aes, 128);
  EXPECT_EQ(area.parameters.eccDetail.symmetric.mode.aes, TPM2_ALG_CFB);
  EXPECT_EQ(area.objectAttributes & TPMA_OBJECT_ADMINWITHPOLICY, 0u);
  EXPECT_EQ(area.objectAttributes & TPMA_OBJECT_SIGN_ENCRYPT, 0u);
  EXPECT_EQ(key.pub.name, TpmNameOfPublic(key.pub.tpm2b_public).value());
  // tpm2-tools reads the same attributes from the public area.
  ASSERT_TRUE(WriteFileAtomic(Path("import.pub"), key.pub.tpm2b_public, 0600).ok());
  auto printed = RunCommand({"tpm2_print", "-t", "TPM2B_PUBLIC", Path("import.pub")});
  ASSERT_EQ(printed.exit_code, 0) << printed.output;
  for (const char* expected : {"fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt",
                               "name-alg:\n  value: sha256", "curve-id:\n  value: NIST p256",
                               "sym-alg:\n  value: aes", "sym-mode:\n  value: cfb", "sym-keybits: 128"}) {
    EXPECT_NE(printed.output.find(expected), std::string::npos) << expected << " not in\n" << printed.output;
  }

  // The credential binds to the key's own name; only A's TPM recovers the secret.
  auto got = ActivateWithImportKey(*a_.ak, key.blob, CredentialTo(key.pub, secret_));
  ASSERT_TRUE(got.ok()) << got.error().ToString();
  EXPECT_EQ(AsString(*got), secret_);
}

TEST_F(MigrationImportKeyTest, CredentialFromTpm2ToolsActivates) {
  // tpm2-tools' own software MakeCredential (not ours) to the import key's public key.
  ImportKey key = MustCreate(a_);
  ASSERT_TRUE(WriteFileAtomic(Path("import.pem"), SpkiDerToPem(key.pub.spki_der), 0600).ok());
  ASSERT_TRUE(WriteFileAtomic(Path("secret.bin"), secret_, 0600).ok());
  auto made = RunCommand({"tpm2_makecredential", "-T", "none", "-G", "ecc", "-u", Path("import.pem"), "-s",
                          Path("secret.bin"), "-n", HexEncode(key.pub.name), "-o", Path("cred.out")});
  ASSERT_EQ(made.exit_code, 0) << made.output;
  auto credential = ParseTpm2ToolsCredential(ReadFile(Path("cred.out")).value());
  ASSERT_TRUE(credential.ok()) << credential.error().ToString();
  auto got = ActivateWithImportKey(*a_.ak, key.blob, *credential);
  ASSERT_TRUE(got.ok()) << got.error().ToString();
  EXPECT_EQ(AsString(*got), secret_);
}

TEST_F(MigrationImportKeyTest, WhatIsMadeForHostANeverOpensOnHostB) {
  ImportKey on_a = MustCreate(a_);
  ImportKey on_b = MustCreate(b_);
  const TpmCredential to_a = CredentialTo(on_a.pub, secret_);
  // B cannot re-derive A's key (only A's owner seed does)...
  auto stolen_blob = ActivateWithImportKey(*b_.ak, on_a.blob, to_a);
  ASSERT_FALSE(stolen_blob.ok());
  EXPECT_EQ(stolen_blob.error().code(), ErrorCode::kDataLoss) << stolen_blob.error().ToString();
  EXPECT_NE(stolen_blob.error().message().find("re-derived"), std::string::npos) << stolen_blob.error().message();
  // ...and its own import key does not open a credential made to A's.
  auto with_own_key = ActivateWithImportKey(*b_.ak, on_b.blob, to_a);
  ASSERT_FALSE(with_own_key.ok());
  // The TPM's integrity check of the credential fails: another key's ECDH gives another seed.
  EXPECT_EQ(with_own_key.error().code(), ErrorCode::kDataLoss) << with_own_key.error().ToString();
  // Nor does a second import key of A itself (each migration has its own key).
  ImportKey second_on_a = MustCreate(a_, "mig-2", "nonce-2");
  EXPECT_NE(second_on_a.pub.name, on_a.pub.name);
  EXPECT_FALSE(ActivateWithImportKey(*a_.ak, second_on_a.blob, to_a).ok());
  // A altered credential fails in A's TPM too.
  TpmCredential altered = to_a;
  altered.id_object[altered.id_object.size() - 1] ^= 0x01;
  EXPECT_FALSE(ActivateWithImportKey(*a_.ak, on_a.blob, altered).ok());
  // The untouched one still opens on A.
  auto got = ActivateWithImportKey(*a_.ak, on_a.blob, to_a);
  ASSERT_TRUE(got.ok()) << got.error().ToString();
  EXPECT_EQ(AsString(*got), secret_);
}

TEST_F(MigrationImportKeyTest, VerifyImportKeyRefusesAnotherAkAnotherMigrationAndAnEditedKey) {
  ImportKey key = MustCreate(a_);
  const std::string qualifying = migration::ImportKeyQualifying("mig-1", "nonce-1");

  // Certified by A's AK, but the source was told B's AK: the signature does not verify.
  Status other_ak =
      migration::VerifyImportKey(key.pub.tpm2b_public, key.certify, b_.ak->ak_public().tpm2b_public, qualifying);
  ASSERT_FALSE(other_ak.ok());
  EXPECT_EQ(other_ak.error().code(), ErrorCode::kDataLoss) << other_ak.error().ToString();

  // Made for another migration ID or another source nonce: replayed or foreign.
  for (const std::string& wrong : {migration::ImportKeyQualifying("mig-2", "nonce-1"),
                                   migration::ImportKeyQualifying("mig-1", "nonce-2"), std::string()}) {
    Status s = migration::VerifyImportKey(key.pub.tpm2b_public, key.certify, a_.ak->ak_public().tpm2b_public, wrong);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.error().code(), ErrorCode::kPermissionDenied) << s.error().ToString();
    EXPECT_NE(s.error().message().find("another migration"), std::string::npos) << s.error().message();
  }

  // The public area edited to drop fixedTPM (a key that could be duplicated out): its name is
  // no longer the certified one.
  auto pub = ParseTpm2bPublic(key.pub.tpm2b_public, "import key");
  ASSERT_TRUE(pub.ok());
  TPM2B_PUBLIC edited = *pub;
  edited.publicArea.objectAttributes &= ~(TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT);
  uint8_t buf[sizeof(TPM2B_PUBLIC)];
  size_t len = 0;
  ASSERT_EQ(Tss2_MU_TPM2B_PUBLIC_Marshal(&edited, buf, sizeof buf, &len), TSS2_RC_SUCCESS);
  const std::string edited_bytes(reinterpret_cast<const char*>(buf), len);
  Status s = migration::VerifyImportKey(edited_bytes, key.certify, a_.ak->ak_public().tpm2b_public, qualifying);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("certified TPM name is not the name"), std::string::npos) << s.error().message();

  // A genuine key of A, certified by A's AK for this very migration, but a signing key: not
  // a restricted decryption key, so nothing may be wrapped to it.
  auto signing = a_.executor->Run([&](Tpm& tpm) -> Result<std::pair<TpmKeyPublic, TpmAttestation>> {
    TpmKey loaded;
    {
      VTM_ASSIGN_OR_RETURN(TpmKey srk, tpm.CreateSrk());
      VTM_ASSIGN_OR_RETURN(TpmKeyBlob blob, tpm.CreateKey(srk, KeyRole::kSigning, SecretBytes()));
      VTM_ASSIGN_OR_RETURN(loaded, tpm.LoadKey(srk, blob));
    }
    VTM_ASSIGN_OR_RETURN(TpmKeyPublic p, tpm.ReadPublic(loaded));
    VTM_ASSIGN_OR_RETURN(TpmAttestation c, a_.ak->CertifyInJob(tpm, loaded, qualifying));
    return std::make_pair(p, c);
  });
  ASSERT_TRUE(signing.ok()) << signing.error().ToString();
  s = migration::VerifyImportKey(signing->first.tpm2b_public, signing->second, a_.ak->ak_public().tpm2b_public,
                                 qualifying);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kPermissionDenied) << s.error().ToString();
  EXPECT_NE(s.error().message().find("not a restricted decryption key"), std::string::npos) << s.error().message();

  // Malformed inputs are refused, not crashed on.
  EXPECT_FALSE(migration::VerifyImportKey("", key.certify, a_.ak->ak_public().tpm2b_public, qualifying).ok());
  EXPECT_FALSE(migration::VerifyImportKey(key.pub.tpm2b_public, TpmAttestation{"x", "y"},
                                          a_.ak->ak_public().tpm2b_public, qualifying)
                   .ok());
  EXPECT_FALSE(migration::VerifyImportKey(key.pub.tpm2b_public, key.certify, "junk", qualifying).ok());
}

// The whole crypto flow between two hosts: B (destination) prepares an import key, A (source)
// verifies it with B's AK and seals a cold package (state files included), B opens it in its TPM.
TEST_F(MigrationImportKeyTest, SealedPackageOpensOnlyInTheDestinationThatPreparedIt) {
  const std::string nonce = "source-nonce-0001";
  ImportKey prepared = MustCreate(b_, "mig-7", nonce);
  ASSERT_TRUE(migration::VerifyImportKey(prepared.pub.tpm2b_public, prepared.certify, b_.ak->ak_public().tpm2b_public,
                                         migration::ImportKeyQualifying("mig-7", nonce))
                  .ok());
  migration::KeyTransfer payload;
  payload.vm_uuid = "0b7e3c52-9a1f-4c55-8d2e-7f1a2b3c4d5e";
  payload.name = "db-1";
  payload.generation = 3;
  payload.state_key = RandomSecret(32).value();
  payload.migration_key = RandomSecret(32).value();
  payload.ek_public = "ek";
  payload.ak_public = "ak";
  payload.state_files["tpm2-00.permall"] = std::string(20000, '\x42');
  const migration::PackageHeader header{"mig-7", payload.vm_uuid, 3, prepared.pub.name, "host-a", "host-b"};
  auto sealed = migration::SealForDestination(payload, header, prepared.pub.tpm2b_public);
  ASSERT_TRUE(sealed.ok()) << sealed.error().ToString();
  auto received = migration::SealedPackage::Parse(sealed->Serialize());
  ASSERT_TRUE(received.ok()) << received.error().ToString();

  auto activate_on = [&](Host& host, const TpmKeyBlob& blob) {
    return [&host, &blob](const TpmCredential& c) { return ActivateWithImportKey(*host.ak, blob, c); };
  };
  // Host A holds no import key for it: given B's blob, its TPM refuses to load it; given a key
  // of its own prepared under the same migration ID, the header names another key.
  auto on_a = migration::OpenSealedPackage(*received, header, activate_on(a_, prepared.blob));
  ASSERT_FALSE(on_a.ok());
  EXPECT_EQ(on_a.error().code(), ErrorCode::kDataLoss) << on_a.error().ToString();
  ImportKey a_key = MustCreate(a_, "mig-7", nonce);
  migration::PackageHeader a_expects = header;
  a_expects.import_key_name = a_key.pub.name;
  a_expects.destination_host = "host-a";
  auto misdirected = migration::OpenSealedPackage(*received, a_expects, activate_on(a_, a_key.blob));
  ASSERT_FALSE(misdirected.ok());
  EXPECT_EQ(misdirected.error().code(), ErrorCode::kPermissionDenied) << misdirected.error().ToString();
  // Even told to expect B's header, A's own key cannot open it.
  auto forced = migration::OpenSealedPackage(*received, header, activate_on(a_, a_key.blob));
  ASSERT_FALSE(forced.ok());
  EXPECT_EQ(forced.error().code(), ErrorCode::kDataLoss) << forced.error().ToString();

  // B opens it.
  auto opened = migration::OpenSealedPackage(*received, header, activate_on(b_, prepared.blob));
  ASSERT_TRUE(opened.ok()) << opened.error().ToString();
  EXPECT_EQ(opened->vm_uuid, payload.vm_uuid);
  EXPECT_EQ(opened->generation, 3u);
  EXPECT_EQ(AsString(opened->state_key), AsString(payload.state_key));
  EXPECT_EQ(AsString(opened->migration_key), AsString(payload.migration_key));
  EXPECT_EQ(opened->state_files, payload.state_files);
  // Replayed into a later migration of the same VM on B: refused before the TPM is asked.
  migration::PackageHeader later = header;
  later.migration_id = "mig-8";
  later.generation = 4;
  auto replayed = migration::OpenSealedPackage(*received, later, [](const TpmCredential&) -> Result<SecretBytes> {
    ADD_FAILURE() << "a replayed package reached the TPM";
    return Error(ErrorCode::kInternal, "unreachable");
  });
  ASSERT_FALSE(replayed.ok());
  EXPECT_EQ(replayed.error().code(), ErrorCode::kPermissionDenied);
}

}  // namespace
}  // namespace vtm
