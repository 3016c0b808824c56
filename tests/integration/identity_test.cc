// vTPM identity through vtmd, checked with tools we did not write: every EK/AK/IK certificate
// verifies with `openssl verify` against the host CA; the CA certificate's TPM2_Certify
// extension verifies with the host AK; a deleted VM's serials appear in the CRL and
// `openssl verify -crl_check` then fails; bad CA input is refused with a clear error.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <ctime>
#include <fstream>
#include <future>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include <google/protobuf/util/json_util.h>
#include <openssl/evp.h>

#include "vtm.pb.h"
#include "vtm/certificates.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "host_ca.h"
#include "host_attestation_key.h"
#include "master_key.h"
#include "vtm/host_tpm_executor.h"
#include "vtm/tpm.h"
#include "vtm/x509.h"
#include "vtmd_fixture.h"

namespace vtm::testing {
namespace {

constexpr const char* kUuid = "3c9d6a52-41b7-4e0f-9a6e-5f1c2d3e4f50";

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// Splits `vtmctl certs` output ("# kind serial N ..." then PEM) into kind -> PEM.
std::map<std::string, std::string> SplitCerts(const std::string& out) {
  std::map<std::string, std::string> m;
  std::istringstream in(out);
  std::string line, kind;
  while (std::getline(in, line)) {
    if (line.rfind("# ", 0) == 0) {
      kind = line.substr(2, line.find(' ', 2) - 2);
      continue;
    }
    if (!kind.empty()) m[kind] += line + "\n";
  }
  return m;
}

class IdentityTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog(); }
  void TearDown() override {
    if (HasFailure()) std::cerr << "---- vtmd log ----\n" << f.VtmdLog();
  }
  std::string Path(const std::string& name) { return dir.path() + "/" + name; }
  VtmdFixture f;
  TempDir dir;
};

TEST_F(IdentityTest, CertificatesVerifyWithOpensslAndCaKeyIsCertifiedByHostAk) {
  auto created = f.Vtmctl({"create", "--uuid", kUuid, "--name", "web1", "--service", "shop-frontend"});
  ASSERT_EQ(created.exit_code, 0) << created.output;
  EXPECT_EQ(Field(created.output, "service"), "shop-frontend");

  auto ca = f.Vtmctl({"ca", "show"});
  ASSERT_EQ(ca.exit_code, 0) << ca.output;
  WriteText(Path("ca.pem"), ca.output);
  auto certs = f.Vtmctl({"certs", "web1"});
  ASSERT_EQ(certs.exit_code, 0) << certs.output;
  auto by_kind = SplitCerts(certs.output);
  for (const char* kind : {"ek-ecc", "ek-rsa", "ak", "ik"}) {
    ASSERT_TRUE(by_kind.count(kind)) << "no " << kind << " certificate in\n" << certs.output;
    WriteText(Path(std::string(kind) + ".pem"), by_kind[kind]);
    auto v = RunCommand({"openssl", "verify", "-CAfile", Path("ca.pem"), Path(std::string(kind) + ".pem")});
    EXPECT_EQ(v.exit_code, 0) << kind << ": " << v.output;
  }
  // TCG EK profile and identity contents, as openssl prints them.
  auto ek = RunCommand({"openssl", "x509", "-noout", "-text", "-in", Path("ek-ecc.pem")});
  EXPECT_NE(ek.output.find("2.23.133.8.1"), std::string::npos) << ek.output;  // tcg-kp-EKCertificate
  EXPECT_NE(ek.output.find("2.23.133.2.1"), std::string::npos) << ek.output;  // TPM manufacturer
  EXPECT_NE(ek.output.find("Key Agreement"), std::string::npos) << ek.output;
  auto ek_rsa = RunCommand({"openssl", "x509", "-noout", "-text", "-in", Path("ek-rsa.pem")});
  EXPECT_NE(ek_rsa.output.find("Key Encipherment"), std::string::npos) << ek_rsa.output;
  auto ik = RunCommand({"openssl", "x509", "-noout", "-text", "-in", Path("ik.pem")});
  EXPECT_NE(ik.output.find(std::string("urn:uuid:") + kUuid), std::string::npos) << ik.output;
  EXPECT_NE(ik.output.find("vtm:service:shop-frontend"), std::string::npos) << ik.output;

  // The CA certificate's TPM2_Certify evidence: certified key == CA key, signed by the host AK
  // that `ca show --json` reports.
  auto evidence = ca::ExtractCertifyEvidence(ca.output);
  ASSERT_TRUE(evidence.ok()) << evidence.error().ToString();
  EXPECT_TRUE(ca::VerifyCertifyEvidence(ca.output, *evidence).ok());
  auto json = f.Vtmctl({"--json", "ca", "show"});
  ASSERT_EQ(json.exit_code, 0);
  EXPECT_NE(json.output.find("\"residency\": \"tpm\""), std::string::npos) << json.output;
  EXPECT_NE(json.output.find("host_ek_certificate_pem"), std::string::npos);
  // Evidence for another key (the IK's certificate) must not pass.
  EXPECT_FALSE(ca::VerifyCertifyEvidence(by_kind["ik"], *evidence).ok());
}

