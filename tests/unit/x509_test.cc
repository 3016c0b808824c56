// Unit tests of vtm_ca with a software CA key: the certificate profiles checked by the real
// `openssl` command line (verify, x509 -text, req -verify, crl, verify -crl_check), certify
// evidence built in software with tss2-mu, and refusal of malformed input.
#include "vtm/x509.h"

#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <tss2/tss2_mu.h>

#include <cstring>
#include <ctime>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "software_tpm_key.h"
#include "test_env.h"

namespace vtm::ca {
namespace {

using vtm::testing::RunCommand;
using vtm::testing::Sha256;
using vtm::testing::TempDir;

constexpr char kVm[] = "6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb";

struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

Pkey NewKey(bool rsa) {
  return Pkey(rsa ? EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048})
                  : EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
}

std::string Spki(EVP_PKEY* key) {
  unsigned char* buf = nullptr;
  const int len = i2d_PUBKEY(key, &buf);
  std::string out(reinterpret_cast<char*>(buf), static_cast<size_t>(len > 0 ? len : 0));
  OPENSSL_free(buf);
  return out;
}

Pkey FromSpki(const std::string& spki) {
  const auto* p = reinterpret_cast<const unsigned char*>(spki.data());
  return Pkey(d2i_PUBKEY(nullptr, &p, static_cast<long>(spki.size())));
}

std::string WriteFile(const TempDir& dir, const std::string& name, const std::string& data) {
  std::string path = dir.path() + "/" + name;
  std::ofstream(path, std::ios::binary) << data;
  return path;
}

Validity OneYear() {
  const std::time_t now = std::time(nullptr);
  return Validity{now - 60, now + std::time_t{365} * 24 * 3600};
}

// ---- Certify evidence made in software, shaped exactly as a TPM makes it --------------------

constexpr TPMA_OBJECT kResidentKey = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                                     TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_SIGN_ENCRYPT;
constexpr TPMA_OBJECT kAkAttributes = kResidentKey | TPMA_OBJECT_RESTRICTED;

std::string MarshalEccPublic(EVP_PKEY* key, TPMA_OBJECT attributes) {
  return vtm::testing::MarshalEccP256Public(key, attributes);
}

std::string TpmName(const std::string& tpm2b_public) {
  return std::string("\x00\x0b", 2) + Sha256(tpm2b_public.substr(2));
}

std::string MarshalCertifyAttest(const std::string& certified_name) {
  TPMS_ATTEST a{};
  a.magic = TPM2_GENERATED_VALUE;
  a.type = TPM2_ST_ATTEST_CERTIFY;
  a.firmwareVersion = 0x20191023;
  a.attested.certify.name.size = static_cast<UINT16>(certified_name.size());
  std::memcpy(a.attested.certify.name.name, certified_name.data(), certified_name.size());
  a.attested.certify.qualifiedName = a.attested.certify.name;
  uint8_t buf[sizeof(TPMS_ATTEST)];
  size_t off = 0;
  EXPECT_EQ(Tss2_MU_TPMS_ATTEST_Marshal(&a, buf, sizeof buf, &off), TSS2_RC_SUCCESS);
  return std::string(reinterpret_cast<char*>(buf), off);
}

std::string SignAsTpm(EVP_PKEY* ak, const std::string& data) {
  const std::string digest = Sha256(data);
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_pkey(nullptr, ak, nullptr);
  EXPECT_EQ(EVP_PKEY_sign_init(ctx), 1);
  unsigned char der[128];
  size_t der_len = sizeof der;
  EXPECT_EQ(EVP_PKEY_sign(ctx, der, &der_len, reinterpret_cast<const unsigned char*>(digest.data()), digest.size()), 1);
  EVP_PKEY_CTX_free(ctx);
  const unsigned char* p = der;
  ECDSA_SIG* sig = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der_len));
  TPMT_SIGNATURE t{};
  t.sigAlg = TPM2_ALG_ECDSA;
  t.signature.ecdsa.hash = TPM2_ALG_SHA256;
  t.signature.ecdsa.signatureR.size =
      static_cast<UINT16>(BN_bn2binpad(ECDSA_SIG_get0_r(sig), t.signature.ecdsa.signatureR.buffer, 32));
  t.signature.ecdsa.signatureS.size =
      static_cast<UINT16>(BN_bn2binpad(ECDSA_SIG_get0_s(sig), t.signature.ecdsa.signatureS.buffer, 32));
  ECDSA_SIG_free(sig);
  uint8_t buf[sizeof(TPMT_SIGNATURE)];
  size_t off = 0;
  EXPECT_EQ(Tss2_MU_TPMT_SIGNATURE_Marshal(&t, buf, sizeof buf, &off), TSS2_RC_SUCCESS);
  return std::string(reinterpret_cast<char*>(buf), off);
}

