// The service's end of a trusted connection (vtm/trusted_service.h) against the device's
// (vtm/trusted_connection.h) over loopback, with software keys: a device from the trusted
// device CA is admitted; one from another CA, or without a certificate (openssl s_client, a
// tool we did not write), is refused with a reason on the service and an alert on the device.
// The attestation exchange: the service quotes on exactly the nonce the device derives from
// its side of the session, another session gives another nonce, and malformed challenges or a
// failed quote are answered with a refusal that names the reason. The vTPM-held keys and the
// real quote are in tests/e2e/trusted_connection_guest_test.cc.
#include "vtm/trusted_service.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <ctime>
#include <thread>

#include "test_env.h"
#include "vtm/fs.h"
#include "vtm/net.h"
#include "vtm/subprocess.h"
#include "vtm/session_attestation.h"
#include "vtm/x509.h"

namespace vtm::tc {
namespace {

using testing::AsString;
using testing::IssueTestCertificate;
using testing::MakeTestCa;
using testing::RunCommand;
using testing::TempDir;

std::string Log(const std::string& path) {
  auto text = ReadFile(path);
  return text.ok() ? *text : "";
}

constexpr char kVm[] = "6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb";

class TrustedServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The service: an IK certificate from a software host CA for a software key.
    auto ca = ca::SoftwareSigner::Generate();
    ASSERT_TRUE(ca.ok());
    ca::CaCertRequest req;
    req.common_name = "vtm host CA test";
    req.validity = {std::time(nullptr) - 60, 0};
    auto ca_der = ca::CreateSelfSignedCaCertificate(**ca, req);
    ASSERT_TRUE(ca_der.ok()) << ca_der.error().ToString();
    EVP_PKEY* ik = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
    unsigned char* spki = nullptr;
    const int n = i2d_PUBKEY(ik, &spki);
    ca::IdentityCertRequest r{std::string(reinterpret_cast<char*>(spki), static_cast<size_t>(n)), kVm, "api", false, 10,
                              {std::time(nullptr) - 60, 0}};
    OPENSSL_free(spki);
    auto ik_der = ca::IssueIdentityCertificate(**ca, *ca_der, r);
    ASSERT_TRUE(ik_der.ok()) << ik_der.error().ToString();
    BIO* bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(bio, ik, nullptr, nullptr, 0, nullptr, nullptr);
    char* pem = nullptr;
    const long len = BIO_get_mem_data(bio, &pem);
    ASSERT_TRUE(WriteFileAtomic(P("ik.key"), std::string(pem, static_cast<size_t>(len)), 0600).ok());
    BIO_free(bio);
    EVP_PKEY_free(ik);
    host_ca_pem_ = ca::DerToPem(*ca_der);
    // CRLs of the host CA: one revoking nothing, one revoking the IK (serial 10).
    const std::time_t now = std::time(nullptr);
    auto clean = ca::CreateCrl(**ca, *ca_der, {}, 1, now - 60, now + 3600);
    auto revoking = ca::CreateCrl(**ca, *ca_der, {{10, now - 30}}, 2, now - 30, now + 3600);
    ASSERT_TRUE(clean.ok() && revoking.ok());
    clean_crl_ = *clean;
    revoking_crl_ = *revoking;
    service_.certificate_chain_pem = ca::DerToPem(*ik_der) + host_ca_pem_;
    service_.key_uri = P("ik.key");
    MakeTestCa(dir_.path(), "devca");
    IssueTestCertificate(dir_.path(), "device", "devca");
    MakeTestCa(dir_.path(), "rogueca");
    IssueTestCertificate(dir_.path(), "rogue", "rogueca");
    service_.trusted_device_ca_pem = ReadFile(P("devca.pem")).value();
    service_.allow_missing_crl = true;
    service_.timeout = std::chrono::seconds(20);
    auto fd = ListenTcp("127.0.0.1", 0, &port_);
    ASSERT_TRUE(fd.ok()) << fd.error().ToString();
    listen_ = std::move(*fd);
  }

  std::string P(const std::string& name) const { return dir_.path() + "/" + name; }