TEST_F(IdentityTest, DeletedVmCertificatesAreRevokedInTheCrl) {
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kUuid, "--name", "gone"}).exit_code, 0);
  ASSERT_EQ(f.Vtmctl({"create", "--name", "stays"}).exit_code, 0);
  WriteText(Path("ca.pem"), f.Vtmctl({"ca", "show"}).output);
  auto gone = SplitCerts(f.Vtmctl({"certs", "gone"}).output);
  auto stays = SplitCerts(f.Vtmctl({"certs", "stays"}).output);
  WriteText(Path("gone-ik.pem"), gone["ik"]);
  WriteText(Path("stays-ik.pem"), stays["ik"]);

  ASSERT_EQ(f.Vtmctl({"delete", "gone"}).exit_code, 0);
  auto crl = f.Vtmctl({"ca", "crl"});
  ASSERT_EQ(crl.exit_code, 0) << crl.output;
  WriteText(Path("crl.pem"), crl.output);
  auto crl_text = RunCommand({"openssl", "crl", "-noout", "-text", "-CAfile", Path("ca.pem"), "-in", Path("crl.pem")});
  ASSERT_EQ(crl_text.exit_code, 0) << crl_text.output;
  EXPECT_NE(crl_text.output.find("verify OK"), std::string::npos) << crl_text.output;
  // All four serials of the deleted VM are listed.
  auto info = ca::ParseCertificate(gone["ik"]);
  ASSERT_TRUE(info.ok());
  std::ostringstream hex;
  hex << std::uppercase << std::hex << info->serial;
  EXPECT_NE(crl_text.output.find(hex.str()), std::string::npos) << crl_text.output;
  size_t listed = 0;
  for (size_t p = 0; (p = crl_text.output.find("Serial Number:", p)) != std::string::npos; ++p) ++listed;
  EXPECT_EQ(listed, 4u) << crl_text.output;

  auto revoked = RunCommand({"openssl", "verify", "-crl_check", "-CRLfile", Path("crl.pem"), "-CAfile", Path("ca.pem"),
                             Path("gone-ik.pem")});
  EXPECT_NE(revoked.exit_code, 0) << revoked.output;
  EXPECT_NE(revoked.output.find("revoked"), std::string::npos) << revoked.output;
  auto valid = RunCommand({"openssl", "verify", "-crl_check", "-CRLfile", Path("crl.pem"), "-CAfile", Path("ca.pem"),
                           Path("stays-ik.pem")});
  EXPECT_EQ(valid.exit_code, 0) << valid.output;
}

TEST_F(IdentityTest, FleetCaFlowAndBadInputIsRefused) {
  // CSR for the host CA key verifies (self-signature by the key inside the TPM).
  auto csr = f.Vtmctl({"ca", "csr"});
  ASSERT_EQ(csr.exit_code, 0) << csr.output;
  WriteText(Path("host.csr"), csr.output);
  auto req = RunCommand({"openssl", "req", "-verify", "-noout", "-in", Path("host.csr")});
  EXPECT_EQ(req.exit_code, 0) << req.output;

  // A fleet CA (openssl) signs the CSR; installing it works and new vTPM certs chain to it.
  ASSERT_EQ(RunCommand({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", Path("fleet.key"), "-out", Path("fleet.pem"), "-subj", "/CN=fleet root", "-days", "30"})
                .exit_code,
            0);
  WriteText(Path("ext.cnf"), "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n");
  auto signed_cert = RunCommand({"openssl", "x509", "-req", "-in", Path("host.csr"), "-CA", Path("fleet.pem"), "-CAkey",
                                 Path("fleet.key"), "-CAcreateserial", "-out", Path("host-ca.pem"), "-days", "30",
                                 "-extfile", Path("ext.cnf")});
  ASSERT_EQ(signed_cert.exit_code, 0) << signed_cert.output;

  // Refused: a certificate for another key (the fleet root itself).
  auto wrong_key = f.Vtmctl({"ca", "install", Path("fleet.pem")});
  EXPECT_EQ(wrong_key.exit_code, 2) << wrong_key.output;
  EXPECT_NE(wrong_key.output.find("another key"), std::string::npos) << wrong_key.output;
  // Refused: a corrupted certificate file.
  WriteText(Path("corrupt.pem"), "-----BEGIN CERTIFICATE-----\nMIIBnotbase64!!\n-----END CERTIFICATE-----\n");
  auto corrupt = f.Vtmctl({"ca", "install", Path("corrupt.pem")});
  EXPECT_EQ(corrupt.exit_code, 2) << corrupt.output;
  // Refused: the right certificate with a chain that did not sign it.
  auto wrong_chain = f.Vtmctl({"ca", "install", Path("host-ca.pem"), Path("host-ca.pem")});
  EXPECT_EQ(wrong_chain.exit_code, 2) << wrong_chain.output;

  // Refused: the right certificate, expired.
  auto expired_cert = RunCommand({"openssl", "x509", "-req", "-in", Path("host.csr"), "-CA", Path("fleet.pem"), "-CAkey",
                                  Path("fleet.key"), "-CAcreateserial", "-out", Path("expired.pem"), "-days", "-1",
                                  "-extfile", Path("ext.cnf")});
  ASSERT_EQ(expired_cert.exit_code, 0) << expired_cert.output;
  auto expired = f.Vtmctl({"ca", "install", Path("expired.pem"), Path("fleet.pem")});
  EXPECT_EQ(expired.exit_code, 2) << expired.output;
  EXPECT_NE(expired.output.find("the certificate expired at"), std::string::npos) << expired.output;

  auto installed = f.Vtmctl({"ca", "install", Path("host-ca.pem"), Path("fleet.pem")});
  ASSERT_EQ(installed.exit_code, 0) << installed.output;
  ASSERT_EQ(f.Vtmctl({"create", "--name", "after-install"}).exit_code, 0);
  WriteText(Path("ek.pem"), SplitCerts(f.Vtmctl({"certs", "after-install"}).output)["ek-ecc"]);
  auto chain = RunCommand({"openssl", "verify", "-CAfile", Path("fleet.pem"), "-untrusted", Path("host-ca.pem"),
                           Path("ek.pem")});
  EXPECT_EQ(chain.exit_code, 0) << chain.output;
  // Without cert-days nothing of vtm's expires, but a vTPM certificate ends with its CA's.
  auto valid_in_days = [&](const std::string& pem_path, int days) {
    return RunCommand({"openssl", "x509", "-noout", "-checkend", std::to_string(days * 24 * 3600), "-in", pem_path})
               .exit_code == 0;
  };
  EXPECT_TRUE(valid_in_days(Path("ek.pem"), 29));
  EXPECT_FALSE(valid_in_days(Path("ek.pem"), 31));

  // Time passes and the CA certificate ends (here: its file replaced by the expired one while
  // vtmd is down): vtmd starts, says so, and issues nothing that would not verify.
  f.StopVtmd();
  ASSERT_TRUE(WriteFileAtomic(f.state_dir() + "/host-identity/ca.pem", *ReadFile(Path("expired.pem")), 0644).ok());
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  EXPECT_NE(f.VtmdLog().find("expired at"), std::string::npos) << f.VtmdLog();
  auto refused = f.Vtmctl({"create", "--name", "after-expiry"});
  EXPECT_NE(refused.exit_code, 0) << refused.output;
  EXPECT_NE(refused.output.find("the host CA certificate expired at"), std::string::npos) << refused.output;
  EXPECT_NE(f.Vtmctl({"show", "after-expiry"}).exit_code, 0) << "a refused create left a VM behind";
  // ...until a renewed certificate is installed.
  ASSERT_EQ(f.Vtmctl({"ca", "install", Path("host-ca.pem"), Path("fleet.pem")}).exit_code, 0);
  EXPECT_EQ(f.Vtmctl({"create", "--name", "after-expiry"}).exit_code, 0);
}

// Two hosts with the same host name under one fleet CA: their CA names differ (the host EK is
// in them) and certificate serials are 64-bit random, so no (issuer, serial) pair repeats — a
// relying party's CRL lookup cannot confuse them.
TEST_F(IdentityTest, HostsUnderOneFleetCaNeverShareIssuerNameOrSerials) {
  VtmdFixture other;
  ASSERT_TRUE(other.StartVtmd()) << other.VtmdLog();
  std::map<std::string, std::string> subjects;
  std::set<std::string> serials;
  for (VtmdFixture* host : {&f, &other}) {
    ASSERT_EQ(host->Vtmctl({"create", "--uuid", kUuid, "--name", "same"}).exit_code, 0);
    auto ca = ca::ParseCertificate(host->Vtmctl({"ca", "show"}).output);
    ASSERT_TRUE(ca.ok()) << ca.error().ToString();
    std::smatch m;
    EXPECT_TRUE(std::regex_match(ca->subject, m, std::regex("CN=vtm host CA [A-Za-z0-9.-]+ [0-9a-f]{16},O=vtm")))
        << ca->subject;
    subjects[ca->subject] = host->state_dir();
    auto certs = host->Vtmctl({"certs", "same"});
    std::istringstream in(certs.output);
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("# ", 0) != 0) continue;
      std::istringstream fields(line);
      std::string hash, kind, word, serial;
      fields >> hash >> kind >> word >> serial;
      ASSERT_EQ(word, "serial") << line;
      serials.insert(serial);
    }
  }
  EXPECT_EQ(subjects.size(), 2u) << "two hosts issue under one CA name";
  EXPECT_EQ(serials.size(), 8u) << "serials repeat across or within hosts";
  // 64 random bits: that all eight fall below 2^40 has probability 2^-192.
  bool any_large = false;
  for (const auto& s : serials) any_large = any_large || std::stoull(s) > (1ull << 40);
  EXPECT_TRUE(any_large) << "serials look like a counter";
}

