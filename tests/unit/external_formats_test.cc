// Parsers of other tools' outputs: swtpm_setup's --ek parameter and tpm2_makecredential files.
#include "external_formats.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

namespace vtm {
namespace {

int KeyIdOf(const std::string& spki) {
  const auto* p = reinterpret_cast<const unsigned char*>(spki.data());
  EVP_PKEY* key = d2i_PUBKEY(nullptr, &p, static_cast<long>(spki.size()));
  int id = key ? EVP_PKEY_get_base_id(key) : -1;
  int bits = key ? EVP_PKEY_get_bits(key) : 0;
  EVP_PKEY_free(key);
  return id * 10000 + bits;
}

TEST(SwtpmSetupEkParamTest, RsaModulusAndEccPoints) {
  // A 2048-bit modulus (any odd value with the top bit set parses as an RSA public key).
  std::string modulus = "c" + std::string(510, '3') + "5";
  auto rsa = SpkiFromSwtpmSetupEkParam(modulus);
  ASSERT_TRUE(rsa.ok()) << rsa.error().ToString();
  EXPECT_EQ(KeyIdOf(*rsa), EVP_PKEY_RSA * 10000 + 2048);

  // The P-256 generator point.
  auto ecc = SpkiFromSwtpmSetupEkParam(
      "x=6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296,"
      "y=4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5,id=secp256r1");
  ASSERT_TRUE(ecc.ok()) << ecc.error().ToString();
  EXPECT_EQ(KeyIdOf(*ecc), EVP_PKEY_EC * 10000 + 256);
}

TEST(SwtpmSetupEkParamTest, BadInputIsRefusedClearly) {
  for (const char* bad : {"", "zz", "1234", "x=00,y=00", "x=6b17,y=4fe3,id=secp999r1",
                          "x=6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296,y=00"}) {
    auto r = SpkiFromSwtpmSetupEkParam(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument) << bad;
    EXPECT_NE(r.error().message().find("--ek"), std::string::npos) << r.error().message();
  }
}

std::string Credential(const std::string& id, const std::string& secret, uint32_t version = 1) {
  auto u16 = [](size_t n) { return std::string{static_cast<char>(n >> 8), static_cast<char>(n & 0xff)}; };
  std::string out = "\xBA\xDC\xC0\xDE";
  out += std::string{0, 0, 0, static_cast<char>(version)};
  return out + u16(id.size()) + id + u16(secret.size()) + secret;
}

TEST(Tpm2ToolsCredentialTest, ParsesAndRefusesMalformed) {
  auto ok = ParseTpm2ToolsCredential(Credential("IDOBJECT", "SECRET"));
  ASSERT_TRUE(ok.ok()) << ok.error().ToString();
  EXPECT_EQ(ok->id_object, std::string("\x00\x08", 2) + "IDOBJECT");
  EXPECT_EQ(ok->encrypted_secret, std::string("\x00\x06", 2) + "SECRET");

  std::string good = Credential("IDOBJECT", "SECRET");
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_FALSE(ParseTpm2ToolsCredential(good.substr(0, n)).ok()) << "prefix of " << n;
  }
  auto trailing = ParseTpm2ToolsCredential(good + "x");
  ASSERT_FALSE(trailing.ok());
  EXPECT_NE(trailing.error().message().find("stray"), std::string::npos);
  auto version = ParseTpm2ToolsCredential(Credential("a", "b", 2));
  ASSERT_FALSE(version.ok());
  EXPECT_NE(version.error().message().find("version 2"), std::string::npos);
  EXPECT_FALSE(ParseTpm2ToolsCredential("not a credential at all").ok());
}

}  // namespace
}  // namespace vtm