// Evidence that `key` is certified by `ak`, as TPM2_Certify would produce it.
CertifyEvidence SoftwareEvidence(EVP_PKEY* key, EVP_PKEY* ak, TPMA_OBJECT key_attributes = kResidentKey,
                                 TPMA_OBJECT ak_attributes = kAkAttributes) {
  CertifyEvidence e;
  e.key_tpm2b_public = MarshalEccPublic(key, key_attributes);
  e.ak_tpm2b_public = MarshalEccPublic(ak, ak_attributes);
  e.attest = MarshalCertifyAttest(TpmName(e.key_tpm2b_public));
  e.signature = SignAsTpm(ak, e.attest);
  return e;
}

// ---- Fixture: a software CA with its self-signed certificate -----------------------------------

class X509Test : public ::testing::Test {
 protected:
  void SetUp() override {
    auto signer = SoftwareSigner::Generate();
    ASSERT_TRUE(signer.ok()) << signer.error().ToString();
    ca_key_ = std::move(signer).value();
    ca_public_ = FromSpki(ca_key_->PublicKeySpki());
    ak_ = NewKey(false);
    evidence_ = SoftwareEvidence(ca_public_.get(), ak_.get());
    CaCertRequest req;
    req.common_name = "vtm host CA test-host";
    req.validity = OneYear();
    req.evidence = evidence_;
    auto ca = CreateSelfSignedCaCertificate(*ca_key_, req);
    ASSERT_TRUE(ca.ok()) << ca.error().ToString();
    ca_der_ = *ca;
    ca_pem_path_ = WriteFile(dir_, "ca.pem", DerToPem(ca_der_));
  }

  std::string IssueIdentity(bool ak, uint64_t serial, const std::string& service = "web") {
    IdentityCertRequest req;
    req.spki_der = Spki(NewKey(false).get());
    req.vm_uuid = kVm;
    req.service = service;
    req.attestation_key = ak;
    req.serial = serial;
    req.validity = OneYear();
    auto cert = IssueIdentityCertificate(*ca_key_, ca_der_, req);
    EXPECT_TRUE(cert.ok()) << cert.error().ToString();
    return cert.ok() ? *cert : std::string();
  }

  // `openssl verify` with the strict RFC 5280 profile checks of OpenSSL 3.
  vtm::testing::CommandResult OpensslVerify(const std::string& cert_path, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv{"openssl", "verify", "-x509_strict", "-CAfile", ca_pem_path_};
    argv.insert(argv.end(), extra.begin(), extra.end());
    argv.push_back(cert_path);
    return RunCommand(argv);
  }

  TempDir dir_;
  std::unique_ptr<SoftwareSigner> ca_key_;
  Pkey ca_public_;
  Pkey ak_;
  CertifyEvidence evidence_;
  std::string ca_der_;
  std::string ca_pem_path_;
};

TEST(SoftwareSignerTest, PrivateKeyRoundTripsAndSigns) {
  auto a = SoftwareSigner::Generate();
  ASSERT_TRUE(a.ok());
  auto b = SoftwareSigner::FromPrivateKeyDer((*a)->PrivateKeyDer());
  ASSERT_TRUE(b.ok()) << b.error().ToString();
  EXPECT_EQ((*a)->PublicKeySpki(), (*b)->PublicKeySpki());

  const std::string digest = Sha256("to be signed");
  auto sig = (*b)->SignDigest(digest);
  ASSERT_TRUE(sig.ok());
  Pkey pub = FromSpki((*a)->PublicKeySpki());
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_pkey(nullptr, pub.get(), nullptr);
  ASSERT_EQ(EVP_PKEY_verify_init(ctx), 1);
  EXPECT_EQ(EVP_PKEY_verify(ctx, reinterpret_cast<const unsigned char*>(sig->data()), sig->size(),
                            reinterpret_cast<const unsigned char*>(digest.data()), digest.size()),
            1);
  EVP_PKEY_CTX_free(ctx);

  EXPECT_FALSE((*a)->SignDigest("short").ok());
  auto garbage = SoftwareSigner::FromPrivateKeyDer(SecretBytes(reinterpret_cast<const uint8_t*>("junk"), 4));
  ASSERT_FALSE(garbage.ok());
  EXPECT_EQ(garbage.error().code(), ErrorCode::kDataLoss);

  // A CA key must be P-256: an RSA private key is refused.
  Pkey rsa = NewKey(true);
  unsigned char* der = nullptr;
  const int len = i2d_PrivateKey(rsa.get(), &der);
  auto not_p256 = SoftwareSigner::FromPrivateKeyDer(SecretBytes(der, static_cast<size_t>(len)));
  OPENSSL_clear_free(der, static_cast<size_t>(len));
  ASSERT_FALSE(not_p256.ok());
  EXPECT_NE(not_p256.error().message().find("P-256"), std::string::npos);
}

