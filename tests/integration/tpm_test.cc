// Integration tests of vtm::Tpm against real swtpms, cross-checked with independent tools:
// tpm2-tools (createek, checkquote, nvread) and OpenSSL signature verification. The same class
// is driven over a TCTI string (simulated host TPM) and over a socket (ProvisioningSwtpm).
#include "vtm/tpm.h"

#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <tss2/tss2_mu.h>
#include <unistd.h>

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "simulated_host_tpm_test.h"
#include "test_env.h"
#include "vtm/credential.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/host_tpm.h"
#include "vtm/provisioning_swtpm.h"
#include "vtm/secret.h"
#include "vtm/subprocess.h"
#include "vtm/tpm_structures.h"

namespace vtm {
namespace {

using vtm::testing::AsString;
using vtm::testing::CommandResult;
using vtm::testing::RunCommand;
using vtm::testing::Sha256;
using vtm::testing::SpkiDerToPem;
using vtm::testing::TempDir;

constexpr uint32_t kEccEkCertIndex = 0x01C0000A;
constexpr uint32_t kRsaEkCertIndex = 0x01C00002;

std::string RandomBytes(size_t n) {
  auto r = RandomSecret(n);
  EXPECT_TRUE(r.ok());
  return r.ok() ? AsString(*r) : std::string();
}

PcrSelection Selection(const std::string& text) {
  auto sel = PcrSelection::Parse(text);
  EXPECT_TRUE(sel.ok()) << sel.error().ToString();
  return sel.ok() ? *sel : PcrSelection{};
}

// SubjectPublicKeyInfo DER from a PEM public key file (as tpm2-tools writes with -f pem).
std::string PemFileToSpkiDer(const std::string& path) {
  auto pem = ReadFile(path);
  EXPECT_TRUE(pem.ok()) << path;
  if (!pem.ok()) return "";
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(pem->data(), static_cast<int>(pem->size())), BIO_free);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr),
                                                          EVP_PKEY_free);
  EXPECT_TRUE(key) << "not a PEM public key: " << *pem;
  if (!key) return "";
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(key.get(), &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

// OpenSSL's verdict on a DER ECDSA signature over SHA-256(message) with the key in spki_der.
bool VerifiesWithOpenSsl(const std::string& spki_der, const std::string& message, const std::string& der_signature) {
  const auto* p = reinterpret_cast<const unsigned char*>(spki_der.data());
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(d2i_PUBKEY(nullptr, &p, static_cast<long>(spki_der.size())),
                                                          EVP_PKEY_free);
  if (!key) return false;
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.get()) != 1) return false;
  return EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(der_signature.data()), der_signature.size(),
                          reinterpret_cast<const unsigned char*>(message.data()), message.size()) == 1;
}

