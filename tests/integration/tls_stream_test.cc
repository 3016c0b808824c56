// Mutual TLS 1.3 streams and the Listener, with certificates made by the openssl CLI (a tool we
// did not write): frames round-trip and the handler sees the client's certificate; a client
// whose certificate comes from an untrusted CA, or that presents none, is refused; a TLS 1.2
// client is refused; Shutdown wakes a handler blocked reading.
#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "test_env.h"
#include "vtm/framing.h"
#include "vtm/fs.h"
#include "vtm/listener.h"
#include "vtm/tls.h"

namespace vtm::testing {
namespace {

class TlsStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MakeCa("ca");
    MakeCa("rogue-ca");
    Issue("server", "ca");
    Issue("client", "ca");
    Issue("rogue-client", "rogue-ca");
  }
  std::string P(const std::string& name) const { return dir_.path() + "/" + name; }
  void MakeCa(const std::string& name) { MakeTestCa(dir_.path(), name); }
  void Issue(const std::string& name, const std::string& ca) { IssueTestCertificate(dir_.path(), name, ca); }
  std::shared_ptr<TlsContext> Context(TlsContext::Role role, const std::string& name, const std::string& trusted) {
    auto creds = ReadTlsCredentialFiles(P(name + ".pem"), P(name + ".key"), P(trusted + ".pem"));
    EXPECT_TRUE(creds.ok()) << creds.error().ToString();
    auto ctx = TlsContext::Create(role, *creds);
    EXPECT_TRUE(ctx.ok()) << ctx.error().ToString();
    return *ctx;
  }

  // A TLS echo server on a Listener: reads one frame, answers "echo:" + frame + " from " + subject.
  void StartServer() {
    server_ctx_ = Context(TlsContext::Role::kServer, "server", "ca");
    auto fd = ListenTcp("127.0.0.1:0");
    ASSERT_TRUE(fd.ok()) << fd.error().ToString();
    port_ = BoundTcpPort(fd->get()).value();
    listener_ = std::make_unique<Listener>(
        std::move(fd).value(),
        [this](UniqueFd conn) {
          auto tls = server_ctx_->Accept(std::move(conn), std::chrono::seconds(10));
          if (!tls.ok()) {
            std::lock_guard<std::mutex> lock(mu_);
            server_errors_.push_back(tls.error());
            return;
          }
          auto frame = ReadFrame(**tls);
          if (!frame.ok()) return;
          (void)WriteFrame(**tls, "echo:" + *frame + " from " + (*tls)->peer_subject());
        },
        4, nullptr);
    serving_ = std::thread([this] { listener_->Serve(); });
  }
  void TearDown() override {
    if (listener_) {
      listener_->Shutdown();
      serving_.join();
    }
  }
  Result<std::unique_ptr<TlsStream>> ConnectAs(const std::string& name, const std::string& trusted) {
    auto ctx = Context(TlsContext::Role::kClient, name, trusted);
    VTM_ASSIGN_OR_RETURN(UniqueFd fd, ConnectTcp("127.0.0.1:" + std::to_string(port_)));
    return ctx->Connect(std::move(fd), std::chrono::seconds(10));
  }
  std::vector<Error> ServerErrors() {
    std::lock_guard<std::mutex> lock(mu_);
    return server_errors_;
  }

  TempDir dir_;
  std::shared_ptr<TlsContext> server_ctx_;
  std::unique_ptr<Listener> listener_;
  std::thread serving_;
  int port_ = 0;
  std::mutex mu_;
  std::vector<Error> server_errors_;
};

TEST_F(TlsStreamTest, FramesRoundTripAndTheHandlerSeesTheClientCertificate) {
  StartServer();
  auto tls = ConnectAs("client", "ca");
  ASSERT_TRUE(tls.ok()) << tls.error().ToString();
  EXPECT_NE((*tls)->peer_subject().find("CN=server"), std::string::npos) << (*tls)->peer_subject();
  std::string big(200000, 'x');
  ASSERT_TRUE(WriteFrame(**tls, big).ok());
  auto answer = ReadFrame(**tls);
  ASSERT_TRUE(answer.ok()) << answer.error().ToString();
  EXPECT_EQ(*answer, "echo:" + big + " from /CN=client");
  EXPECT_TRUE(ServerErrors().empty());
}

TEST_F(TlsStreamTest, ClientWithCertificateFromUntrustedCaIsRefused) {
  StartServer();
  auto tls = ConnectAs("rogue-client", "ca");
  // In TLS 1.3 the client finishes its handshake before the server checks the client's
  // certificate; the refusal arrives as an alert on the first read.
  if (tls.ok()) {
    (void)WriteFrame(**tls, "hello");
    auto answer = ReadFrame(**tls);
    EXPECT_FALSE(answer.ok());
  }
  for (int i = 0; i < 100 && ServerErrors().empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  auto errors = ServerErrors();
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].code(), ErrorCode::kPermissionDenied) << errors[0].ToString();
  EXPECT_NE(errors[0].message().find("not trusted"), std::string::npos) << errors[0].message();
}

TEST_F(TlsStreamTest, ClientThatDoesNotTrustTheServerRefusesIt) {
  StartServer();
  auto tls = ConnectAs("client", "rogue-ca");
  ASSERT_FALSE(tls.ok());
  EXPECT_EQ(tls.error().code(), ErrorCode::kPermissionDenied) << tls.error().ToString();
}

TEST_F(TlsStreamTest, ClientWithoutCertificateAndTls12ClientAreRefused) {
  StartServer();
  const std::string addr = "127.0.0.1:" + std::to_string(port_);
  // No client certificate.
  auto none = RunCommand({"openssl", "s_client", "-connect", addr, "-CAfile", P("ca.pem"), "-tls1_3", "-quiet"}, "hi\n");
  // TLS 1.2 with a valid certificate.
  auto old = RunCommand({"openssl", "s_client", "-connect", addr, "-CAfile", P("ca.pem"), "-tls1_2", "-cert",
                         P("client.pem"), "-key", P("client.key")},
                        "hi\n");
  EXPECT_NE(old.exit_code, 0) << old.output;
  for (int i = 0; i < 100 && ServerErrors().size() < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  auto errors = ServerErrors();
  ASSERT_EQ(errors.size(), 2u) << none.output << old.output;
  EXPECT_EQ(errors[0].code(), ErrorCode::kPermissionDenied) << errors[0].ToString();
  EXPECT_NE(errors[0].message().find("no certificate"), std::string::npos) << errors[0].message();
  EXPECT_NE(errors[1].message().find("TLS handshake"), std::string::npos) << errors[1].message();
}

TEST_F(TlsStreamTest, ShutdownWakesAHandlerBlockedReading) {
  StartServer();
  auto tls = ConnectAs("client", "ca");
  ASSERT_TRUE(tls.ok()) << tls.error().ToString();
  // The server handler now waits for a frame that never comes; Shutdown must not hang.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto start = std::chrono::steady_clock::now();
  listener_->Shutdown();
  serving_.join();
  listener_.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

}  // namespace
}  // namespace vtm::testing