TEST_F(X509Test, CaCertificateIsSelfSignedCaWithEvidence) {
  auto info = ParseCertificate(ca_der_);
  ASSERT_TRUE(info.ok()) << info.error().ToString();
  EXPECT_TRUE(info->is_ca);
  EXPECT_EQ(info->subject, "CN=vtm host CA test-host,O=vtm");
  EXPECT_EQ(info->subject, info->issuer);
  EXPECT_EQ(info->serial, 1u);
  EXPECT_EQ(info->serial_hex, "01");
  EXPECT_EQ(info->spki_der, ca_key_->PublicKeySpki());

  auto verify = OpensslVerify(ca_pem_path_);
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  auto text = RunCommand({"openssl", "x509", "-noout", "-text", "-in", ca_pem_path_});
  EXPECT_NE(text.output.find("CA:TRUE, pathlen:0"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("Certificate Sign, CRL Sign"), std::string::npos);
  EXPECT_NE(text.output.find(kCertifyEvidenceOid), std::string::npos);
  EXPECT_NE(text.output.find("ecdsa-with-SHA256"), std::string::npos);

  auto extracted = ExtractCertifyEvidence(DerToPem(ca_der_));
  ASSERT_TRUE(extracted.ok()) << extracted.error().ToString();
  EXPECT_EQ(extracted->attest, evidence_.attest);
  EXPECT_EQ(extracted->signature, evidence_.signature);
  EXPECT_EQ(extracted->key_tpm2b_public, evidence_.key_tpm2b_public);
  EXPECT_EQ(extracted->ak_tpm2b_public, evidence_.ak_tpm2b_public);
  auto verified = VerifyCertifyEvidence(ca_der_, *extracted);
  EXPECT_TRUE(verified.ok()) << verified.error().ToString();
  EXPECT_TRUE(VerifySignedBy(ca_der_, ca_der_).ok());
}

TEST_F(X509Test, CaCertificateWithoutEvidenceHasNoExtension) {
  CaCertRequest req;
  req.common_name = "vtm host CA sealed";
  req.validity = OneYear();
  auto ca = CreateSelfSignedCaCertificate(*ca_key_, req);
  ASSERT_TRUE(ca.ok()) << ca.error().ToString();
  auto extracted = ExtractCertifyEvidence(*ca);
  ASSERT_FALSE(extracted.ok());
  EXPECT_EQ(extracted.error().code(), ErrorCode::kNotFound);

  // Half-filled or unparsable evidence is refused instead of being written into the CA certificate.
  req.evidence.attest = "not a TPMS_ATTEST";
  auto bad = CreateSelfSignedCaCertificate(*ca_key_, req);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("certify evidence"), std::string::npos) << bad.error().ToString();
}