// A marshalled TPMT_SIGNATURE (ECDSA) as the DER ECDSA-Sig-Value OpenSSL verifies.
std::string TpmtSignatureToDer(const std::string& marshalled) {
  TPMT_SIGNATURE sig{};
  size_t offset = 0;
  EXPECT_EQ(Tss2_MU_TPMT_SIGNATURE_Unmarshal(reinterpret_cast<const uint8_t*>(marshalled.data()), marshalled.size(),
                                             &offset, &sig),
            TSS2_RC_SUCCESS);
  EXPECT_EQ(offset, marshalled.size());
  EXPECT_EQ(sig.sigAlg, TPM2_ALG_ECDSA);
  EXPECT_EQ(sig.signature.ecdsa.hash, TPM2_ALG_SHA256);
  ECDSA_SIG* ecdsa = ECDSA_SIG_new();
  ECDSA_SIG_set0(ecdsa, BN_bin2bn(sig.signature.ecdsa.signatureR.buffer, sig.signature.ecdsa.signatureR.size, nullptr),
                 BN_bin2bn(sig.signature.ecdsa.signatureS.buffer, sig.signature.ecdsa.signatureS.size, nullptr));
  unsigned char* der = nullptr;
  int len = i2d_ECDSA_SIG(ecdsa, &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  ECDSA_SIG_free(ecdsa);
  return out;
}

TPMS_ATTEST ParseAttest(const std::string& attest) {
  TPMS_ATTEST out{};
  size_t offset = 0;
  EXPECT_EQ(
      Tss2_MU_TPMS_ATTEST_Unmarshal(reinterpret_cast<const uint8_t*>(attest.data()), attest.size(), &offset, &out),
      TSS2_RC_SUCCESS);
  EXPECT_EQ(offset, attest.size());
  return out;
}

class TpmTest : public vtm::testing::SimulatedHostTpmTest {
 protected:
  // Without a resource manager, tools leave objects loaded; swtpm has three transient slots.
  void FlushToolObjects() { ASSERT_EQ(Tpm2Tool({"tpm2_flushcontext", "-t"}).exit_code, 0); }

  TpmKey Must(Result<TpmKey> key) {
    EXPECT_TRUE(key.ok()) << key.error().ToString();
    return key.ok() ? std::move(key).value() : TpmKey();
  }

  TpmKeyPublic PublicOf(const TpmKey& key) {
    auto pub = tpm_->ReadPublic(key);
    EXPECT_TRUE(pub.ok()) << pub.error().ToString();
    return pub.ok() ? *pub : TpmKeyPublic{};
  }

  // Creates and loads a key of role under a fresh SRK (the SRK is flushed again).
  TpmKey LoadedKey(Tpm& tpm, KeyRole role) {
    TpmKey srk = Must(tpm.CreateSrk());
    auto blob = tpm.CreateKey(srk, role, SecretBytes());
    EXPECT_TRUE(blob.ok()) << blob.error().ToString();
    if (!blob.ok()) return TpmKey();
    return Must(tpm.LoadKey(srk, *blob));
  }

  void CheckEkMatchesTpm2Createek(KeyAlg alg, const std::string& tool_alg) {
    std::string ours;
    {
      TpmKey ek = Must(tpm_->CreateEk(alg));
      ours = PublicOf(ek).spki_der;
    }
    ASSERT_FALSE(ours.empty());
    const std::string pem = dir_.path() + "/ek-" + tool_alg + ".pem";
    CommandResult r = Tpm2Tool(
        {"tpm2_createek", "-c", dir_.path() + "/ek-" + tool_alg + ".ctx", "-G", tool_alg, "-u", pem, "-f", "pem"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    ASSERT_NO_FATAL_FAILURE(FlushToolObjects());
    EXPECT_EQ(HexEncode(ours), HexEncode(PemFileToSpkiDer(pem)))
        << "EK (" << tool_alg << ") differs from tpm2_createek's";
  }
};

TEST_F(TpmTest, EccEkIsTheKeyTpm2CreateekRecreates) { CheckEkMatchesTpm2Createek(KeyAlg::kEccP256, "ecc"); }

TEST_F(TpmTest, RsaEkIsTheKeyTpm2CreateekRecreates) { CheckEkMatchesTpm2Createek(KeyAlg::kRsa2048, "rsa"); }

TEST_F(TpmTest, HostTpmOpenReturnsTheSameImplementation) {
  tpm_.reset();
  auto host = HostTpm::Open(sim_->tcti());
  ASSERT_TRUE(host.ok()) << host.error().ToString();
  auto* tpm = dynamic_cast<Tpm*>(host->get());
  ASSERT_NE(tpm, nullptr);
  TpmKey ek = Must(tpm->CreateEk(KeyAlg::kEccP256));
  EXPECT_TRUE(ek.valid());
}

TEST_F(TpmTest, SigningKeySignsDigestsOpenSslVerifies) {
  TpmKey key = LoadedKey(*tpm_, KeyRole::kSigning);
  ASSERT_TRUE(key.valid());
  TpmKeyPublic pub = PublicOf(key);
  // The name and SPKI helpers agree with what the TPM reports.
  auto name = TpmNameOfPublic(pub.tpm2b_public);
  ASSERT_TRUE(name.ok()) << name.error().ToString();
  EXPECT_EQ(HexEncode(*name), HexEncode(pub.name));
  auto spki = SpkiFromTpmPublic(pub.tpm2b_public);
  ASSERT_TRUE(spki.ok()) << spki.error().ToString();
  EXPECT_EQ(*spki, pub.spki_der);

  const std::string message = "to be signed by a key that never leaves the TPM";
  auto signature = tpm_->SignDigest(key, Sha256(message));
  ASSERT_TRUE(signature.ok()) << signature.error().ToString();
  EXPECT_TRUE(VerifiesWithOpenSsl(pub.spki_der, message, *signature));
  EXPECT_FALSE(VerifiesWithOpenSsl(pub.spki_der, message + ".", *signature));

  auto short_digest = tpm_->SignDigest(key, "short");
  ASSERT_FALSE(short_digest.ok());
  EXPECT_EQ(short_digest.error().code(), ErrorCode::kInvalidArgument);
}

TEST_F(TpmTest, AttestationKeyRefusesToSignArbitraryDigests) {
  TpmKey ak = LoadedKey(*tpm_, KeyRole::kAttestation);
  ASSERT_TRUE(ak.valid());
  auto signature = tpm_->SignDigest(ak, Sha256("looks like a quote"));
  ASSERT_FALSE(signature.ok());
  EXPECT_EQ(signature.error().code(), ErrorCode::kTpm) << signature.error().ToString();
  EXPECT_NE(signature.error().message().find("TPM2_Sign"), std::string::npos);
}

TEST_F(TpmTest, CertifyIsSignedByTheAkAndNamesTheKey) {
  TpmKey srk = Must(tpm_->CreateSrk());
  auto ak_blob = tpm_->CreateKey(srk, KeyRole::kAttestation, SecretBytes());
  auto ik_blob = tpm_->CreateKey(srk, KeyRole::kSigning, SecretBytes());
  ASSERT_TRUE(ak_blob.ok() && ik_blob.ok());
  TpmKey ak = Must(tpm_->LoadKey(srk, *ak_blob));
  TpmKey ik = Must(tpm_->LoadKey(srk, *ik_blob));
  TpmKeyPublic ak_pub = PublicOf(ak), ik_pub = PublicOf(ik);

  const std::string qualifying = "fresh-nonce-1234";
  auto cert = tpm_->Certify(ik, ak, qualifying);
  ASSERT_TRUE(cert.ok()) << cert.error().ToString();
  EXPECT_TRUE(VerifiesWithOpenSsl(ak_pub.spki_der, cert->attest, TpmtSignatureToDer(cert->signature)));
  EXPECT_FALSE(VerifiesWithOpenSsl(ik_pub.spki_der, cert->attest, TpmtSignatureToDer(cert->signature)));

  TPMS_ATTEST attest = ParseAttest(cert->attest);
  EXPECT_EQ(attest.magic, TPM2_GENERATED_VALUE);
  EXPECT_EQ(attest.type, TPM2_ST_ATTEST_CERTIFY);
  EXPECT_EQ(HexEncode(std::string(reinterpret_cast<const char*>(attest.attested.certify.name.name),
                                  attest.attested.certify.name.size)),
            HexEncode(ik_pub.name));
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(attest.extraData.buffer), attest.extraData.size), qualifying);

  auto too_long = tpm_->Certify(ik, ak, std::string(100, 'x'));
  ASSERT_FALSE(too_long.ok());
  EXPECT_EQ(too_long.error().code(), ErrorCode::kInvalidArgument);
}

TEST_F(TpmTest, QuoteVerifiesWithTpm2Checkquote) {
  ASSERT_TRUE(tpm_->ExtendPcr("sha256", 16, Sha256("measured")).ok());
  TpmKey ak = LoadedKey(*tpm_, KeyRole::kAttestation);
  ASSERT_TRUE(ak.valid());
  const std::string nonce = RandomBytes(20);
  auto quote = tpm_->Quote(ak, Selection("sha256:0,16"), nonce);
  ASSERT_TRUE(quote.ok()) << quote.error().ToString();
  TPMS_ATTEST attest = ParseAttest(quote->attest);
  EXPECT_EQ(attest.type, TPM2_ST_ATTEST_QUOTE);

  const std::string d = dir_.path();
  ASSERT_TRUE(WriteFileAtomic(d + "/ak.pem", SpkiDerToPem(PublicOf(ak).spki_der), 0600).ok());
  ASSERT_TRUE(WriteFileAtomic(d + "/quote.msg", quote->attest, 0600).ok());
  ASSERT_TRUE(WriteFileAtomic(d + "/quote.sig", quote->signature, 0600).ok());
  CommandResult r = RunCommand(
      {"tpm2_checkquote", "-u", d + "/ak.pem", "-m", d + "/quote.msg", "-s", d + "/quote.sig", "-q", HexEncode(nonce)});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  r = RunCommand({"tpm2_checkquote", "-u", d + "/ak.pem", "-m", d + "/quote.msg", "-s", d + "/quote.sig", "-q",
                  HexEncode(RandomBytes(20))});
  EXPECT_NE(r.exit_code, 0) << "a quote verified against the wrong nonce: " << r.output;
}

// A verifier without a TPM (vtm::attest::MakeCredential, as vtm-verify uses it) wraps a
// secret for the AK's name to an ECC and an RSA EK; this TPM activates both, and refuses a
// credential made for another name or to another EK.
TEST_F(TpmTest, SoftwareMadeCredentialActivatesInTheTpm) {
  TpmKey ak = LoadedKey(*tpm_, KeyRole::kAttestation);
  ASSERT_TRUE(ak.valid());
  const TpmKeyPublic ak_pub = PublicOf(ak);
  for (KeyAlg alg : {KeyAlg::kEccP256, KeyAlg::kRsa2048}) {
    TpmKey ek = Must(tpm_->CreateEk(alg));
    const TpmKeyPublic ek_pub = PublicOf(ek);
    const std::string secret = RandomBytes(32);
    auto made = attest::MakeCredential(ek_pub.tpm2b_public, secret, ak_pub.name);
    ASSERT_TRUE(made.ok()) << made.error().ToString();
    auto activated = tpm_->ActivateCredential(ak, ek, {made->id_object, made->encrypted_secret});
    ASSERT_TRUE(activated.ok()) << activated.error().ToString();
    EXPECT_EQ(HexEncode(AsString(*activated)), HexEncode(secret));

    std::string other_name = ak_pub.name;
    other_name.back() ^= 0x01;
    auto wrong_name = attest::MakeCredential(ek_pub.tpm2b_public, secret, other_name);
    ASSERT_TRUE(wrong_name.ok());
    EXPECT_FALSE(tpm_->ActivateCredential(ak, ek, {wrong_name->id_object, wrong_name->encrypted_secret}).ok());
  }
  // Only restricted decryption keys are EKs; an AK's public area is refused, with a reason.
  auto not_ek = attest::MakeCredential(ak_pub.tpm2b_public, "secret", ak_pub.name);
  ASSERT_FALSE(not_ek.ok());
  EXPECT_NE(not_ek.error().message().find("not a restricted ECC or RSA decryption key"), std::string::npos);
}

// The verifier (this TPM) wraps a secret to the attester's EK for the attester's AK name; only
// the attester's TPM, holding both, recovers it.
TEST_F(TpmTest, CredentialActivationRoundTripsBetweenTwoTpms) {
  auto attester_sim = SimulatedHostTpm::Start(dir_.path() + "/attester");
  ASSERT_TRUE(attester_sim.ok()) << attester_sim.error().ToString();
  auto attester = Tpm::OpenTcti((*attester_sim)->tcti());
  ASSERT_TRUE(attester.ok()) << attester.error().ToString();
  Tpm& a = **attester;

  TpmKey ek = Must(a.CreateEk(KeyAlg::kEccP256));
  TpmKey ak = LoadedKey(a, KeyRole::kAttestation);
  ASSERT_TRUE(ek.valid() && ak.valid());
  auto ek_pub = a.ReadPublic(ek);
  auto ak_pub = a.ReadPublic(ak);
  ASSERT_TRUE(ek_pub.ok() && ak_pub.ok());

  const std::string secret = RandomBytes(32);
  TpmCredential credential, wrong_name_credential;
  {
    TpmKey ek_here = Must(tpm_->LoadExternalPublic(ek_pub->tpm2b_public));
    auto made = tpm_->MakeCredential(ek_here, secret, ak_pub->name);
    ASSERT_TRUE(made.ok()) << made.error().ToString();
    credential = *made;
    std::string other_name = ak_pub->name;
    other_name.back() ^= 0x01;
    made = tpm_->MakeCredential(ek_here, secret, other_name);
    ASSERT_TRUE(made.ok()) << made.error().ToString();
    wrong_name_credential = *made;
  }

  auto activated = a.ActivateCredential(ak, ek, credential);
  ASSERT_TRUE(activated.ok()) << activated.error().ToString();
  EXPECT_EQ(HexEncode(AsString(*activated)), HexEncode(secret));

  auto refused = a.ActivateCredential(ak, ek, wrong_name_credential);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message().find("TPM2_ActivateCredential failed"), std::string::npos)
      << refused.error().message();
  EXPECT_NE(refused.error().message().find("not made for this key's name"), std::string::npos)
      << refused.error().message();

  // Another TPM's EK cannot recover it either.
  TpmKey verifier_ek = Must(tpm_->CreateEk(KeyAlg::kEccP256));
  TpmKey verifier_ak = LoadedKey(*tpm_, KeyRole::kAttestation);
  EXPECT_FALSE(tpm_->ActivateCredential(verifier_ak, verifier_ek, credential).ok());
  // Keys are bound to their TPM object.
  auto mixed = tpm_->ActivateCredential(ak, verifier_ek, credential);
  ASSERT_FALSE(mixed.ok());
  EXPECT_EQ(mixed.error().code(), ErrorCode::kInvalidArgument);
}