TEST_F(IdentityTest, HostAkBindsToHostEkByCredentialActivationMadeWithTpm2Tools) {
  // A verifier takes the host EK (public) and the AK's name from vtmd, makes a credential
  // with tpm2-tools (no TPM involved), and asks vtmd to activate it.
  api::Response resp;
  auto json = f.Vtmctl({"--json", "ca", "show"});
  ASSERT_EQ(json.exit_code, 0) << json.output;
  auto parsed = google::protobuf::util::JsonStringToMessage(json.output, &resp);
  ASSERT_TRUE(parsed.ok()) << parsed.ToString() << "\n" << json.output.substr(0, 300);
  ASSERT_FALSE(resp.ca().host_ak_name().empty());
  WriteText(Path("ek.pem"), resp.ca().host_ek_public_pem());
  // The host EK certificate (from the test manufacturer) is for that EK.
  auto ek_cert = ca::ParseCertificate(resp.ca().host_ek_certificate_pem());
  ASSERT_TRUE(ek_cert.ok()) << ek_cert.error().ToString();
  auto ek_spki = RunCommand({"openssl", "pkey", "-pubin", "-in", Path("ek.pem"), "-outform", "DER", "-out",
                             Path("ek.der")});
  ASSERT_EQ(ek_spki.exit_code, 0) << ek_spki.output;
  EXPECT_EQ(ek_cert->spki_der, ReadFile(Path("ek.der")).value()) << "host EK certificate is not for the host EK";

  const std::string secret = "vtm-credential-activation-secret";  // 32 bytes
  WriteText(Path("secret.bin"), secret);
  auto made = RunCommand({"tpm2_makecredential", "-T", "none", "-G", "ecc", "-u", Path("ek.pem"), "-s",
                          Path("secret.bin"), "-n", resp.ca().host_ak_name(), "-o", Path("cred.out")});
  ASSERT_EQ(made.exit_code, 0) << made.output;
  auto activated = f.Vtmctl({"ca", "activate-credential", Path("cred.out")});
  ASSERT_EQ(activated.exit_code, 0) << activated.output;
  EXPECT_EQ(activated.output, HexEncode(secret) + "\n");

  // A credential for another name (not the host AK) is refused.
  std::string other_name = resp.ca().host_ak_name();
  other_name.back() = other_name.back() == '0' ? '1' : '0';
  ASSERT_EQ(RunCommand({"tpm2_makecredential", "-T", "none", "-G", "ecc", "-u", Path("ek.pem"), "-s", Path("secret.bin"),
                        "-n", other_name, "-o", Path("other.out")})
                .exit_code,
            0);
  auto refused = f.Vtmctl({"ca", "activate-credential", Path("other.out")});
  EXPECT_EQ(refused.exit_code, 2) << refused.output;
  // Garbage is refused before it reaches the TPM.
  WriteText(Path("junk.out"), "not a credential");
  EXPECT_EQ(f.Vtmctl({"ca", "activate-credential", Path("junk.out")}).exit_code, 2);
}

