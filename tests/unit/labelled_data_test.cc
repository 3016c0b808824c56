// Unit tests of labelled signed data with software keys: the label format's parser (its
// errors name the line and the problem), and VerifyLabelledData over CMS made here with
// OpenSSL for an IK certificate issued by vtm_ca: chain, CRL, signature, IK-ness, label vs
// signer and the verifier's expectations. The guest-made (vTPM-signed) case is in the e2e test.
#include "vtm/labelled_data.h"

#include <gtest/gtest.h>
#include <openssl/cms.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <ctime>
#include <string>

#include "test_env.h"
#include "vtm/x509.h"

namespace vtm::tc {
namespace {

constexpr char kVm[] = "6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb";
constexpr char kOtherVm[] = "0b7c2a4e-5d61-4f3a-9e8b-1c2d3e4f5a6b";

std::string Content(const std::string& extra_label = "", const std::string& data = "payload") {
  return std::string(kLabelMagic) + "\nvm: " + kVm + "\nservice: api\nik-cert-sha256: " + std::string(64, 'a') +
         "\ncreated: 1700000000\n" + extra_label + "\n" + data;
}

TEST(LabelParse, RoundTrip) {
  LabelledContent c;
  c.label = {kVm, "api", std::string(64, 'b'), 1700000000, "0a0b", {{"pcr.sha256.10", "00ff"}, {"verdict", "ok"}}};
  c.data = std::string("binary\0\n\ndata", 13);
  auto parsed = ParseLabelledContent(SerializeLabelledContent(c));
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  EXPECT_EQ(parsed->label.vm_uuid, kVm);
  EXPECT_EQ(parsed->label.service, "api");
  EXPECT_EQ(parsed->label.created, 1700000000);
  EXPECT_EQ(parsed->label.nonce, "0a0b");
  EXPECT_EQ(parsed->label.environment, c.label.environment);
  EXPECT_EQ(parsed->data, c.data);
}

TEST(LabelParse, RefusesMalformedLabelsWithReason) {
  struct Case {
    std::string content, reason;
  } cases[] = {
      {"no label at all", "no blank line ends a label"},
      {"vtm-labelled-data/2\nvm: x\n\ndata", "line 1: expected 'vtm-labelled-data/1'"},
      {Content("colour: red\n"), "line 6: unknown field 'colour'"},
      {Content("vm: other\n"), "field 'vm' appears twice"},
      {Content("nonce: 0A\n"), "nonce is not 1 to 64 bytes of lower-case hex"},
      {Content("nonce: abc\n"), "nonce is not"},
      {Content("env.Bad_Name: 1\n"), "bad environment field name"},
      {Content("env.x: a\tb\n"), "control characters"},
      {Content("novalue\n"), "expected 'name: value'"},
      {std::string(kLabelMagic) + "\nservice: a\nik-cert-sha256: " + std::string(64, 'a') + "\ncreated: 1\n\nd",
       "names no VM"},
      {std::string(kLabelMagic) + "\nvm: v\nservice: a\nik-cert-sha256: 12\ncreated: 1\n\nd", "ik-cert-sha256 is not"},
      {std::string(kLabelMagic) + "\nvm: v\nservice: a\nik-cert-sha256: " + std::string(64, 'a') + "\ncreated: -1\n\nd",
       "created is not a number"},
  };
  for (const auto& c : cases) {
    auto r = ParseLabelledContent(c.content);
    ASSERT_FALSE(r.ok()) << c.content;
    EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(r.error().message().find(c.reason), std::string::npos) << r.error().message();
  }
}

// A software host CA issuing an IK (and an AK) certificate for a software key.
class LabelledDataVerify : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ca = ca::SoftwareSigner::Generate();
    ASSERT_TRUE(ca.ok());
    ca_ = std::move(*ca);
    ca::CaCertRequest req;
    req.common_name = "vtm host CA test";
    req.validity = {std::time(nullptr) - 60, 0};
    auto ca_cert = ca::CreateSelfSignedCaCertificate(*ca_, req);
    ASSERT_TRUE(ca_cert.ok()) << ca_cert.error().ToString();
    ca_der_ = *ca_cert;
    ik_key_ = Generate();
    ik_der_ = Issue(ik_key_, kVm, "api", false, 10);
  }
  void TearDown() override { EVP_PKEY_free(ik_key_); }