TEST_F(TpmTest, NvCertificateRoundTripsAndResistsTheOwner) {
  const std::string cert = RandomBytes(2048);
  ASSERT_TRUE(tpm_->WriteNvCertificate(kEccEkCertIndex, cert).ok());
  auto read = tpm_->ReadNv(kEccEkCertIndex);
  ASSERT_TRUE(read.ok()) << read.error().ToString();
  EXPECT_EQ(HexEncode(*read), HexEncode(cert));

  // Rewriting replaces the index (vtmd re-issues certificates), with a new size.
  const std::string renewed = RandomBytes(700);
  Status rewritten = tpm_->WriteNvCertificate(kEccEkCertIndex, renewed);
  ASSERT_TRUE(rewritten.ok()) << rewritten.error().ToString();
  read = tpm_->ReadNv(kEccEkCertIndex);
  ASSERT_TRUE(read.ok()) << read.error().ToString();
  EXPECT_EQ(HexEncode(*read), HexEncode(renewed));

  const std::string d = dir_.path();
  CommandResult r = Tpm2Tool({"tpm2_nvread", "-C", "o", "-o", d + "/nv.bin", "0x01c0000a"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto tool_bytes = ReadFile(d + "/nv.bin");
  ASSERT_TRUE(tool_bytes.ok());
  EXPECT_EQ(HexEncode(*tool_bytes), HexEncode(renewed));

  r = Tpm2Tool({"tpm2_nvreadpublic", "0x01c0000a"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* attribute : {"ppwrite", "writedefine", "ppread", "ownerread", "authread", "no_da", "writelocked",
                                "written", "platformcreate"}) {
    EXPECT_NE(r.output.find(attribute), std::string::npos) << attribute << " missing: " << r.output;
  }
  EXPECT_EQ(r.output.find("ownerwrite"), std::string::npos) << r.output;

  ASSERT_TRUE(WriteFileAtomic(d + "/forged", std::string(16, 'F'), 0600).ok());
  r = Tpm2Tool({"tpm2_nvwrite", "-C", "o", "-i", d + "/forged", "0x01c0000a"});
  EXPECT_NE(r.exit_code, 0) << "the owner overwrote a certificate: " << r.output;
  r = Tpm2Tool({"tpm2_nvwrite", "-i", d + "/forged", "0x01c0000a"});  // index auth
  EXPECT_NE(r.exit_code, 0) << "index auth overwrote a certificate: " << r.output;
  r = Tpm2Tool({"tpm2_nvundefine", "-C", "o", "0x01c0000a"});
  EXPECT_NE(r.exit_code, 0) << "the owner deleted a certificate: " << r.output;
  read = tpm_->ReadNv(kEccEkCertIndex);
  ASSERT_TRUE(read.ok()) << read.error().ToString();
  EXPECT_EQ(HexEncode(*read), HexEncode(renewed));

  auto missing = tpm_->ReadNv(kRsaEkCertIndex);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code(), ErrorCode::kNotFound) << missing.error().ToString();
  EXPECT_EQ(tpm_->WriteNvCertificate(0x81000001, "x").error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(tpm_->WriteNvCertificate(kRsaEkCertIndex, std::string(4096, 'x')).error().code(),
            ErrorCode::kInvalidArgument);
}

TEST_F(TpmTest, PersistentObjectsAreReplacedAndReloaded) {
  constexpr uint32_t kHandle = 0x81000101;
  auto missing = tpm_->LoadPersistent(kHandle);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code(), ErrorCode::kNotFound) << missing.error().ToString();

  std::string srk_name, ek_name;
  {
    TpmKey srk = Must(tpm_->CreateSrk());
    srk_name = PublicOf(srk).name;
    Status st = tpm_->MakePersistent(srk, kHandle);
    ASSERT_TRUE(st.ok()) << st.error().ToString();
  }
  {
    TpmKey loaded = Must(tpm_->LoadPersistent(kHandle));
    EXPECT_EQ(HexEncode(PublicOf(loaded).name), HexEncode(srk_name));
  }
  {
    TpmKey ek = Must(tpm_->CreateEk(KeyAlg::kEccP256));
    ek_name = PublicOf(ek).name;
    Status st = tpm_->MakePersistent(ek, kHandle);  // replaces the SRK
    ASSERT_TRUE(st.ok()) << st.error().ToString();
  }
  // A persistent TpmKey going out of scope must not evict or flush the object.
  for (int i = 0; i < 2; ++i) {
    TpmKey loaded = Must(tpm_->LoadPersistent(kHandle));
    EXPECT_EQ(HexEncode(PublicOf(loaded).name), HexEncode(ek_name));
  }
  CommandResult r = Tpm2Tool({"tpm2_getcap", "handles-persistent"});
  EXPECT_NE(r.output.find("0x81000101"), std::string::npos) << r.output;
  EXPECT_EQ(tpm_->MakePersistent(Must(tpm_->CreateSrk()), 0x80000001).error().code(), ErrorCode::kInvalidArgument);
}

TEST_F(TpmTest, KeyBlobsSurviveAndForeignBlobsAreRefused) {
  TpmKeyBlob blob;
  {
    TpmKey srk = Must(tpm_->CreateSrk());
    auto created = tpm_->CreateKey(srk, KeyRole::kSigning, SecretBytes());
    ASSERT_TRUE(created.ok());
    blob = *created;
  }
  TpmKey srk = Must(tpm_->CreateSrk());  // re-derived: the same SRK
  auto key = tpm_->LoadKey(srk, blob);
  ASSERT_TRUE(key.ok()) << key.error().ToString();
  TpmKeyBlob tampered = blob;
  tampered.tpm2b_private[tampered.tpm2b_private.size() / 2] ^= 0x01;
  auto refused = tpm_->LoadKey(srk, tampered);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message().find("corrupt"), std::string::npos) << refused.error().message();
  TpmKeyBlob truncated = blob;
  truncated.tpm2b_public.pop_back();
  EXPECT_EQ(tpm_->LoadKey(srk, truncated).error().code(), ErrorCode::kDataLoss);
}

// ---- Over a socket: the provisioning swtpm ------------------------------------------------

class ProvisioningSwtpmTest : public ::testing::Test {
 protected:
  ProvisioningSwtpmOptions Options() {
    ProvisioningSwtpmOptions options;
    options.tpm_state_dir = dir_.path() + "/vtpm";
    options.log_path = dir_.path() + "/swtpm.log";
    options.state_key = &state_key_;
    options.migration_key = &migration_key_;
    options.label = "vTPM of test VM 1234";
    return options;
  }

  TempDir dir_;
  SecretBytes state_key_ = std::move(RandomSecret(32)).value();
  SecretBytes migration_key_ = std::move(RandomSecret(32)).value();
};

TEST_F(ProvisioningSwtpmTest, ProvisionsThroughTheDataSocketAndPersists) {
  const std::string cert = RandomBytes(1200);
  std::string ek_spki;
  int pid = 0;
  {
    auto swtpm = ProvisioningSwtpm::Start(Options());
    ASSERT_TRUE(swtpm.ok()) << swtpm.error().ToString();
    pid = (*swtpm)->pid();
    Tpm& tpm = (*swtpm)->tpm();
    EXPECT_NE(tpm.Describe().find("vTPM of test VM 1234"), std::string::npos) << tpm.Describe();
    {
      auto ek = tpm.CreateEk(KeyAlg::kEccP256);
      ASSERT_TRUE(ek.ok()) << ek.error().ToString();
      auto pub = tpm.ReadPublic(*ek);
      ASSERT_TRUE(pub.ok()) << pub.error().ToString();
      ek_spki = pub->spki_der;
    }
    Status written = tpm.WriteNvCertificate(kEccEkCertIndex, cert);
    ASSERT_TRUE(written.ok()) << written.error().ToString();
    Status down = (*swtpm)->Shutdown();
    ASSERT_TRUE(down.ok()) << down.error().ToString();
    EXPECT_FALSE(ProcessAlive(pid));
  }
  // Encrypted at rest: the certificate is in the state, but not in clear.
  auto state = ReadFile(dir_.path() + "/vtpm/tpm2-00.permall");
  ASSERT_TRUE(state.ok()) << state.error().ToString();
  EXPECT_EQ(state->find(cert.substr(0, 64)), std::string::npos);

  // The same state and keys: same seeds (same EK), same certificate.
  auto again = ProvisioningSwtpm::Start(Options());
  ASSERT_TRUE(again.ok()) << again.error().ToString();
  Tpm& tpm = (*again)->tpm();
  auto read = tpm.ReadNv(kEccEkCertIndex);
  ASSERT_TRUE(read.ok()) << read.error().ToString();
  EXPECT_EQ(HexEncode(*read), HexEncode(cert));
  {
    auto ek = tpm.CreateEk(KeyAlg::kEccP256);
    ASSERT_TRUE(ek.ok()) << ek.error().ToString();
    EXPECT_EQ(HexEncode(tpm.ReadPublic(*ek)->spki_der), HexEncode(ek_spki));
  }
  EXPECT_TRUE((*again)->Shutdown().ok());
}

TEST_F(ProvisioningSwtpmTest, WrongStateKeyIsRefused) {
  {
    auto swtpm = ProvisioningSwtpm::Start(Options());
    ASSERT_TRUE(swtpm.ok()) << swtpm.error().ToString();
    ASSERT_TRUE((*swtpm)->tpm().WriteNvCertificate(kEccEkCertIndex, "cert").ok());
    ASSERT_TRUE((*swtpm)->Shutdown().ok());
  }
  SecretBytes wrong = std::move(RandomSecret(32)).value();
  ProvisioningSwtpmOptions options = Options();
  options.state_key = &wrong;
  auto swtpm = ProvisioningSwtpm::Start(options);
  ASSERT_FALSE(swtpm.ok()) << "swtpm started on a state encrypted with another key";
  EXPECT_EQ(swtpm.error().code(), ErrorCode::kUnavailable) << swtpm.error().ToString();
  EXPECT_NE(swtpm.error().message().find("vTPM of test VM 1234"), std::string::npos) << swtpm.error().message();
  EXPECT_NE(swtpm.error().message().find("swtpm.log"), std::string::npos) << swtpm.error().message();
  std::cerr << "refused with: " << swtpm.error().message() << "\n";
}

// Control for the encryption check above: without a state key the certificate is in clear.
TEST_F(ProvisioningSwtpmTest, WithoutAStateKeyTheStateIsPlaintext) {
  ProvisioningSwtpmOptions options = Options();
  options.state_key = nullptr;
  options.migration_key = nullptr;
  const std::string cert = RandomBytes(300);
  auto swtpm = ProvisioningSwtpm::Start(options);
  ASSERT_TRUE(swtpm.ok()) << swtpm.error().ToString();
  ASSERT_TRUE((*swtpm)->tpm().WriteNvCertificate(kEccEkCertIndex, cert).ok());
  ASSERT_TRUE((*swtpm)->Shutdown().ok());
  auto state = ReadFile(dir_.path() + "/vtpm/tpm2-00.permall");
  ASSERT_TRUE(state.ok()) << state.error().ToString();
  EXPECT_NE(state->find(cert.substr(0, 64)), std::string::npos);
}

TEST_F(ProvisioningSwtpmTest, RunsAsTheGivenUser) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to switch users";
  constexpr uid_t kNobody = 65534;
  // The test directory is 0700 root; swtpm as nobody must be able to reach its state below it.
  ASSERT_EQ(chmod(dir_.path().c_str(), 0711), 0);
  ProvisioningSwtpmOptions options = Options();
  options.uid = kNobody;
  options.gid = kNobody;
  auto swtpm = ProvisioningSwtpm::Start(options);
  ASSERT_TRUE(swtpm.ok()) << swtpm.error().ToString();
  auto status = ReadFile("/proc/" + std::to_string((*swtpm)->pid()) + "/status");
  ASSERT_TRUE(status.ok());
  EXPECT_NE(status->find("Uid:\t65534\t65534"), std::string::npos) << *status;
  ASSERT_TRUE((*swtpm)->tpm().WriteNvCertificate(kEccEkCertIndex, "cert").ok());
  ASSERT_TRUE((*swtpm)->Shutdown().ok());
  struct stat st {};
  ASSERT_EQ(stat((dir_.path() + "/vtpm/tpm2-00.permall").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kNobody);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(ProvisioningSwtpmTest, BadKeysAndPathsAreRefusedBeforeStarting) {
  SecretBytes short_key = std::move(RandomSecret(16)).value();
  ProvisioningSwtpmOptions options = Options();
  options.state_key = &short_key;
  auto swtpm = ProvisioningSwtpm::Start(options);
  ASSERT_FALSE(swtpm.ok());
  EXPECT_EQ(swtpm.error().code(), ErrorCode::kInvalidArgument) << swtpm.error().ToString();
  options = Options();
  options.tpm_state_dir = dir_.path() + "/a,b";
  EXPECT_EQ(ProvisioningSwtpm::Start(options).error().code(), ErrorCode::kInvalidArgument);
  options = Options();
  options.swtpm_path = "/nonexistent/swtpm";
  EXPECT_FALSE(ProvisioningSwtpm::Start(options).ok());
}

// ---- The stream TCTI against peers that misbehave ----------------------------------------

TEST(StreamTpmTest, PeerThatHangsUpIsUnavailable) {
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  close(pair[1]);
  auto tpm = Tpm::OpenStream(UniqueFd(pair[0]), "a vanished vTPM");
  ASSERT_FALSE(tpm.ok());
  EXPECT_EQ(tpm.error().code(), ErrorCode::kUnavailable) << tpm.error().ToString();
  EXPECT_NE(tpm.error().message().find("a vanished vTPM"), std::string::npos);
}

TEST(StreamTpmTest, OversizedResponseIsRefused) {
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  UniqueFd peer(pair[1]);
  // A response header claiming 4 GiB, waiting in the socket before the first command.
  const uint8_t header[10] = {0x80, 0x01, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0};
  ASSERT_EQ(write(peer.get(), header, sizeof header), static_cast<ssize_t>(sizeof header));
  auto tpm = Tpm::OpenStream(UniqueFd(pair[0]), "a hostile vTPM");
  ASSERT_FALSE(tpm.ok());
  EXPECT_NE(tpm.error().code(), ErrorCode::kInternal) << tpm.error().ToString();
}

}  // namespace
}  // namespace vtm