TEST_F(X509Test, EkCertificatesFollowTheTcgProfile) {
  for (bool rsa : {false, true}) {
    SCOPED_TRACE(rsa ? "RSA EK" : "ECC EK");
    Pkey ek = NewKey(rsa);
    EkCertRequest req;
    req.ek_spki_der = Spki(ek.get());
    req.rsa = rsa;
    req.tpm_manufacturer = "id:00001014";
    req.tpm_model = "swtpm";
    req.tpm_version = "id:20191023";
    req.serial = rsa ? 11 : 10;
    req.validity = Validity{std::time(nullptr) - 60, 0};  // no well-defined expiry
    auto cert = IssueEkCertificate(*ca_key_, DerToPem(ca_der_), req);
    ASSERT_TRUE(cert.ok()) << cert.error().ToString();
    const std::string path = WriteFile(dir_, rsa ? "ek-rsa.pem" : "ek-ecc.pem", DerToPem(*cert));

    auto verify = OpensslVerify(path);
    EXPECT_EQ(verify.exit_code, 0) << verify.output;
    auto text = RunCommand({"openssl", "x509", "-noout", "-text", "-in", path});
    const std::string& t = text.output;
    EXPECT_NE(t.find("Subject: \n"), std::string::npos) << t;  // empty subject
    EXPECT_NE(t.find("X509v3 Subject Alternative Name: critical\n"
                     "                DirName:/2.23.133.2.1=id:00001014/2.23.133.2.2=swtpm/2.23.133.2.3=id:20191023"),
              std::string::npos)
        << t;
    EXPECT_NE(t.find("X509v3 Extended Key Usage: \n                2.23.133.8.1"), std::string::npos) << t;
    EXPECT_NE(t.find("X509v3 Key Usage: critical\n                " +
                     std::string(rsa ? "Key Encipherment" : "Key Agreement")),
              std::string::npos)
        << t;
    EXPECT_NE(t.find("X509v3 Basic Constraints: critical\n                CA:FALSE"), std::string::npos) << t;
    EXPECT_NE(t.find("Policy: X509v3 Any Policy"), std::string::npos) << t;
    EXPECT_NE(t.find("X509v3 Subject Directory Attributes"), std::string::npos) << t;
    EXPECT_NE(t.find("X509v3 Authority Key Identifier"), std::string::npos) << t;
    EXPECT_NE(t.find("X509v3 Subject Key Identifier"), std::string::npos) << t;
    EXPECT_NE(t.find("Not After : Dec 31 23:59:59 9999 GMT"), std::string::npos) << t;

    // TPMSpecification { "2.0", 0, 159 } under tcg-at-tpmSpecification, byte for byte.
    auto parsed = ParseCertificate(*cert);
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(parsed->subject, "");
    EXPECT_FALSE(parsed->is_ca);
    const std::string spec(
        "\x30\x19\x30\x17\x06\x05\x67\x81\x05\x02\x10\x31\x0e\x30\x0c\x0c\x03"
        "2.0"
        "\x02\x01\x00\x02\x02\x00\x9f",
        27);
    EXPECT_NE(cert->find(spec), std::string::npos);
  }

  // The key type must match what the request claims.
  EkCertRequest wrong;
  wrong.ek_spki_der = Spki(NewKey(false).get());
  wrong.rsa = true;
  wrong.tpm_manufacturer = wrong.tpm_model = wrong.tpm_version = "x";
  wrong.serial = 12;
  auto refused = IssueEkCertificate(*ca_key_, ca_der_, wrong);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::kInvalidArgument);
}

// swtpm_setup's certificate tool path: a key vtm did not create is certified under the one
// policy that says so, which openssl reads as the certificate's only policy.
TEST_F(X509Test, EkCertificateForAnUnprovisionedKeyCarriesOnlyThePolicyThatMarksIt) {
  EkCertRequest req;
  req.ek_spki_der = Spki(NewKey(false).get());
  req.tpm_manufacturer = "id:00001014";
  req.tpm_model = "swtpm";
  req.tpm_version = "id:20191023";
  req.serial = 13;
  auto provisioned = IssueEkCertificate(*ca_key_, ca_der_, req);
  req.unprovisioned_key = true;
  req.serial = 14;
  auto outside = IssueEkCertificate(*ca_key_, ca_der_, req);
  ASSERT_TRUE(provisioned.ok() && outside.ok());
  auto marked = [](const std::string& der) {
    auto x = attest::LoadCertificate(der);
    return x.ok() && attest::HasCertificatePolicy(x->get(), kUnprovisionedKeyPolicyOid);
  };
  EXPECT_FALSE(marked(*provisioned));
  EXPECT_TRUE(marked(*outside));
  const std::string path = WriteFile(dir_, "ek-outside.pem", DerToPem(*outside));
  EXPECT_EQ(OpensslVerify(path).exit_code, 0);  // still a valid certificate of this CA
  auto text = RunCommand({"openssl", "x509", "-noout", "-text", "-in", path});
  EXPECT_NE(text.output.find("Policy: 2.25.175342463645521248098509356622530514097"), std::string::npos)
      << text.output;
  EXPECT_EQ(text.output.find("Any Policy"), std::string::npos) << text.output;
}

