// SpkisOfCertificates: the public keys of a vTPM's four certificates, from the registry's
// records (DER) or the migration API's (PEM), and errors that name the kind at fault.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>
#include <string>
#include <vector>

#include "vtm/x509.h"
#include "vtpm_provisioner.h"

namespace vtm {
namespace {

struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};

// A fresh P-256 key's SPKI and a self-signed certificate (DER) for it.
struct KeyAndCertificate {
  std::string spki;
  std::string der;
};

KeyAndCertificate NewCertificate() {
  Pkey key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  EXPECT_NE(key, nullptr);
  std::unique_ptr<X509, X509Free> x(X509_new());
  X509_set_version(x.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 3600);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(x.get()), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("vtpm"), -1, -1, 0);
  X509_set_issuer_name(x.get(), X509_get_subject_name(x.get()));
  X509_set_pubkey(x.get(), key.get());
  EXPECT_GT(X509_sign(x.get(), key.get(), EVP_sha256()), 0);
  auto der = [](auto* object, auto encode) {
    unsigned char* buf = nullptr;
    const int len = encode(object, &buf);
    std::string out(reinterpret_cast<char*>(buf), static_cast<size_t>(len > 0 ? len : 0));
    OPENSSL_free(buf);
    return out;
  };
  return {der(key.get(), i2d_PUBKEY), der(x.get(), i2d_X509)};
}

TEST(SpkisOfCertificatesTest, OneOfEachKindInDerOrPem) {
  const KeyAndCertificate ek_ecc = NewCertificate(), ek_rsa = NewCertificate(), ak = NewCertificate(),
                          ik = NewCertificate(), other = NewCertificate();
  const std::vector<KindAndCertificate> certs = {
      {"ca", other.der},  // not a vTPM kind: passed over
      {"ik", ca::DerToPem(ik.der)},
      {"ek-rsa", ek_rsa.der},
      {"ak", ca::DerToPem(ak.der)},
      {"ek-ecc", ek_ecc.der},
      {"ak", other.der},  // a second of a kind: the first counts
  };
  auto spkis = SpkisOfCertificates(certs);
  ASSERT_TRUE(spkis.ok()) << spkis.error().ToString();
  EXPECT_EQ(spkis->ek_ecc, ek_ecc.spki);
  EXPECT_EQ(spkis->ek_rsa, ek_rsa.spki);
  EXPECT_EQ(spkis->ak, ak.spki);
  EXPECT_EQ(spkis->ik, ik.spki);
}

TEST(SpkisOfCertificatesTest, AMissingKindOrAnUnparsableCertificateIsNamed) {
  const KeyAndCertificate c = NewCertificate();
  auto missing = SpkisOfCertificates({{"ek-ecc", c.der}, {"ek-rsa", c.der}, {"ak", c.der}});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(missing.error().message().find("no ik certificate"), std::string::npos) << missing.error().message();

  auto garbled =
      SpkisOfCertificates({{"ek-ecc", c.der}, {"ek-rsa", c.der}, {"ak", "not a certificate"}, {"ik", c.der}});
  ASSERT_FALSE(garbled.ok());
  EXPECT_EQ(garbled.error().message().rfind("the ak certificate: ", 0), 0u) << garbled.error().message();
}

}  // namespace
}  // namespace vtm