TEST_F(IdentityTest, SwtpmSetupGetsEkCertificatesFromTheHostCaThroughVtmCreateCerts) {
  WriteText(Path("ca.pem"), f.Vtmctl({"ca", "show"}).output);
  WriteText(Path("tool.conf"), "socket = " + f.socket() + "\n");
  WriteText(Path("swtpm_setup.conf"), "create_certs_tool = " + BuildPath("vtm-manager/vtm-create-certs") +
                                          "\ncreate_certs_tool_config = " + Path("tool.conf") +
                                          "\ncreate_certs_tool_options = /dev/null\n");
  ASSERT_TRUE(MakeDir(Path("state"), 0700).ok());
  auto setup = RunCommand({"swtpm_setup", "--tpm2", "--ecc", "--tpm-state", Path("state"), "--config",
                           Path("swtpm_setup.conf"), "--create-ek-cert", "--overwrite"});
  ASSERT_EQ(setup.exit_code, 0) << setup.output;
  // Read the certificates back from the new TPM state with tpm2-tools.
  auto tpm = SimulatedHostTpm::Start(Path("state"));
  ASSERT_TRUE(tpm.ok()) << tpm.error().ToString();
  int verified = 0;
  for (const char* index : {"0x01C00002", "0x01C00016"}) {
    std::string out = Path(std::string(index) + ".der");
    auto read = RunCommand({"env", "TPM2TOOLS_TCTI=" + (*tpm)->tcti(), "tpm2_nvread", index, "-C", "o", "-o", out});
    if (read.exit_code != 0) continue;  // swtpm_setup --ecc writes P-384 at 0x01C00016 and RSA at 0x01C00002
    auto pem = ca::CertificateToDer(ReadFile(out).value());
    ASSERT_TRUE(pem.ok());
    WriteText(out + ".pem", ca::DerToPem(*pem));
    auto v = RunCommand({"openssl", "verify", "-CAfile", Path("ca.pem"), out + ".pem"});
    EXPECT_EQ(v.exit_code, 0) << index << ": " << v.output;
    auto x = attest::LoadCertificate(*pem);  // marked: a key vtm did not create
    EXPECT_TRUE(x.ok() && attest::HasCertificatePolicy(x->get(), attest::kUnprovisionedKeyPolicyOid)) << index;
    ++verified;
  }
  EXPECT_EQ(verified, 2) << "expected swtpm_setup --ecc to store an RSA and an ECC EK certificate";
  // Refused plainly: platform certificates.
  auto platform = RunCommand({BuildPath("vtm-manager/vtm-create-certs"), "--type", "platform", "--ek", "00", "--dir",
                              dir.path()});
  EXPECT_NE(platform.exit_code, 0);
  EXPECT_NE(platform.output.find("only EK certificates"), std::string::npos) << platform.output;
}

// issue_ek_cert certifies whatever key it is given: only root may ask, and what it issues is
// marked apart from a provisioned vTPM's EK certificate, even for the very same key.
TEST(IdentityOutsideKeyTest, IssueEkCertIsRootOnlyAndMarksWhatItIssues) {
  VtmdFixture f;
  TempDir dir;
  auto p = [&](const std::string& n) { return dir.path() + "/" + n; };
  ASSERT_TRUE(f.StartVtmd({"--group", "daemon"})) << f.VtmdLog();  // gid 1, base-passwd
  ASSERT_EQ(f.Vtmctl({"create", "--uuid", kUuid, "--name", "web1"}).exit_code, 0) << f.VtmdLog();
  WriteText(p("ca.pem"), f.Vtmctl({"ca", "show"}).output);
  auto certs = SplitCerts(f.Vtmctl({"certs", "web1"}).output);
  ASSERT_EQ(certs.count("ek-rsa"), 1u);
  auto marked = [](const std::string& der_or_pem) {
    auto x = attest::LoadCertificate(der_or_pem);
    EXPECT_TRUE(x.ok());
    return x.ok() && attest::HasCertificatePolicy(x->get(), attest::kUnprovisionedKeyPolicyOid);
  };
  for (const auto& [kind, pem] : certs) EXPECT_FALSE(marked(pem)) << kind << " of a provisioned vTPM is marked";

  // swtpm_setup's --ek for the provisioned vTPM's own RSA EK (modulus hex, as openssl prints it).
  WriteText(p("ek-rsa.pem"), certs["ek-rsa"]);
  auto modulus = RunCommand({"openssl", "x509", "-noout", "-modulus", "-in", p("ek-rsa.pem")});
  ASSERT_EQ(modulus.exit_code, 0) << modulus.output;
  const std::string ek_hex = modulus.output.substr(modulus.output.find('=') + 1, modulus.output.find('\n') -
                                                                                     modulus.output.find('=') - 1);
  WriteText(p("tool.conf"), "socket = " + f.socket() + "\n");
  const std::vector<std::string> tool_args = {"--type", "ek", "--ek", ek_hex, "--dir", dir.path(), "--configfile",
                                              p("tool.conf")};

  // A vtm group member (served for everything else) is refused, and told who may.
  ASSERT_EQ(chmod(dir.path().c_str(), 0755), 0);
  ASSERT_EQ(f.VtmctlAs({"--reuid=65534", "--regid=65534", "--groups=daemon"}, {"list"}).exit_code, 0);
  auto member =
      f.RunBuiltAs({"--reuid=65534", "--regid=65534", "--groups=daemon"}, "vtm-manager/vtm-create-certs", tool_args);
  EXPECT_EQ(member.exit_code, 1) << member.output;
  EXPECT_NE(member.output.find("permission denied"), std::string::npos) << member.output;
  EXPECT_NE(member.output.find("for root only"), std::string::npos) << member.output;
  EXPECT_FALSE(PathExists(p("ek.cert")));

  // Root gets a certificate of the same CA for the same key, marked as an outside key.
  std::vector<std::string> as_root = {BuildPath("vtm-manager/vtm-create-certs")};
  as_root.insert(as_root.end(), tool_args.begin(), tool_args.end());
  auto root = RunCommand(as_root);
  ASSERT_EQ(root.exit_code, 0) << root.output;
  auto issued = ReadFile(p("ek.cert"));
  ASSERT_TRUE(issued.ok());
  WriteText(p("outside.pem"), ca::DerToPem(*issued));
  auto verify = RunCommand({"openssl", "verify", "-CAfile", p("ca.pem"), p("outside.pem")});
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  auto same_key = RunCommand({"openssl", "x509", "-noout", "-modulus", "-in", p("outside.pem")});
  EXPECT_EQ(same_key.output, modulus.output);
  EXPECT_TRUE(marked(*issued));
  auto text = RunCommand({"openssl", "x509", "-noout", "-text", "-in", p("outside.pem")});
  EXPECT_NE(text.output.find("Policy: 2.25.175342463645521248098509356622530514097"), std::string::npos)
      << text.output;
}