  ConnectOptions Device(const std::string& who) const {
    ConnectOptions o;
    o.port = port_;
    o.device.certificate_chain_pem = ReadFile(P(who + ".pem")).value();
    o.device.key_uri = P(who + ".key");
    o.expect.trusted_ca_pem = host_ca_pem_;
    o.expect.allow_missing_crl = true;
    o.expect.vm_uuid = kVm;
    o.expect.service = "api";
    o.timeout = std::chrono::seconds(20);
    return o;
  }

  static Result<std::unique_ptr<TrustedConnection>> Connect(const ConnectOptions& o) {
    VTM_ASSIGN_OR_RETURN(auto connector, TrustedConnector::Create(o));
    return connector->Connect();
  }

  TempDir dir_;
  ServiceOptions service_;
  std::string host_ca_pem_;
  std::string clean_crl_, revoking_crl_;
  UniqueFd listen_;
  int port_ = 0;
};

TEST_F(TrustedServiceTest, AdmitsTheTrustedDeviceAndRefusesOthersWithReason) {
  auto service = TrustedService::Create(service_);
  ASSERT_TRUE(service.ok()) << service.error().ToString();
  std::vector<std::string> outcomes;
  std::thread server([&] {
    for (int i = 0; i < 3; ++i) {
      auto conn = (*service)->Accept(listen_.get());
      if (!conn.ok()) {
        outcomes.push_back(conn.error().ToString());
        continue;
      }
      outcomes.push_back("accepted " + (*conn)->device().subject);
      auto line = (*conn)->ReadUntil('\n', 100);
      if (line.ok()) (void)(*conn)->Write("echo " + *line);
    }
  });
  {
    auto conn = Connect(Device("device"));
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    ASSERT_TRUE((*conn)->Write("hi\n").ok());
    auto answer = (*conn)->ReadUntil('\n', 100);
    ASSERT_TRUE(answer.ok()) << answer.error().ToString();
    EXPECT_EQ(*answer, "echo hi\n");
  }
  {
    auto conn = Connect(Device("rogue"));
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();  // TLS 1.3: the client is done first
    (void)(*conn)->Write("hi\n");
    auto answer = (*conn)->ReadUntil('\n', 100);
    ASSERT_FALSE(answer.ok());
    EXPECT_EQ(answer.error().code(), ErrorCode::kPermissionDenied);
    EXPECT_NE(answer.error().message().find("the service refused this device"), std::string::npos)
        << answer.error().ToString();
  }
  auto s_client = RunCommand({"bash", "-c",
                              "echo hi | timeout 20 openssl s_client -tls1_3 -quiet -connect 127.0.0.1:" +
                                  std::to_string(port_) + " 2>&1"});
  EXPECT_NE(s_client.output.find("alert certificate required"), std::string::npos) << s_client.output;
  server.join();
  ASSERT_EQ(outcomes.size(), 3u);
  EXPECT_EQ(outcomes[0], "accepted /CN=device");
  EXPECT_NE(outcomes[1].find("refused a device: the device's certificate /CN=rogue"), std::string::npos) << outcomes[1];
  EXPECT_NE(outcomes[1].find("does not chain to a trusted CA"), std::string::npos) << outcomes[1];
  EXPECT_NE(outcomes[2].find("it presented no certificate"), std::string::npos) << outcomes[2];
}

// The device checks the service's IK certificate against the host CA's CRL in the handshake.
TEST_F(TrustedServiceTest, DeviceRefusesARevokedServiceCertificate) {
  auto service = TrustedService::Create(service_);
  ASSERT_TRUE(service.ok()) << service.error().ToString();
  std::thread server([&] {
    for (int i = 0; i < 2; ++i) (void)(*service)->Accept(listen_.get());
  });
  ConnectOptions o = Device("device");
  o.expect.allow_missing_crl = false;
  o.expect.crls = {clean_crl_};
  auto ok = Connect(o);
  EXPECT_TRUE(ok.ok()) << ok.error().ToString();
  ok = Error(ErrorCode::kInternal, "closed");
  o.expect.crls = {revoking_crl_};
  auto revoked = Connect(o);
  server.join();
  ASSERT_FALSE(revoked.ok());
  EXPECT_EQ(revoked.error().code(), ErrorCode::kPermissionDenied);
  EXPECT_NE(revoked.error().message().find("IK is revoked (listed in the CRL of /O=vtm/CN=vtm host CA test)"),
            std::string::npos)
      << revoked.error().ToString();
}