  static EVP_PKEY* Generate() { return EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"); }
  std::string Issue(EVP_PKEY* key, const std::string& vm, const std::string& service, bool ak, uint64_t serial) {
    unsigned char* spki = nullptr;
    int n = i2d_PUBKEY(key, &spki);
    ca::IdentityCertRequest r{std::string(reinterpret_cast<char*>(spki), static_cast<size_t>(n)), vm, service, ak,
                              serial, {std::time(nullptr) - 60, 0}};
    OPENSSL_free(spki);
    auto cert = ca::IssueIdentityCertificate(*ca_, ca_der_, r);
    EXPECT_TRUE(cert.ok()) << cert.error().ToString();
    return cert.ok() ? *cert : "";
  }
  static std::string Sha256Hex(const std::string& der) {
    unsigned char d[32];
    unsigned int len = 0;
    EVP_Digest(der.data(), der.size(), d, &len, EVP_sha256(), nullptr);
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned i = 0; i < len; ++i) {
      out += hex[d[i] >> 4];
      out += hex[d[i] & 15];
    }
    return out;
  }
  // CMS SignedData as `openssl cms -sign -binary -nodetach` makes it.
  static std::string Sign(const std::string& content, EVP_PKEY* key, const std::string& cert_der) {
    const auto* p = reinterpret_cast<const unsigned char*>(cert_der.data());
    X509* cert = d2i_X509(nullptr, &p, static_cast<long>(cert_der.size()));
    BIO* in = BIO_new_mem_buf(content.data(), static_cast<int>(content.size()));
    CMS_ContentInfo* cms = CMS_sign(cert, key, nullptr, in, CMS_BINARY);
    BIO* out = BIO_new(BIO_s_mem());
    EXPECT_EQ(i2d_CMS_bio(out, cms), 1);
    char* data = nullptr;
    long n = BIO_get_mem_data(out, &data);
    std::string der(data, static_cast<size_t>(n));
    BIO_free(out);
    BIO_free(in);
    CMS_ContentInfo_free(cms);
    X509_free(cert);
    return der;
  }
  std::string Label(const std::string& cert_der, const std::string& vm = kVm, const std::string& nonce = "") {
    LabelledContent c;
    c.label = {vm, "api", Sha256Hex(cert_der), 1700000000, nonce, {{"pcr.sha256.10", std::string(64, '0')}}};
    c.data = "reading 42\n";
    return SerializeLabelledContent(c);
  }
  SignedDataExpectation Expect() const {
    SignedDataExpectation e;
    e.trusted_ca_pem = ca::DerToPem(ca_der_);
    auto crl = ca::CreateCrl(*ca_, ca_der_, {}, 1, std::time(nullptr) - 60, std::time(nullptr) + 3600);
    EXPECT_TRUE(crl.ok());
    e.crls = {*crl};
    e.vm_uuid = kVm;
    e.service = "api";
    return e;
  }
  void ExpectRefused(const std::string& cms, const SignedDataExpectation& e, ErrorCode code, const std::string& reason) {
    auto r = VerifyLabelledData(cms, e);
    ASSERT_FALSE(r.ok()) << "accepted; expected: " << reason;
    EXPECT_EQ(r.error().code(), code) << r.error().ToString();
    EXPECT_NE(r.error().message().find(reason), std::string::npos) << r.error().ToString();
  }

  std::unique_ptr<ca::SoftwareSigner> ca_;
  std::string ca_der_;
  EVP_PKEY* ik_key_ = nullptr;
  std::string ik_der_;
};