TEST(IdentitySealedTest, SealedCaIssuesVerifiableCertificatesAndAHostQuoteBindsItsKey) {
  VtmdFixture f;
  TempDir dir;
  auto p = [&](const std::string& n) { return dir.path() + "/" + n; };
  ASSERT_TRUE(f.StartVtmd({"--ca-residency", "sealed"})) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"create", "--name", "s1", "--service", "db"}).exit_code, 0) << f.VtmdLog();
  auto ca_pem = f.Vtmctl({"ca", "show"}).output;
  WriteText(p("ca.pem"), ca_pem);
  auto certs = SplitCerts(f.Vtmctl({"certs", "s1"}).output);
  ASSERT_EQ(certs.size(), 4u);
  for (auto& [kind, pem] : certs) {
    WriteText(p(kind + ".pem"), pem);
    EXPECT_EQ(RunCommand({"openssl", "verify", "-CAfile", p("ca.pem"), p(kind + ".pem")}).exit_code, 0) << kind;
  }
  // No TPM2_Certify in this residency: the CA key is not a TPM key.
  auto ev = ca::ExtractCertifyEvidence(ca_pem);
  ASSERT_FALSE(ev.ok());
  EXPECT_EQ(ev.error().code(), ErrorCode::kNotFound);

  // The host AK's quote binds the CA key: its qualifying data is SHA-256(CA SPKI).
  api::Response resp;
  auto json = f.Vtmctl({"--json", "ca", "show"});
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json.output, &resp).ok()) << json.output;
  EXPECT_EQ(resp.ca().residency(), "sealed");
  WriteText(p("ak.pem"), resp.ca().host_ak_public_pem());
  WriteText(p("quote.attest"), resp.ca().ca_key_quote_attest());
  WriteText(p("quote.sig"), resp.ca().ca_key_quote_signature());
  auto info = ca::ParseCertificate(ca_pem);
  ASSERT_TRUE(info.ok());
  unsigned char digest[32];
  EVP_Digest(info->spki_der.data(), info->spki_der.size(), digest, nullptr, EVP_sha256(), nullptr);
  std::string hex = HexEncode(std::string_view(reinterpret_cast<const char*>(digest), sizeof digest));
  auto check = RunCommand({"tpm2_checkquote", "-u", p("ak.pem"), "-m", p("quote.attest"), "-s", p("quote.sig"), "-q", hex});
  EXPECT_EQ(check.exit_code, 0) << check.output;
  std::string other = hex;
  other[0] = other[0] == '0' ? '1' : '0';
  EXPECT_NE(RunCommand({"tpm2_checkquote", "-u", p("ak.pem"), "-m", p("quote.attest"), "-s", p("quote.sig"), "-q", other})
                .exit_code,
            0);

  // The CA key cannot silently change residency.
  f.StopVtmd();
  auto refused = f.RunVtmdExpectingExit({"--ca-residency", "tpm"});
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("cannot change residency"), std::string::npos) << refused.output;
  // ...and the sealed key comes back after a restart: the same CA certificate.
  ASSERT_TRUE(f.StartVtmd({"--ca-residency", "sealed"})) << f.VtmdLog();
  EXPECT_EQ(f.Vtmctl({"ca", "show"}).output, ca_pem);
}