TEST_F(TrustedServiceTest, RefusesToStartWithoutADeviceCaOrWithAKeyNotMatchingItsCertificate) {
  ServiceOptions o = service_;
  o.trusted_device_ca_pem.clear();
  auto r = TrustedService::Create(o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("no trusted device CA"), std::string::npos) << r.error().ToString();
  o = service_;
  o.key_uri = P("rogue.key");
  r = TrustedService::Create(o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("does not match the service certificate"), std::string::npos)
      << r.error().ToString();
}

TEST_F(TrustedServiceTest, QuotesOnTheNonceOfThisSessionAndRefusesBadChallengesWithReason) {
  auto service = TrustedService::Create(service_);
  ASSERT_TRUE(service.ok()) << service.error().ToString();
  std::vector<std::string> quoted_nonces;
  std::vector<std::string> results;
  std::atomic<bool> fail_quote{false};
  const Quoter quoter = [&](const std::string& nonce, const std::string& selection) -> Result<QuoteFiles> {
    quoted_nonces.push_back(nonce);
    if (fail_quote) return Error(ErrorCode::kUnavailable, "tpm2_quote failed: no AK at 0x81000002");
    return QuoteFiles{"msg:" + selection, "sig", "pcrs"};
  };
  std::thread server([&] {
    for (int i = 0; i < 4; ++i) {
      auto conn = (*service)->Accept(listen_.get());
      if (!conn.ok()) continue;
      for (;;) {  // challenges until the device closes
        auto first = (*conn)->Read(1);
        if (!first.ok() || first->empty()) break;
        auto s = AnswerAttestationChallenge(**conn, *first, quoter, "event log");
        results.push_back(!s.ok() ? "closed: " + s.error().message() : s->quoted ? "ok" : "refused: " + s->reason);
        if (!s.ok()) break;
      }
    }
  });
  std::string nonces[2];
  for (auto& expected : nonces) {
    auto conn = Connect(Device("device"));
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    auto x = ChallengeService(**conn, std::time(nullptr), "sha256:0,10");
    ASSERT_TRUE(x.ok()) << x.error().ToString();
    ASSERT_TRUE(x->answer.quoted) << x->answer.reason;
    EXPECT_EQ(x->answer.quote_message, "msg:sha256:0,10");
    EXPECT_EQ(x->answer.event_log, "event log");
    auto exporter = (*conn)->ExportKeyingMaterial(kAttestationExporterLabel, kAttestationExporterSize);
    ASSERT_TRUE(exporter.ok());
    expected = SessionNonce(AsString(*exporter), x->challenge);
    ASSERT_FALSE(quoted_nonces.empty());
    EXPECT_EQ(quoted_nonces.back(), expected) << "the service quoted on another nonce than the device derives";
  }
  EXPECT_NE(nonces[0], nonces[1]);
  {  // A malformed challenge, then a failed quote: refusals with the reason.
    auto conn = Connect(Device("device"));
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    AttestationChallenge bad;
    bad.random = std::string(kChallengeRandomSize, 'r');
    bad.pcr_selection = "sha256:0;reboot";
    ASSERT_TRUE((*conn)->Write(EncodeChallenge(bad)).ok());
    auto frame = ReadAttestationFrame(**conn);
    ASSERT_TRUE(frame.ok()) << frame.error().ToString();
    auto answer = DecodeAnswer(*frame);
    ASSERT_TRUE(answer.ok()) << answer.error().ToString();
    EXPECT_FALSE(answer->quoted);
    EXPECT_NE(answer->reason.find("has a character outside"), std::string::npos) << answer->reason;
  }
  {
    fail_quote = true;
    auto conn = Connect(Device("device"));
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    auto x = ChallengeService(**conn, std::time(nullptr));
    ASSERT_TRUE(x.ok()) << x.error().ToString();
    EXPECT_FALSE(x->answer.quoted);
    auto linked = LinkToHost(**conn, *x, HostAttestationEndpoint{});
    ASSERT_FALSE(linked.ok());
    EXPECT_EQ(linked.error().code(), ErrorCode::kPermissionDenied);
    EXPECT_NE(linked.error().message().find("the service did not quote its vTPM: tpm2_quote failed: no AK"),
              std::string::npos)
        << linked.error().ToString();
  }
  server.join();
  ASSERT_EQ(results.size(), 4u);
  EXPECT_EQ(results[0], "ok");
  EXPECT_NE(results[2].find("closed: the PCR selection"), std::string::npos) << results[2];
  EXPECT_NE(results[2].find("has a character outside"), std::string::npos) << results[2];
  EXPECT_NE(results[3].find("refused: tpm2_quote failed: no AK at 0x81000002"), std::string::npos) << results[3];
}

