// The vTPM identity as a real guest sees it, checked with tpm2-tools in the guest and
// tpm2_checkquote/OpenSSL on the host: the EK certificate at NV 0x01C0000A is for the EK that
// `tpm2_createek` recreates; a quote by the persistent AK verifies with the public key of the
// AK certificate vtmd issued; the IK signs what its certificate's key verifies; the guest can
// neither undefine nor overwrite the certificate.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <fstream>
#include <sstream>

#include "qemu_guest.h"
#include "test_env.h"
#include "vtm/x509.h"
#include "vtmd_fixture.h"

namespace vtm::testing {
namespace {

std::string SpkiFromPem(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  EVP_PKEY* key = PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (key == nullptr) return "";
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(key, &der);
  std::string out = n > 0 ? std::string(reinterpret_cast<char*>(der), static_cast<size_t>(n)) : "";
  OPENSSL_free(der);
  EVP_PKEY_free(key);
  return out;
}

void WriteBytes(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }

class IdentityGuestTest : public GuestImageTest {};

TEST_F(IdentityGuestTest, GuestFindsEkCertificateQuotesWithAkAndCannotTouchCertificates) {
  VtmdFixture f;
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  auto created = f.Vtmctl({"create", "--name", "idguest", "--service", "api"});
  ASSERT_EQ(created.exit_code, 0) << created.output << f.VtmdLog();
  auto started = f.Vtmctl({"start", "idguest"});
  ASSERT_EQ(started.exit_code, 0) << started.output;

  const std::string nonce = "5a17e0d3c4b2a19f";
  const std::string hex = "od -An -tx1 -v $1 | tr -d ' \\n'";
  GuestOptions o;
  o.tpm_socket = Field(started.output, "tpm socket");
  o.script =
      "hex() { " + hex + "; }\n"
      "tpm2_nvread 0x01C0000A -C o -o /tmp/ekcert.der && echo EKCERT=$(hex /tmp/ekcert.der)\n"
      "tpm2_createek -G ecc -c /tmp/ek.ctx -u /tmp/ek.pem -f pem && echo EKPUB=$(hex /tmp/ek.pem)\n"
      "tpm2_quote -c 0x81000002 -l sha256:0,10 -q " + nonce +
      " -m /tmp/q.msg -s /tmp/q.sig -o /tmp/q.pcrs -g sha256 >/dev/null && "
      "echo QMSG=$(hex /tmp/q.msg) && echo QSIG=$(hex /tmp/q.sig) && echo QPCRS=$(hex /tmp/q.pcrs)\n"
      "printf 'data to sign' > /tmp/d && tpm2_sign -c 0x81000003 -g sha256 -f plain -o /tmp/d.sig /tmp/d && "
      "echo IKSIG=$(hex /tmp/d.sig)\n"
      "printf junk > /tmp/j\n"
      "for h in o p; do\n"
      "  tpm2_nvundefine 0x01C0000A -C $h 2>/dev/null && echo UNDEF_$h=done || echo UNDEF_$h=refused\n"
      "  tpm2_nvwrite 0x01C0000A -C $h -i /tmp/j 2>/dev/null && echo WRITE_$h=done || echo WRITE_$h=refused\n"
      "done\n"
      "tpm2_nvread 0x01C0000A -C o -o /tmp/ekcert2.der && cmp /tmp/ekcert.der /tmp/ekcert2.der && echo EKCERT_KEPT=yes\n";
  GuestRun run = RunGuest(o);
  ASSERT_TRUE(run.booted) << run.Describe();
  std::string out = run.ScriptOutput();

  // EK certificate in NV == the EK the guest recreates from the TCG template.
  std::string ek_cert = HexToBytes(GuestMarker(out, "EKCERT"));
  ASSERT_FALSE(ek_cert.empty()) << out;
  auto info = ca::ParseCertificate(ek_cert);
  ASSERT_TRUE(info.ok()) << info.error().ToString();
  std::string guest_ek = SpkiFromPem(HexToBytes(GuestMarker(out, "EKPUB")));
  ASSERT_FALSE(guest_ek.empty()) << out;
  EXPECT_EQ(info->spki_der, guest_ek) << "EK certificate does not match tpm2_createek's EK";
  // ...and it is the certificate vtmd reports and the host CA signed.
  TempDir dir;
  auto p = [&](const std::string& n) { return dir.path() + "/" + n; };
  WriteBytes(p("ca.pem"), f.Vtmctl({"ca", "show"}).output);
  WriteBytes(p("ek.pem"), ca::DerToPem(ek_cert));
  EXPECT_EQ(RunCommand({"openssl", "verify", "-CAfile", p("ca.pem"), p("ek.pem")}).exit_code, 0);

  // The AK quote verifies with the AK certificate's public key.
  WriteBytes(p("akpub.pem"), f.CertificatePublicKeyPem("idguest", "ak"));
  WriteBytes(p("q.msg"), HexToBytes(GuestMarker(out, "QMSG")));
  WriteBytes(p("q.sig"), HexToBytes(GuestMarker(out, "QSIG")));
  WriteBytes(p("q.pcrs"), HexToBytes(GuestMarker(out, "QPCRS")));
  auto check = RunCommand({"tpm2_checkquote", "-u", p("akpub.pem"), "-m", p("q.msg"), "-s", p("q.sig"), "-f",
                           p("q.pcrs"), "-g", "sha256", "-q", nonce});
  EXPECT_EQ(check.exit_code, 0) << check.output << "\n" << out;
  auto replay = RunCommand({"tpm2_checkquote", "-u", p("akpub.pem"), "-m", p("q.msg"), "-s", p("q.sig"), "-f",
                            p("q.pcrs"), "-g", "sha256", "-q", "00112233"});
  EXPECT_NE(replay.exit_code, 0) << "a quote with another nonce must not verify";

  // The IK (persistent at 0x81000003) signs data that its certificate's key verifies.
  WriteBytes(p("ikpub.pem"), f.CertificatePublicKeyPem("idguest", "ik"));
  WriteBytes(p("d"), "data to sign");
  WriteBytes(p("d.sig"), HexToBytes(GuestMarker(out, "IKSIG")));
  auto ik_ok = RunCommand({"openssl", "dgst", "-sha256", "-verify", p("ikpub.pem"), "-signature", p("d.sig"), p("d")});
  EXPECT_EQ(ik_ok.exit_code, 0) << ik_ok.output << "\n" << out;

  // The guest cannot remove or rewrite the certificate, with owner or platform authority.
  for (const char* m : {"UNDEF_o", "UNDEF_p", "WRITE_o", "WRITE_p"}) EXPECT_EQ(GuestMarker(out, m), "refused") << m << "\n" << out;
  EXPECT_EQ(GuestMarker(out, "EKCERT_KEPT"), "yes") << out;
}

}  // namespace
}  // namespace vtm::testing