// The operator sets how long certificates live (docs/operator-guide.md): `openssl x509
// -checkend` and `openssl verify -attime` see the validity asked for, and no vTPM certificate
// outlives the CA certificate that issued it.
TEST(IdentityValidityTest, OperatorSetValidityIsWhatOpensslSees) {
  VtmdFixture f;
  TempDir dir;
  auto p = [&](const std::string& n) { return dir.path() + "/" + n; };
  constexpr long kDay = 24 * 3600;
  // exit 0: still valid `days` from now.
  auto valid_in = [&](const std::string& pem_path, long days) {
    return RunCommand({"openssl", "x509", "-noout", "-checkend", std::to_string(days * kDay), "-in", pem_path})
               .exit_code == 0;
  };

  auto refused = f.RunVtmdExpectingExit({"--cert-days", "40000"});
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("--cert-days needs a number up to 36500"), std::string::npos) << refused.output;

  ASSERT_TRUE(f.StartVtmd({"--ca-cert-days", "400", "--cert-days", "30"})) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"create", "--name", "short", "--service", "db"}).exit_code, 0) << f.VtmdLog();
  WriteText(p("ca.pem"), f.Vtmctl({"ca", "show"}).output);
  EXPECT_TRUE(valid_in(p("ca.pem"), 399));
  EXPECT_FALSE(valid_in(p("ca.pem"), 401));
  auto listed = f.Vtmctl({"certs", "short"});
  auto certs = SplitCerts(listed.output);
  ASSERT_EQ(certs.size(), 4u);
  // vtmctl names the end of each certificate's validity (and only when it has one).
  EXPECT_NE(listed.output.find("# ak serial "), std::string::npos) << listed.output;
  EXPECT_TRUE(std::regex_search(listed.output, std::regex("# ik serial [0-9]+ NV 0x[0-9a-f]+ expires 20[0-9-]+T[0-9:]+Z")))
      << listed.output;
  const std::string later = std::to_string(std::time(nullptr) + 31 * kDay);
  for (auto& [kind, pem] : certs) {
    WriteText(p(kind + ".pem"), pem);
    EXPECT_TRUE(valid_in(p(kind + ".pem"), 29)) << kind;
    EXPECT_FALSE(valid_in(p(kind + ".pem"), 31)) << kind;
    EXPECT_EQ(RunCommand({"openssl", "verify", "-CAfile", p("ca.pem"), p(kind + ".pem")}).exit_code, 0) << kind;
    auto expired = RunCommand({"openssl", "verify", "-attime", later, "-CAfile", p("ca.pem"), p(kind + ".pem")});
    EXPECT_NE(expired.exit_code, 0) << kind;
    EXPECT_NE(expired.output.find("certificate has expired"), std::string::npos) << expired.output;
  }

  // A longer vTPM validity than the CA's ends with the CA certificate; the CA certificate, made
  // once, keeps its own validity across restarts.
  f.StopVtmd();
  ASSERT_TRUE(f.StartVtmd({"--ca-cert-days", "10", "--cert-days", "1000"})) << f.VtmdLog();
  EXPECT_EQ(f.Vtmctl({"ca", "show"}).output, *ReadFile(p("ca.pem")));
  ASSERT_EQ(f.Vtmctl({"create", "--name", "long", "--service", "db"}).exit_code, 0) << f.VtmdLog();
  auto capped = SplitCerts(f.Vtmctl({"certs", "long"}).output);
  ASSERT_EQ(capped.size(), 4u);
  for (auto& [kind, pem] : capped) {
    WriteText(p("long-" + kind + ".pem"), pem);
    EXPECT_TRUE(valid_in(p("long-" + kind + ".pem"), 399)) << kind;
    EXPECT_FALSE(valid_in(p("long-" + kind + ".pem"), 401)) << kind;
  }
}

// Renewal (docs/operator-guide.md, "Identities and certificates"): the host CA certifies the
// same vTPM keys anew with the validity configured now; the old certificates are revoked in
// the CRL, and the new ones are written into the vTPM's NV at its next start. Two renewals at
// once leave exactly one valid set.
TEST(IdentityValidityTest, RenewalCertifiesTheSameKeysAnewAndRevokesTheOld) {
  VtmdFixture f;
  TempDir dir;
  auto p = [&](const std::string& n) { return dir.path() + "/" + n; };
  auto pubkey = [&](const std::string& pem_path) {
    return RunCommand({"openssl", "x509", "-noout", "-pubkey", "-in", pem_path}).output;
  };
  ASSERT_TRUE(f.StartVtmd({"--cert-days", "30"})) << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"create", "--name", "r1", "--service", "db"}).exit_code, 0) << f.VtmdLog();
  WriteText(p("ca.pem"), f.Vtmctl({"ca", "show"}).output);
  auto old_certs = SplitCerts(f.Vtmctl({"certs", "r1"}).output);
  ASSERT_EQ(old_certs.size(), 4u);
  for (auto& [kind, pem] : old_certs) WriteText(p("old-" + kind + ".pem"), pem);

  EXPECT_EQ(f.Vtmctl({"renew-certs", "no-such-vm"}).exit_code, 3);
  f.StopVtmd();
  ASSERT_TRUE(f.StartVtmd({"--cert-days", "60"})) << f.VtmdLog();
  auto renewed = f.Vtmctl({"renew-certs", "r1"});
  ASSERT_EQ(renewed.exit_code, 0) << renewed.output << f.VtmdLog();
  EXPECT_NE(renewed.output.find("renewed ik serial "), std::string::npos) << renewed.output;

  auto listed = f.Vtmctl({"certs", "r1"});
  EXPECT_EQ(std::regex_search(listed.output, std::regex("REVOKED")), true) << listed.output;
  // --kind picks the valid certificate of each kind.
  WriteText(p("crl.pem"), f.Vtmctl({"ca", "crl"}).output);
  for (const char* kind : {"ek-ecc", "ek-rsa", "ak", "ik"}) {
    auto now = f.Vtmctl({"certs", "r1", "--kind", kind});
    ASSERT_EQ(now.exit_code, 0) << now.output;
    const std::string fresh = p(std::string("new-") + kind + ".pem"), old = p(std::string("old-") + kind + ".pem");
    WriteText(fresh, now.output);
    EXPECT_EQ(pubkey(fresh), pubkey(old)) << kind << ": renewal must certify the same key";
    EXPECT_NE(*ReadFile(fresh), *ReadFile(old)) << kind;
    EXPECT_EQ(RunCommand({"openssl", "x509", "-noout", "-checkend", std::to_string(59 * 24 * 3600), "-in", fresh})
                  .exit_code,
              0)
        << kind;
    EXPECT_EQ(RunCommand({"openssl", "verify", "-crl_check", "-CRLfile", p("crl.pem"), "-CAfile", p("ca.pem"), fresh})
                  .exit_code,
              0)
        << kind;
    auto revoked =
        RunCommand({"openssl", "verify", "-crl_check", "-CRLfile", p("crl.pem"), "-CAfile", p("ca.pem"), old});
    EXPECT_NE(revoked.exit_code, 0) << kind;
    EXPECT_NE(revoked.output.find("certificate revoked"), std::string::npos) << revoked.output;
  }

  // Two renewals at once: each succeeds or is refused cleanly while the other owns the VM;
  // one valid set remains.
  auto r1 = std::async(std::launch::async, [&] { return f.Vtmctl({"renew-certs", "r1"}); });
  auto r2 = std::async(std::launch::async, [&] { return f.Vtmctl({"renew-certs", "r1"}); });
  int succeeded = 0;
  for (auto* r : {&r1, &r2}) {
    auto out = r->get();
    if (out.exit_code == 0) {
      ++succeeded;
    } else {
      EXPECT_NE(out.output.find("another operation on the vTPM of VM"), std::string::npos) << out.output;
    }
  }
  EXPECT_GE(succeeded, 1);
  auto after = f.Vtmctl({"certs", "r1"}).output;
  size_t valid = 0;
  std::istringstream in(after);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("# ", 0) == 0 && line.find("REVOKED") == std::string::npos) ++valid;
  }
  EXPECT_EQ(valid, 4u) << after;

  // The next start writes the renewed certificates into the vTPM's NV.
  ASSERT_EQ(f.Vtmctl({"start", "r1"}).exit_code, 0) << f.VtmdLog();
  EXPECT_NE(f.VtmdLog().find("wrote 4 certificates of this host's CA into its vTPM's NV"), std::string::npos)
      << f.VtmdLog();
  ASSERT_EQ(f.Vtmctl({"stop", "r1"}).exit_code, 0);
}