// vtm-tc-serve as a TLS-terminating front: the device's bytes reach a plain backend and its
// answers come back; a challenge before the data is answered (here with a refusal: no TPM for
// tpm2_quote on this host) with tpm2_quote's reason.
TEST_F(TrustedServiceTest, VtmTcServeForwardsToAPlainBackend) {
  int backend_port = 0;
  auto backend = ListenTcp("127.0.0.1", 0, &backend_port);
  ASSERT_TRUE(backend.ok()) << backend.error().ToString();
  std::thread echo([&] {  // upper-cases what it gets, until the front closes
    UniqueFd c(accept(backend->get(), nullptr, nullptr));
    char buf[4096];
    for (ssize_t n; c.valid() && (n = read(c.get(), buf, sizeof buf)) > 0;) {
      for (ssize_t k = 0; k < n; ++k) buf[k] = static_cast<char>(std::toupper(static_cast<unsigned char>(buf[k])));
      if (write(c.get(), buf, static_cast<size_t>(n)) != n) break;
    }
  });
  struct JoinEcho {  // also when an assertion returns early: wake the accept
    std::thread& t;
    int fd;
    ~JoinEcho() {
      shutdown(fd, SHUT_RDWR);
      t.join();
    }
  } join_echo{echo, backend->get()};
  listen_.reset();  // the front listens itself
  auto port = PickFreeTcpPort();
  ASSERT_TRUE(port.ok());
  port_ = *port;
  ASSERT_TRUE(WriteFileAtomic(P("fullchain.pem"), service_.certificate_chain_pem, 0644).ok());
  SpawnOptions so;
  so.output_file = P("serve.log");
  so.parent_death_signal = SIGKILL;
  so.env = {"PATH=/usr/bin:/bin", "TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port=1"};  // no TPM there
  auto serve = Subprocess::Spawn({testing::BuildPath("trusted-connection/vtm-tc-serve"), "--port",
                                  std::to_string(port_), "--address", "127.0.0.1", "--cert", P("fullchain.pem"),
                                  "--key", P("ik.key"), "--device-ca", P("devca.pem"), "--no-crl", "--forward",
                                  "127.0.0.1:" + std::to_string(backend_port), "--connections", "1"},
                                 so);
  ASSERT_TRUE(serve.ok()) << serve.error().ToString();
  ASSERT_TRUE(WaitForTcpPort(port_, std::chrono::seconds(20)).ok()) << Log(P("serve.log"));
  {
    auto conn = Connect(Device("device"));
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    auto x = ChallengeService(**conn, std::time(nullptr));
    ASSERT_TRUE(x.ok()) << x.error().ToString();
    EXPECT_FALSE(x->answer.quoted);
    EXPECT_NE(x->answer.reason.find("tpm2_quote by the AK 0x81000002 over sha256:0,1,2,3,4,5,6,7,10 failed"),
              std::string::npos)
        << x->answer.reason;
    ASSERT_TRUE((*conn)->Write("reading 42\n").ok());
    auto answer = (*conn)->ReadUntil('\n', 100);
    ASSERT_TRUE(answer.ok()) << answer.error().ToString();
    EXPECT_EQ(*answer, "READING 42\n");
  }
  auto status = serve->Wait(std::chrono::seconds(20));
  ASSERT_TRUE(status.ok());
  const std::string log = Log(P("serve.log"));
  EXPECT_NE(log.find("accepted device /CN=device"), std::string::npos) << log;
  EXPECT_NE(log.find("attestation challenge refused: tpm2_quote"), std::string::npos) << log;
}

}  // namespace
}  // namespace vtm::tc