// vtmd's network endpoints present these: verified by openssl as a TLS server and client
// certificate of the host CA; a host name that cannot be a URI/CN part, or an unknown purpose,
// is refused.
TEST_F(X509Test, HostTlsCertificatesServeAndClientAuthenticate) {
  HostTlsCertRequest req;
  req.spki_der = Spki(NewKey(false).get());
  req.host_name = "host-1.example";
  req.purpose = "attestation";
  req.serial = 0x8000000000000001ull;  // the top bit set: still a positive INTEGER
  req.validity = OneYear();
  auto cert = IssueHostTlsCertificate(*ca_key_, ca_der_, req);
  ASSERT_TRUE(cert.ok()) << cert.error().ToString();
  auto info = ParseCertificate(*cert);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->subject, "CN=host-1.example vtmd attestation,O=vtm");
  EXPECT_EQ(info->uris, std::vector<std::string>{"vtm:host:host-1.example"});
  EXPECT_EQ(info->serial, 0x8000000000000001ull);
  const std::string path = WriteFile(dir_, "endpoint.pem", DerToPem(*cert));
  EXPECT_EQ(OpensslVerify(path, {"-purpose", "sslserver"}).exit_code, 0);
  EXPECT_EQ(OpensslVerify(path, {"-purpose", "sslclient"}).exit_code, 0);
  for (const auto& [host, purpose] : {std::pair<std::string, std::string>{"bad/host", "attestation"},
                                      {"", "attestation"}, {std::string(65, 'h'), "attestation"},
                                      {"host-1", "anything"}}) {
    HostTlsCertRequest bad = req;
    bad.host_name = host;
    bad.purpose = purpose;
    auto refused = IssueHostTlsCertificate(*ca_key_, ca_der_, bad);
    ASSERT_FALSE(refused.ok()) << host << " " << purpose;
    EXPECT_EQ(refused.error().code(), ErrorCode::kInvalidArgument);
  }
}

TEST_F(X509Test, AkAndIkCertificatesNameTheVmAndService) {
  const std::string ak = IssueIdentity(true, 20);
  const std::string ik = IssueIdentity(false, 21);
  ASSERT_FALSE(ak.empty());
  ASSERT_FALSE(ik.empty());
  for (const auto& [der, role] : {std::pair{ak, "AK"}, std::pair{ik, "IK"}}) {
    auto info = ParseCertificate(der);
    ASSERT_TRUE(info.ok()) << info.error().ToString();
    EXPECT_EQ(info->subject, std::string("CN=") + kVm + " " + role + ",O=vtm");
    EXPECT_EQ(info->issuer, "CN=vtm host CA test-host,O=vtm");
    EXPECT_EQ(info->uris, (std::vector<std::string>{std::string("urn:uuid:") + kVm, "vtm:service:web"}));
    const std::string path = WriteFile(dir_, std::string(role) + ".pem", DerToPem(der));
    auto verify = OpensslVerify(path);
    EXPECT_EQ(verify.exit_code, 0) << verify.output;
    auto text = RunCommand({"openssl", "x509", "-noout", "-text", "-in", path});
    EXPECT_NE(text.output.find("X509v3 Key Usage: critical\n                Digital Signature\n"), std::string::npos)
        << text.output;
    const bool has_tls_eku =
        text.output.find("TLS Web Server Authentication, TLS Web Client Authentication") != std::string::npos;
    EXPECT_EQ(has_tls_eku, std::string(role) == "IK") << text.output;
    const bool has_ak_eku = text.output.find("X509v3 Extended Key Usage: \n                2.23.133.8.3") !=
                            std::string::npos;
    EXPECT_EQ(has_ak_eku, std::string(role) == "AK") << text.output;
    EXPECT_NE(text.output.find("X509v3 Subject Key Identifier"), std::string::npos);
    EXPECT_TRUE(VerifySignedBy(der, ca_der_).ok());
  }
  // The service is optional.
  auto no_service = ParseCertificate(IssueIdentity(false, 22, ""));
  ASSERT_TRUE(no_service.ok());
  EXPECT_EQ(no_service->uris, (std::vector<std::string>{std::string("urn:uuid:") + kVm}));

  IdentityCertRequest bad;
  bad.spki_der = Spki(NewKey(false).get());
  bad.vm_uuid = "not-a-uuid";
  bad.attestation_key = false;
  bad.serial = 23;
  EXPECT_FALSE(IssueIdentityCertificate(*ca_key_, ca_der_, bad).ok());
  bad.vm_uuid = kVm;
  bad.service = "has space";
  EXPECT_FALSE(IssueIdentityCertificate(*ca_key_, ca_der_, bad).ok());
  bad.service = "";
  bad.serial = 0;
  auto zero = IssueIdentityCertificate(*ca_key_, ca_der_, bad);
  ASSERT_FALSE(zero.ok());
  EXPECT_NE(zero.error().message().find("serial"), std::string::npos);
}