// The auth value vtmd derives for one of its host keys, from its sealed master key (vtmd's
// default host PCRs).
Result<SecretBytes> HostKeyAuth(Tpm& t, const std::string& state_dir, const std::string& label) {
  VTM_ASSIGN_OR_RETURN(PcrSelection pcrs, PcrSelection::Parse("sha256:0,1,2,3,4,5,6,7"));
  VTM_ASSIGN_OR_RETURN(MasterKey master, MasterKey::LoadOrCreate(t, state_dir + "/master-key.sealed", pcrs));
  return master.DeriveAuth(label);
}

// The host AK and CA key sign only for whoever holds the master key: their blobs (readable by
// root, or from a disk booted into another system) are useless without it. A host identity an
// earlier vtm left with auth-less keys is bound at the next start, keeping the same keys.
TEST(IdentityStartupTest, HostKeysSignOnlyWithTheAuthValueFromTheMasterKey) {
  VtmdFixture f;
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  const std::string ca_pem = f.Vtmctl({"ca", "show"}).output;
  f.StopVtmd();
  const std::string id = f.state_dir() + "/host-identity/";
  EXPECT_TRUE(PathExists(id + "ak-bound.blob"));
  EXPECT_TRUE(PathExists(id + "ca-key-bound.blob"));
  EXPECT_FALSE(PathExists(id + "ak.blob"));
  EXPECT_FALSE(PathExists(id + "ca-key.blob"));

  auto opened = Tpm::OpenTcti(f.host_tcti());
  ASSERT_TRUE(opened.ok()) << opened.error().ToString();
  HostTpmExecutor tpm(std::move(opened).value());
  const std::string digest(32, '\x5a');
  Status checked = tpm.Run([&](Tpm& t) -> Status {
    VTM_ASSIGN_OR_RETURN(TpmKey srk, t.CreateSrk());
    VTM_ASSIGN_OR_RETURN(TpmKeyBlob ca_blob, ReadKeyBlob(id + "ca-key-bound.blob"));
    VTM_ASSIGN_OR_RETURN(TpmKeyBlob ak_blob, ReadKeyBlob(id + "ak-bound.blob"));
    {
      // Loads (TPM2_Load checks only the parent), but signs nothing without the auth value.
      VTM_ASSIGN_OR_RETURN(TpmKey ca_key, t.LoadKey(srk, ca_blob));
      auto unauthorized = t.SignDigest(ca_key, digest);
      EXPECT_FALSE(unauthorized.ok()) << "the CA key signed with an empty auth value";
      if (!unauthorized.ok()) {
        EXPECT_NE(unauthorized.error().message().find("auth"), std::string::npos) << unauthorized.error().message();
      }
      VTM_ASSIGN_OR_RETURN(TpmKey ak, t.LoadKey(srk, ak_blob));
      EXPECT_FALSE(t.Certify(ca_key, ak, "nonce").ok()) << "the host AK certified with an empty auth value";
    }
    VTM_ASSIGN_OR_RETURN(SecretBytes ca_auth, HostKeyAuth(t, f.state_dir(), kCaKeyAuthLabel));
    VTM_ASSIGN_OR_RETURN(SecretBytes ak_auth, HostKeyAuth(t, f.state_dir(), kHostAkAuthLabel));
    {
      VTM_ASSIGN_OR_RETURN(TpmKey ca_key, t.LoadKey(srk, ca_blob));
      VTM_RETURN_IF_ERROR(t.SetKeyAuth(ca_key, ca_auth));
      VTM_ASSIGN_OR_RETURN(std::string signature, t.SignDigest(ca_key, digest));
      EXPECT_FALSE(signature.empty());
    }
    // As an earlier vtm left them: the same keys with empty auth values, under the old names.
    for (const auto& [name, auth] : {std::pair<std::string, const SecretBytes*>{"ak", &ak_auth}, {"ca-key", &ca_auth}}) {
      VTM_ASSIGN_OR_RETURN(TpmKeyBlob blob, ReadKeyBlob(id + name + "-bound.blob"));
      VTM_ASSIGN_OR_RETURN(TpmKey key, t.LoadKey(srk, blob));
      VTM_RETURN_IF_ERROR(t.SetKeyAuth(key, *auth));
      VTM_ASSIGN_OR_RETURN(std::string unbound, t.ChangeKeyAuth(key, srk, SecretBytes()));
      VTM_RETURN_IF_ERROR(WriteFileAtomic(id + name + ".blob", EncodeTwoParts(blob.tpm2b_public, unbound), 0600));
      VTM_RETURN_IF_ERROR(RemoveTree(id + name + "-bound.blob"));
    }
    return OkStatus();
  });
  ASSERT_TRUE(checked.ok()) << checked.error().ToString();

  // The next vtmd binds them (same keys: the same CA certificate still verifies against its key)
  // and the old files are gone.
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  EXPECT_NE(f.VtmdLog().find("bound the host key ak to the master key"), std::string::npos) << f.VtmdLog();
  EXPECT_NE(f.VtmdLog().find("bound the host key ca-key to the master key"), std::string::npos) << f.VtmdLog();
  EXPECT_EQ(f.Vtmctl({"ca", "show"}).output, ca_pem);
  EXPECT_TRUE(PathExists(id + "ak-bound.blob"));
  EXPECT_FALSE(PathExists(id + "ak.blob"));
  EXPECT_FALSE(PathExists(id + "ca-key.blob"));
  // The CA key signs and the AK certifies with the bound keys: a VM gets its certificates.
  auto created = f.Vtmctl({"create", "--name", "after-binding"});
  EXPECT_EQ(created.exit_code, 0) << created.output;
  auto q = f.Vtmctl({"attest", "host", "--nonce", std::string(64, 'a'), "--output", f.state_dir() + "/../host.pb"});
  EXPECT_EQ(q.exit_code, 0) << q.output;
}