TEST_F(LabelledDataVerify, AcceptsDataSignedByTheIkItNames) {
  auto v = VerifyLabelledData(Sign(Label(ik_der_, kVm, "0a0b"), ik_key_, ik_der_), [&] {
    auto e = Expect();
    e.nonce = "0A0B";
    return e;
  }());
  ASSERT_TRUE(v.ok()) << v.error().ToString();
  EXPECT_EQ(v->content.data, "reading 42\n");
  EXPECT_EQ(v->signer_certificate_der, ik_der_);
}

TEST_F(LabelledDataVerify, RefusesTamperingForgeryRevocationAndWrongExpectations) {
  const std::string good = Sign(Label(ik_der_), ik_key_, ik_der_);
  std::string flipped = good;
  flipped[flipped.find("reading 42") + 3] ^= 0x04;
  ExpectRefused(flipped, Expect(), ErrorCode::kDataLoss, "the signature does not verify");
  ExpectRefused(good.substr(0, good.size() / 2), Expect(), ErrorCode::kInvalidArgument, "not a DER CMS structure");
  ExpectRefused(Sign(Label(ik_der_, kOtherVm), ik_key_, ik_der_), Expect(), ErrorCode::kDataLoss,
                "the label names VM " + std::string(kOtherVm));
  std::string other_cert = Issue(ik_key_, kVm, "api", false, 11);
  ExpectRefused(Sign(Label(other_cert), ik_key_, ik_der_), Expect(), ErrorCode::kDataLoss,
                "the label names another IK certificate");
  // Another VM's IK signed it.
  EVP_PKEY* other_key = Generate();
  std::string other_vm_cert = Issue(other_key, kOtherVm, "api", false, 12);
  ExpectRefused(Sign(Label(other_vm_cert, kOtherVm), other_key, other_vm_cert), Expect(), ErrorCode::kPermissionDenied,
                "not the expected VM " + std::string(kVm));
  // The AK (restricted, no TLS EKU) is not the identity that signs data.
  std::string ak_cert = Issue(other_key, kVm, "api", true, 13);
  ExpectRefused(Sign(Label(ak_cert), other_key, ak_cert), Expect(), ErrorCode::kPermissionDenied,
                "not a vTPM IK certificate");
  EVP_PKEY_free(other_key);
  // Replay: a nonce that is not the verifier's.
  auto e = Expect();
  e.nonce = "ffff";
  ExpectRefused(good, e, ErrorCode::kPermissionDenied, "carries no nonce");
  // Revoked by the CA's CRL.
  auto crl = ca::CreateCrl(*ca_, ca_der_, {{10, std::time(nullptr) - 10}}, 2, std::time(nullptr) - 60,
                           std::time(nullptr) + 3600);
  ASSERT_TRUE(crl.ok());
  e = Expect();
  e.crls = {*crl};
  ExpectRefused(good, e, ErrorCode::kPermissionDenied, "is revoked");
  // No CRL at all is a configuration error unless asked for.
  e = Expect();
  e.crls.clear();
  ExpectRefused(good, e, ErrorCode::kInvalidArgument, "no CRL given");
  e.allow_missing_crl = true;
  EXPECT_TRUE(VerifyLabelledData(good, e).ok());
  // A CA that is not trusted.
  auto rogue = ca::SoftwareSigner::Generate();
  ASSERT_TRUE(rogue.ok());
  ca::CaCertRequest req;
  req.common_name = "rogue";
  auto rogue_cert = ca::CreateSelfSignedCaCertificate(**rogue, req);
  ASSERT_TRUE(rogue_cert.ok());
  e = Expect();
  e.trusted_ca_pem = ca::DerToPem(*rogue_cert);
  e.crls.clear();
  e.allow_missing_crl = true;
  ExpectRefused(good, e, ErrorCode::kPermissionDenied, "does not chain to a trusted CA");
}

}  // namespace
}  // namespace vtm::tc