TEST_F(X509Test, CsrCarriesSubjectKeyAndEvidence) {
  CaCertRequest req;
  req.common_name = "vtm host CA test-host";
  req.evidence = evidence_;
  auto csr = CreateCaCsr(*ca_key_, req);
  ASSERT_TRUE(csr.ok()) << csr.error().ToString();
  const std::string path = WriteFile(dir_, "ca.csr", DerToPem(*csr, "CERTIFICATE REQUEST"));
  auto verify = RunCommand({"openssl", "req", "-verify", "-noout", "-in", path});
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  auto text = RunCommand({"openssl", "req", "-noout", "-text", "-in", path});
  EXPECT_NE(text.output.find("Subject: O = vtm, CN = vtm host CA test-host"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find(kCertifyEvidenceOid), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("CA:TRUE, pathlen:0"), std::string::npos) << text.output;
}

TEST_F(X509Test, CrlRevokesSerials) {
  const std::string ik = IssueIdentity(false, 31);
  const std::string other = IssueIdentity(false, 32);
  const std::time_t now = std::time(nullptr);
  auto crl =
      CreateCrl(*ca_key_, ca_der_, {RevokedCert{31, now - 30}, RevokedCert{99, now - 20}}, 7, now - 60, now + 86400);
  ASSERT_TRUE(crl.ok()) << crl.error().ToString();
  const std::string crl_path = WriteFile(dir_, "crl.pem", DerToPem(*crl, "X509 CRL"));

  auto check = RunCommand({"openssl", "crl", "-CAfile", ca_pem_path_, "-noout", "-in", crl_path});
  EXPECT_EQ(check.exit_code, 0) << check.output;
  EXPECT_NE(check.output.find("verify OK"), std::string::npos) << check.output;
  auto text = RunCommand({"openssl", "crl", "-noout", "-text", "-in", crl_path});
  EXPECT_NE(text.output.find("X509v3 CRL Number: \n                7"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("Serial Number: 1F"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("Version 2"), std::string::npos) << text.output;

  const std::string ik_path = WriteFile(dir_, "ik.pem", DerToPem(ik));
  const std::string other_path = WriteFile(dir_, "other.pem", DerToPem(other));
  auto revoked = OpensslVerify(ik_path, {"-crl_check", "-CRLfile", crl_path});
  EXPECT_NE(revoked.exit_code, 0) << revoked.output;
  EXPECT_NE(revoked.output.find("certificate revoked"), std::string::npos) << revoked.output;
  auto fine = OpensslVerify(other_path, {"-crl_check", "-CRLfile", crl_path});
  EXPECT_EQ(fine.exit_code, 0) << fine.output;

  EXPECT_FALSE(CreateCrl(*ca_key_, ca_der_, {}, 8, now, now - 1).ok());
}

TEST_F(X509Test, RefusesACaCertificateForAnotherKey) {
  auto other = SoftwareSigner::Generate();
  ASSERT_TRUE(other.ok());
  EkCertRequest req;
  req.ek_spki_der = Spki(NewKey(false).get());
  req.tpm_manufacturer = req.tpm_model = req.tpm_version = "x";
  req.serial = 40;
  auto cert = IssueEkCertificate(**other, ca_der_, req);
  ASSERT_FALSE(cert.ok());
  EXPECT_EQ(cert.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(cert.error().message().find("another key"), std::string::npos) << cert.error().ToString();
}

TEST_F(X509Test, EvidenceFailuresHaveDistinctMessages) {
  auto message = [&](const std::string& cert, const CertifyEvidence& e) {
    auto s = VerifyCertifyEvidence(cert, e);
    return s.ok() ? std::string("OK") : s.error().message();
  };
  EXPECT_EQ(message(ca_der_, evidence_), "OK");

  CertifyEvidence altered = evidence_;
  altered.attest.back() ^= 0x01;  // inside the qualified name: still parses
  EXPECT_NE(message(ca_der_, altered).find("signature over attest does not verify"), std::string::npos);

  Pkey other_ak = NewKey(false);
  CertifyEvidence wrong_ak = evidence_;
  wrong_ak.ak_tpm2b_public = MarshalEccPublic(other_ak.get(), kAkAttributes);
  EXPECT_NE(message(ca_der_, wrong_ak).find("signature over attest does not verify"), std::string::npos);

  Pkey other_key = NewKey(false);
  CertifyEvidence other_public = evidence_;
  other_public.key_tpm2b_public = MarshalEccPublic(other_key.get(), kResidentKey);
  EXPECT_NE(message(ca_der_, other_public).find("certified TPM name is not the name of keyPublic"), std::string::npos);

  // Valid evidence, but for a key that is not the certificate's.
  const std::string ik = IssueIdentity(false, 50);
  EXPECT_NE(message(ik, evidence_).find("not the certificate's public key"), std::string::npos);

  CertifyEvidence unrestricted = SoftwareEvidence(ca_public_.get(), ak_.get(), kResidentKey, kResidentKey);
  EXPECT_NE(message(ca_der_, unrestricted).find("not a restricted signing key"), std::string::npos);

  CertifyEvidence exportable =
      SoftwareEvidence(ca_public_.get(), ak_.get(), TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_SIGN_ENCRYPT);
  EXPECT_NE(message(ca_der_, exportable).find("not fixedTPM"), std::string::npos);

  CertifyEvidence not_certify = evidence_;
  TPMS_ATTEST quote{};
  quote.magic = TPM2_GENERATED_VALUE;
  quote.type = TPM2_ST_ATTEST_QUOTE;
  uint8_t buf[sizeof(TPMS_ATTEST)];
  size_t off = 0;
  ASSERT_EQ(Tss2_MU_TPMS_ATTEST_Marshal(&quote, buf, sizeof buf, &off), TSS2_RC_SUCCESS);
  not_certify.attest.assign(reinterpret_cast<char*>(buf), off);
  not_certify.signature = SignAsTpm(ak_.get(), not_certify.attest);
  EXPECT_NE(message(ca_der_, not_certify).find("not a TPM2_Certify"), std::string::npos);

  CertifyEvidence not_generated = evidence_;
  not_generated.attest[0] = 0x00;
  not_generated.signature = SignAsTpm(ak_.get(), not_generated.attest);
  EXPECT_NE(message(ca_der_, not_generated).find("not generated by a TPM"), std::string::npos);

  CertifyEvidence trailing = evidence_;
  trailing.attest += "x";
  EXPECT_NE(message(ca_der_, trailing).find("trailing bytes"), std::string::npos);
}

// A certificate signed with OpenSSL directly, carrying `ext_value` under the evidence OID:
// what another (buggy or hostile) issuer could hand us.
std::string CertWithRawEvidence(const std::string& ext_value) {
  Pkey key = NewKey(false);
  X509* x = X509_new();
  X509_set_version(x, X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 5);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, key.get());
  ASN1_OBJECT* oid = OBJ_txt2obj(kCertifyEvidenceOid, 1);
  ASN1_OCTET_STRING* value = ASN1_OCTET_STRING_new();
  ASN1_OCTET_STRING_set(value, reinterpret_cast<const unsigned char*>(ext_value.data()),
                        static_cast<int>(ext_value.size()));
  X509_EXTENSION* ext = X509_EXTENSION_create_by_OBJ(nullptr, oid, 0, value);
  X509_add_ext(x, ext, -1);
  X509_sign(x, key.get(), EVP_sha256());
  unsigned char* der = nullptr;
  const int len = i2d_X509(x, &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  X509_EXTENSION_free(ext);
  ASN1_OCTET_STRING_free(value);
  ASN1_OBJECT_free(oid);
  X509_free(x);
  return out;
}

TEST_F(X509Test, ParsesAFleetCaCertificateWithALongSerial) {
  const std::string key = dir_.path() + "/fleet.key";
  const std::string pem = dir_.path() + "/fleet.pem";
  auto made = RunCommand({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                          "-keyout", key, "-out", pem, "-subj", "/CN=fleet CA", "-days", "1", "-set_serial",
                          "0x0123456789abcdef0123456789abcdef"});
  ASSERT_EQ(made.exit_code, 0) << made.output;
  std::ifstream in(pem);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto info = ParseCertificate(text);
  ASSERT_TRUE(info.ok()) << info.error().ToString();
  EXPECT_EQ(info->serial, 0u);
  EXPECT_EQ(info->serial_hex, "0123456789ABCDEF0123456789ABCDEF");
  EXPECT_EQ(info->subject, "CN=fleet CA");
  EXPECT_TRUE(info->is_ca);
}

TEST_F(X509Test, RefusesMalformedInputWithClearErrors) {
  auto expect_invalid = [](const std::string& input, const std::string& fragment) {
    auto r = ParseCertificate(input);
    ASSERT_FALSE(r.ok()) << "accepted: " << fragment;
    EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(r.error().message().find(fragment), std::string::npos) << r.error().message();
  };
  expect_invalid("", "empty");
  expect_invalid("-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n", "PEM");
  expect_invalid("hello, I am not a certificate", "neither a PEM nor a DER");
  expect_invalid(ca_der_.substr(0, ca_der_.size() - 10), "neither a PEM nor a DER");
  expect_invalid(ca_der_ + "zz", "followed by 2 unexpected bytes");

  // A corrupted certificate file: one flipped bit in the signature still parses but no longer verifies.
  std::string corrupted = ca_der_;
  corrupted[corrupted.size() - 5] ^= 0x01;
  auto signed_by = VerifySignedBy(corrupted, ca_der_);
  ASSERT_FALSE(signed_by.ok());
  EXPECT_NE(signed_by.error().message().find("does not verify"), std::string::npos);
  const std::string path = WriteFile(dir_, "corrupted.pem", DerToPem(corrupted));
  EXPECT_NE(RunCommand({"openssl", "verify", "-CAfile", ca_pem_path_, path}).exit_code, 0);

  // The evidence extension: trailing garbage, wrong version, empty field, truncated.
  auto evidence_error = [](const std::string& ext_value) {
    auto r = ExtractCertifyEvidence(CertWithRawEvidence(ext_value));
    return r.ok() ? std::string("OK") : r.error().message();
  };
  auto octets = [](const std::string& s) { return std::string(1, '\x04') + static_cast<char>(s.size()) + s; };
  auto sequence = [](const std::string& s) {
    std::string len = s.size() < 128   ? std::string(1, static_cast<char>(s.size()))
                      : s.size() < 256 ? std::string("\x81", 1) + static_cast<char>(s.size())
                                       : std::string("\x82", 1) + static_cast<char>(s.size() >> 8) +
                                             static_cast<char>(s.size() & 0xff);
    return std::string(1, '\x30') + len + s;
  };
  const std::string v1("\x02\x01\x01", 3);
  const std::string good = sequence(v1 + octets(evidence_.key_tpm2b_public) + octets(evidence_.attest) +
                                    octets(evidence_.signature) + octets(evidence_.ak_tpm2b_public));
  EXPECT_EQ(evidence_error(good), "OK");
  EXPECT_NE(evidence_error(good + "garbage").find("trailing bytes"), std::string::npos);
  EXPECT_NE(evidence_error(good.substr(0, good.size() - 3)).find("truncated or malformed"), std::string::npos);
  EXPECT_NE(
      evidence_error(sequence(std::string("\x02\x01\x02", 3) + octets("a") + octets("b") + octets("c") + octets("d")))
          .find("unsupported version 2"),
      std::string::npos);
  EXPECT_NE(evidence_error(sequence(v1 + octets("") + octets("b") + octets("c") + octets("d"))).find("empty"),
            std::string::npos);
  EXPECT_NE(
      evidence_error(sequence(v1 + octets("a") + octets("b") + octets("c") + octets("d"))).find("does not unmarshal"),
      std::string::npos);
  EXPECT_NE(evidence_error(sequence(v1 + octets("a"))).find("truncated"), std::string::npos);
}

}  // namespace
}  // namespace vtm::ca