TEST(IdentityStartupTest, CaCertificateWhoseCertifyEvidenceIsForAnotherKeyIsRefused) {
  VtmdFixture f;
  ASSERT_TRUE(f.StartVtmd()) << f.VtmdLog();
  f.StopVtmd();
  // With the host's own CA key and AK, build a CA certificate whose TPM2_Certify is about a
  // different key: correctly signed, but the evidence does not match the certificate's key.
  {
    auto opened = Tpm::OpenTcti(f.host_tcti());
    ASSERT_TRUE(opened.ok()) << opened.error().ToString();
    HostTpmExecutor tpm(std::move(opened).value());
    std::string other_tpm2b_public, ak_tpm2b_public, ca_spki;
    TpmAttestation att;
    TpmKey ca_key;
    Status made = tpm.Run([&](Tpm& t) -> Status {
      // TPMs have three object slots, so keys are loaded and flushed in turn.
      VTM_ASSIGN_OR_RETURN(TpmKey srk, t.CreateSrk());
      VTM_ASSIGN_OR_RETURN(TpmKeyBlob other_blob, t.CreateKey(srk, KeyRole::kSigning, SecretBytes()));
      VTM_ASSIGN_OR_RETURN(TpmKeyBlob ak_blob, ReadKeyBlob(f.state_dir() + "/host-identity/ak-bound.blob"));
      VTM_ASSIGN_OR_RETURN(TpmKeyBlob ca_blob, ReadKeyBlob(f.state_dir() + "/host-identity/ca-key-bound.blob"));
      // Their auth values, from the master key (as root on this host in its sealed state can).
      VTM_ASSIGN_OR_RETURN(SecretBytes ak_auth, HostKeyAuth(t, f.state_dir(), kHostAkAuthLabel));
      VTM_ASSIGN_OR_RETURN(SecretBytes ca_auth, HostKeyAuth(t, f.state_dir(), kCaKeyAuthLabel));
      {
        VTM_ASSIGN_OR_RETURN(TpmKey ak, t.LoadKey(srk, ak_blob));
        VTM_RETURN_IF_ERROR(t.SetKeyAuth(ak, ak_auth));
        VTM_ASSIGN_OR_RETURN(TpmKey other, t.LoadKey(srk, other_blob));
        VTM_ASSIGN_OR_RETURN(TpmKeyPublic ak_pub, t.ReadPublic(ak));
        VTM_ASSIGN_OR_RETURN(TpmKeyPublic other_pub, t.ReadPublic(other));
        VTM_ASSIGN_OR_RETURN(att, t.Certify(other, ak, "nonce"));
        ak_tpm2b_public = ak_pub.tpm2b_public;
        other_tpm2b_public = other_pub.tpm2b_public;
      }
      VTM_ASSIGN_OR_RETURN(ca_key, t.LoadKey(srk, ca_blob));
      VTM_RETURN_IF_ERROR(t.SetKeyAuth(ca_key, ca_auth));
      VTM_ASSIGN_OR_RETURN(TpmKeyPublic ca_pub, t.ReadPublic(ca_key));
      ca_spki = ca_pub.spki_der;
      return OkStatus();
    });
    ASSERT_TRUE(made.ok()) << made.error().ToString();
    TpmSigner signer(tpm, ca_key, ca_spki);
    ca::CaCertRequest req;
    req.common_name = "forged evidence";
    req.serial = 7;
    req.evidence = {other_tpm2b_public, att.attest, att.signature, ak_tpm2b_public};
    auto forged = ca::CreateSelfSignedCaCertificate(signer, req);
    tpm.DropKey(ca_key);
    ASSERT_TRUE(forged.ok()) << forged.error().ToString();
    ASSERT_TRUE(WriteFileAtomic(f.state_dir() + "/host-identity/ca.pem", ca::DerToPem(*forged), 0644).ok());
  }
  auto refused = f.RunVtmdExpectingExit();
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("TPM2_Certify evidence does not verify"), std::string::npos) << refused.output;
}

TEST(IdentityStartupTest, CaCertificateForAnotherKeyMakesVtmdRefuseToStart) {
  VtmdFixture a, b;
  ASSERT_TRUE(a.StartVtmd()) << a.VtmdLog();
  ASSERT_TRUE(b.StartVtmd()) << b.VtmdLog();
  std::string b_ca = b.Vtmctl({"ca", "show"}).output;
  a.StopVtmd();
  // Replace a's CA certificate with b's: a's CA key is not the key in that certificate.
  ASSERT_TRUE(WriteFileAtomic(a.state_dir() + "/host-identity/ca.pem", b_ca, 0644).ok());
  auto refused = a.RunVtmdExpectingExit();
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("not a certificate for this host's CA key"), std::string::npos) << refused.output;
}

}  // namespace
}  // namespace vtm::testing
