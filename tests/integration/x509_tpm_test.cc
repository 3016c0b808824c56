// Integration tests of vtm_ca against a real TPM (swtpm) driven by the independent tpm2-tools:
// TPM2_Certify evidence made by a TPM verifies, and each kind of wrong evidence fails with its
// own message; a CA key inside the TPM signs a CA certificate that `openssl verify` accepts.
// The swtpm is owned by the fixture, so it is stopped even when an assertion fails.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "test_env.h"
#include "vtm/net.h"
#include "vtm/subprocess.h"
#include "vtm/x509.h"

namespace vtm::ca {
namespace {

using vtm::testing::CommandResult;
using vtm::testing::RunCommand;
using vtm::testing::TempDir;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& data) { std::ofstream(path, std::ios::binary) << data; }

// DER SubjectPublicKeyInfo from the PEM that `tpm2_readpublic -f pem` writes.
std::string SpkiFromPem(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  EVP_PKEY* key = PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (key == nullptr) return {};
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(key, &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len > 0 ? len : 0));
  OPENSSL_free(der);
  EVP_PKEY_free(key);
  return out;
}

bool LoopbackPortFree(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool free = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  close(fd);
  return free;
}

Validity OneYear() {
  const std::time_t now = std::time(nullptr);
  return Validity{now - 60, now + std::time_t{365} * 24 * 3600};
}

class X509TpmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The swtpm TCTI finds the control channel at port + 1, so both must be free.
    for (int attempt = 0; attempt < 50 && port_ == 0; ++attempt) {
      auto port = PickFreeTcpPort();
      ASSERT_TRUE(port.ok()) << port.error().ToString();
      if (*port < 65535 && LoopbackPortFree(*port + 1)) port_ = *port;
    }
    ASSERT_NE(port_, 0) << "no pair of free loopback ports";
    const std::string state = dir_.path() + "/tpm-state";
    ASSERT_EQ(RunCommand({"mkdir", "-p", state}).exit_code, 0);
    SpawnOptions options;
    options.output_file = dir_.path() + "/swtpm.log";
    auto swtpm = Subprocess::Spawn({FindProgram("swtpm"), "socket", "--tpm2", "--server",
                                    "type=tcp,port=" + std::to_string(port_) + ",bindaddr=127.0.0.1", "--ctrl",
                                    "type=tcp,port=" + std::to_string(port_ + 1) + ",bindaddr=127.0.0.1", "--tpmstate",
                                    "dir=" + state, "--flags", "not-need-init,startup-clear"},
                                   options);
    ASSERT_TRUE(swtpm.ok()) << swtpm.error().ToString();
    swtpm_ = std::move(swtpm).value();
    auto up = WaitForTcpPort(port_, std::chrono::seconds(10));
    ASSERT_TRUE(up.ok()) << up.error().ToString() << "\n" << ReadFile(options.output_file);

    ASSERT_NO_FATAL_FAILURE(
        Tpm2({"tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc", "-c", Path("primary.ctx")}));
    for (const char* key : {"key1", "key2"})
      ASSERT_NO_FATAL_FAILURE(CreateKey(key, "ecc", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign"));
    for (const char* ak : {"ak1", "ak2"}) {
      ASSERT_NO_FATAL_FAILURE(CreateKey(ak, "ecc:ecdsa-sha256:null",
                                        "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign"));
    }
  }

  void TearDown() override { swtpm_.Terminate(); }

  std::string Path(const std::string& name) const { return dir_.path() + "/" + name; }
  std::string Tcti() const { return "--tcti=swtpm:host=127.0.0.1,port=" + std::to_string(port_); }

  // Runs a tpm2-tools command against this test's swtpm; transient objects are flushed after
  // each one so the TPM's few object slots never fill up.
  std::string Tpm2(std::vector<std::string> argv) {
    argv.insert(argv.begin() + 1, Tcti());
    CommandResult r = RunCommand(argv);
    EXPECT_EQ(r.exit_code, 0) << argv[0] << ": " << r.output;
    RunCommand({"tpm2_flushcontext", Tcti(), "-t"});
    return r.output;
  }

  // <name>.pub (TPM2B_PUBLIC), <name>.priv, <name>.ctx and <name>.pem (SubjectPublicKeyInfo).
  void CreateKey(const std::string& name, const std::string& alg, const std::string& attributes) {
    Tpm2({"tpm2_create", "-C", Path("primary.ctx"), "-G", alg, "-a", attributes, "-u", Path(name + ".pub"), "-r",
          Path(name + ".priv"), "-c", Path(name + ".ctx")});
    Tpm2({"tpm2_readpublic", "-c", Path(name + ".ctx"), "-f", "pem", "-o", Path(name + ".pem")});
    ASSERT_FALSE(SpkiFromPem(ReadFile(Path(name + ".pem"))).empty());
  }

  // TPM2_Certify of `key` by `ak`, as vtmd records it for the host CA key.
  CertifyEvidence Certify(const std::string& key, const std::string& ak) {
    Tpm2({"tpm2_certify", "-c", Path(key + ".ctx"), "-C", Path(ak + ".ctx"), "-g", "sha256", "-o",
          Path(key + ".attest"), "-s", Path(key + ".sig")});
    CertifyEvidence e;
    e.key_tpm2b_public = ReadFile(Path(key + ".pub"));
    e.attest = ReadFile(Path(key + ".attest"));
    e.signature = ReadFile(Path(key + ".sig"));  // TPMT_SIGNATURE: tpm2_certify's default format
    e.ak_tpm2b_public = ReadFile(Path(ak + ".pub"));
    return e;
  }

  std::string Spki(const std::string& key) { return SpkiFromPem(ReadFile(Path(key + ".pem"))); }

  TempDir dir_;
  int port_ = 0;
  Subprocess swtpm_;
};

