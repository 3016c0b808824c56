// HostTlsIdentity (host_tls.h) against a real host CA on an swtpm host TPM: nothing is issued
// while the CA key is the one that issued the identity; after the CA switches to a new key the
// identity is issued again by it, new handshakes get the new certificate, and a connection
// opened before keeps working on the old one; handshakes racing a re-issue all succeed with one
// certificate or the other (run under TSan in the sanitizer tier).
#include "host_tls.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "attestation_rig.h"
#include "vtm/fs.h"
#include "vtm/listener.h"
#include "vtm/tls.h"
#include "vtm/x509.h"

namespace vtm::testing {
namespace {

class HostTlsIdentityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(rig.Init().ok());
    MakeTestCa(dir.path(), "peer-ca");
    IssueTestCertificate(dir.path(), "peer", "peer-ca");
    auto issued = HostTlsIdentity::Issue(*rig.ca, *rig.registry, "test-host", "migration", *ReadFile(P("peer-ca.pem")));
    ASSERT_TRUE(issued.ok()) << issued.error().ToString();
    identity = std::move(issued).value();
    auto fd = ListenTcp("127.0.0.1:0");
    ASSERT_TRUE(fd.ok());
    server = "127.0.0.1:" + std::to_string(*BoundTcpPort(fd->get()));
    // An echo server that accepts each connection with the identity in use at that moment.
    listener = std::make_unique<Listener>(
        std::move(fd).value(),
        [this](UniqueFd conn) {
          auto tls = identity->server_context()->Accept(std::move(conn), std::chrono::seconds(10));
          if (!tls.ok()) return;
          char c = 0;
          while ((*tls)->ReadAll(&c, 1).ok() && (*tls)->WriteAll(&c, 1).ok()) {
          }
        },
        16, [](UniqueFd) {});
    serving = std::thread([this] { listener->Serve(); });
  }
  void TearDown() override {
    if (listener) listener->Shutdown();
    if (serving.joinable()) serving.join();
  }
  std::string P(const std::string& name) const { return dir.path() + "/" + name; }
  // Writes the host CA certificates given (DER) as trust anchors for Connect; returns the path.
  std::string TrustFile(const std::string& name, const std::vector<std::string>& ca_der) {
    std::string pems;
    for (const std::string& der : ca_der) pems += ca::DerToPem(der);
    EXPECT_TRUE(WriteFileAtomic(P(name), pems, 0644).ok());
    return P(name);
  }
  // A client trusting the CA certificates in trusted_pem.
  Result<std::unique_ptr<TlsStream>> Connect(const std::string& trusted_pem) {
    VTM_ASSIGN_OR_RETURN(TlsCredentials creds, ReadTlsCredentialFiles(P("peer.pem"), P("peer.key"), trusted_pem));
    VTM_ASSIGN_OR_RETURN(auto ctx, TlsContext::Create(TlsContext::Role::kClient, creds));
    VTM_ASSIGN_OR_RETURN(UniqueFd fd, ConnectTcp(server));
    return ctx->Connect(std::move(fd), std::chrono::seconds(10));
  }
  static bool Echoes(TlsStream& stream) {
    char c = 'x';
    return stream.WriteAll(&c, 1).ok() && stream.ReadAll(&c, 1).ok() && c == 'x';
  }

  AttestationRig rig;
  TempDir dir;
  std::unique_ptr<HostTlsIdentity> identity;
  std::string server;
  std::unique_ptr<Listener> listener;
  std::thread serving;
};

TEST_F(HostTlsIdentityTest, AfterTheCaKeySwitchesNewHandshakesGetACertificateOfTheNewKey) {
  const std::string old_ca = rig.ca->ca_certificate();
  const std::string old_cert = identity->certificate_der();
  const uint64_t old_serial = identity->serial();
  bool reissued = true;
  ASSERT_TRUE(identity->ReissueIfStale(&reissued).ok());
  EXPECT_FALSE(reissued) << "the CA key that issued it is still in use";
  EXPECT_EQ(identity->serial(), old_serial);

  auto open_before = Connect(TrustFile("old-ca.pem", {old_ca}));
  ASSERT_TRUE(open_before.ok()) << open_before.error().ToString();
  EXPECT_EQ((*open_before)->peer_certificate_der(), old_cert);

  auto begun = rig.ca->BeginRotation(/*self_signed=*/true);
  ASSERT_TRUE(begun.ok()) << begun.error().ToString();
  const std::string new_ca = rig.ca->ca_certificate();
  ASSERT_NE(new_ca, old_ca);
  ASSERT_TRUE(identity->ReissueIfStale(&reissued).ok());
  EXPECT_TRUE(reissued);
  EXPECT_NE(identity->serial(), old_serial);
  EXPECT_TRUE(ca::VerifySignedBy(identity->certificate_der(), new_ca).ok());
  EXPECT_FALSE(ca::VerifySignedBy(identity->certificate_der(), old_ca).ok());

  auto after = Connect(TrustFile("new-ca.pem", {new_ca}));
  ASSERT_TRUE(after.ok()) << after.error().ToString();
  EXPECT_EQ((*after)->peer_certificate_der(), identity->certificate_der());
  EXPECT_TRUE(Echoes(**after));
  EXPECT_FALSE(Connect(P("old-ca.pem")).ok()) << "the old CA no longer vouches for what the endpoint presents";
  EXPECT_TRUE(Echoes(**open_before)) << "a connection opened before finishes on the old certificate";
  // Nothing more to do until the key changes again.
  ASSERT_TRUE(identity->ReissueIfStale(&reissued).ok());
  EXPECT_FALSE(reissued);
}

TEST_F(HostTlsIdentityTest, HandshakesRacingAReissueAllSucceed) {
  const std::string first_ca = rig.ca->ca_certificate();
  ASSERT_TRUE(rig.ca->BeginRotation(/*self_signed=*/true).ok());
  const std::string second_ca = rig.ca->ca_certificate();
  const std::string both = TrustFile("both.pem", {first_ca, second_ca});
  std::atomic<bool> stop{false};
  std::atomic<int> handshakes{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < 2; ++i) {
    clients.emplace_back([&] {
      while (!stop) {
        auto c = Connect(both);
        if (c.ok() && Echoes(**c)) {
          ++handshakes;
        } else {
          ++failures;
        }
      }
    });
  }
  bool reissued = false;
  Status st = identity->ReissueIfStale(&reissued);
  // Some handshakes after the swap too (with the new certificate).
  const int after_swap = handshakes + 10;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (handshakes < after_swap && failures == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  stop = true;
  for (auto& t : clients) t.join();
  ASSERT_TRUE(st.ok()) << st.error().ToString();
  EXPECT_TRUE(reissued);
  EXPECT_EQ(failures, 0);
  EXPECT_GE(handshakes, after_swap);
  EXPECT_TRUE(ca::VerifySignedBy(identity->certificate_der(), second_ca).ok());
}

}  // namespace
}  // namespace vtm::testing