// A CA key inside the TPM: every signature is a tpm2_sign of the digest by that key, the way
// vtmd's TPM-resident CA key signs (there through ESAPI).
class ToolsTpmSigner : public Signer {
 public:
  ToolsTpmSigner(std::string tcti, std::string key_ctx, std::string work_dir, std::string spki)
      : tcti_(std::move(tcti)), key_ctx_(std::move(key_ctx)), dir_(std::move(work_dir)), spki_(std::move(spki)) {}
  Result<std::string> SignDigest(const std::string& digest) override {
    WriteFile(dir_ + "/tbs.digest", digest);
    // -d: the input is already a digest; -f plain: a DER ECDSA-Sig-Value.
    CommandResult r = RunCommand({"tpm2_sign", tcti_, "-c", key_ctx_, "-g", "sha256", "-d", "-f", "plain", "-o",
                                  dir_ + "/tbs.sig", dir_ + "/tbs.digest"});
    RunCommand({"tpm2_flushcontext", tcti_, "-t"});
    if (r.exit_code != 0) return Error(ErrorCode::kTpm, "tpm2_sign failed: " + r.output);
    return ReadFile(dir_ + "/tbs.sig");
  }
  const std::string& PublicKeySpki() const override { return spki_; }

 private:
  std::string tcti_, key_ctx_, dir_, spki_;
};

TEST_F(X509TpmTest, RealCertifyEvidenceVerifiesAndEachForgeryFailsDistinctly) {
  const CertifyEvidence evidence = Certify("key1", "ak1");
  const CertifyEvidence evidence_key2 = Certify("key2", "ak1");

  auto ca_key = SoftwareSigner::Generate();
  ASSERT_TRUE(ca_key.ok());
  CaCertRequest ca_req;
  ca_req.common_name = "test CA";
  ca_req.validity = OneYear();
  auto ca = CreateSelfSignedCaCertificate(**ca_key, ca_req);
  ASSERT_TRUE(ca.ok()) << ca.error().ToString();
  auto issue = [&](const std::string& key, uint64_t serial) {
    IdentityCertRequest req;
    req.spki_der = Spki(key);
    req.vm_uuid = "6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb";
    req.attestation_key = false;
    req.serial = serial;
    req.validity = OneYear();
    auto cert = IssueIdentityCertificate(**ca_key, *ca, req);
    EXPECT_TRUE(cert.ok()) << cert.error().ToString();
    return cert.ok() ? *cert : std::string();
  };
  const std::string cert1 = issue("key1", 2);
  const std::string cert2 = issue("key2", 3);

  auto message = [](const std::string& cert, const CertifyEvidence& e) {
    auto s = VerifyCertifyEvidence(cert, e);
    return s.ok() ? std::string("OK") : s.error().message();
  };
  EXPECT_EQ(message(cert1, evidence), "OK");
  EXPECT_EQ(message(DerToPem(cert2), evidence_key2), "OK");

  CertifyEvidence flipped = evidence;
  flipped.attest[flipped.attest.size() - 1] ^= 0x80;
  EXPECT_NE(message(cert1, flipped).find("signature over attest does not verify"), std::string::npos)
      << message(cert1, flipped);

  CertifyEvidence other_public = evidence;
  other_public.key_tpm2b_public = evidence_key2.key_tpm2b_public;
  EXPECT_NE(message(cert1, other_public).find("certified TPM name is not the name of keyPublic"), std::string::npos)
      << message(cert1, other_public);

  CertifyEvidence wrong_ak = evidence;
  wrong_ak.ak_tpm2b_public = ReadFile(Path("ak2.pub"));
  EXPECT_NE(message(cert1, wrong_ak).find("signature over attest does not verify"), std::string::npos)
      << message(cert1, wrong_ak);

  EXPECT_NE(message(cert2, evidence).find("not the certificate's public key"), std::string::npos)
      << message(cert2, evidence);

  // A signing key that is not restricted cannot vouch for anything.
  CertifyEvidence unrestricted_ak = evidence;
  unrestricted_ak.ak_tpm2b_public = evidence_key2.key_tpm2b_public;
  EXPECT_NE(message(cert1, unrestricted_ak).find("not a restricted signing key"), std::string::npos);
}

TEST_F(X509TpmTest, CaKeyInsideTheTpmSignsVerifiableCertificates) {
  ToolsTpmSigner tpm_ca(Tcti(), Path("key1.ctx"), dir_.path(), Spki("key1"));
  CaCertRequest req;
  req.common_name = "vtm host CA swtpm";
  req.validity = OneYear();
  req.evidence = Certify("key1", "ak1");
  auto ca = CreateSelfSignedCaCertificate(tpm_ca, req);
  ASSERT_TRUE(ca.ok()) << ca.error().ToString();
  WriteFile(Path("ca.pem"), DerToPem(*ca));

  auto evidence = ExtractCertifyEvidence(*ca);
  ASSERT_TRUE(evidence.ok()) << evidence.error().ToString();
  auto verified = VerifyCertifyEvidence(*ca, *evidence);
  EXPECT_TRUE(verified.ok()) << verified.error().ToString();

  EkCertRequest ek;
  ek.ek_spki_der = Spki("key2");
  ek.tpm_manufacturer = "id:00001014";
  ek.tpm_model = "swtpm";
  ek.tpm_version = "id:20191023";
  ek.tpm_spec_revision = 164;
  ek.serial = 2;
  ek.validity = OneYear();
  auto ek_cert = IssueEkCertificate(tpm_ca, *ca, ek);
  ASSERT_TRUE(ek_cert.ok()) << ek_cert.error().ToString();
  WriteFile(Path("ek.pem"), DerToPem(*ek_cert));
  for (const char* cert : {"ca.pem", "ek.pem"}) {
    auto r = RunCommand({"openssl", "verify", "-x509_strict", "-CAfile", Path("ca.pem"), Path(cert)});
    EXPECT_EQ(r.exit_code, 0) << cert << ": " << r.output;
  }
  auto crl = CreateCrl(tpm_ca, *ca, {RevokedCert{2, std::time(nullptr) - 10}}, 1, std::time(nullptr) - 60,
                       std::time(nullptr) + 3600);
  ASSERT_TRUE(crl.ok()) << crl.error().ToString();
  WriteFile(Path("crl.pem"), DerToPem(*crl, "X509 CRL"));
  auto revoked = RunCommand(
      {"openssl", "verify", "-crl_check", "-CRLfile", Path("crl.pem"), "-CAfile", Path("ca.pem"), Path("ek.pem")});
  EXPECT_NE(revoked.output.find("certificate revoked"), std::string::npos) << revoked.output;
}

}  // namespace
}  // namespace vtm::ca
