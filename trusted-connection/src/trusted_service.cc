// The service's end of a trusted connection; see trusted_service.h.
#include "vtm/trusted_service.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "internal/service_chain.h"
#include "internal/tls_channel.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/subprocess.h"

extern char** environ;

namespace vtm::tc {
namespace {

using X509Ptr = OsslPtr<X509, X509_free>;
constexpr char kPeer[] = "the device";

std::string SubjectOf(X509* cert) {
  char buf[512];
  X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof buf);
  return buf;
}

// The variables tpm2-tools need, passed on to tpm2_quote.
std::vector<std::string> ToolEnvironment() {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string v = *e;
    for (const char* keep : {"PATH=", "LD_LIBRARY_PATH=", "TPM2TOOLS_TCTI="}) {
      if (v.rfind(keep, 0) == 0) env.push_back(v);
    }
  }
  return env;
}

Result<QuoteFiles> QuoteWithTools(const std::string& ak, const std::string& tcti, const std::string& nonce,
                                  const std::string& selection) {
  char dir_template[] = "/tmp/vtm-tc-quote.XXXXXX";
  if (mkdtemp(dir_template) == nullptr) return Error(ErrorCode::kInternal, "no temp dir for the quote");
  const std::string dir = dir_template;
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      for (const char* f : {"/msg", "/sig", "/pcrs", "/log"}) (void)unlink((dir + f).c_str());
      (void)rmdir(dir.c_str());
    }
  } cleanup{dir};
  SpawnOptions so;
  so.output_file = dir + "/log";
  so.env = ToolEnvironment();
  std::vector<std::string> argv = {FindProgram("tpm2_quote"), "-c", ak, "-l", selection, "-q", HexEncode(nonce),
                                   "-g", "sha256", "-m", dir + "/msg", "-s", dir + "/sig", "-o", dir + "/pcrs"};
  if (!tcti.empty()) argv.insert(argv.begin() + 1, {"-T", tcti});
  auto child = Subprocess::Spawn(argv, so);
  if (!child.ok()) return std::move(child).error().Context("starting tpm2_quote");
  // Polled every millisecond: Subprocess::Wait backs off to 50 ms steps, which would add up to
  // ~30 ms to a ~35 ms quote the device is waiting for.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
  while (child->running() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  auto status = child->Wait(std::chrono::milliseconds(0));
  if (!status.ok() || !WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
    auto log = ReadFile(dir + "/log");
    return Error(ErrorCode::kUnavailable,
                 "tpm2_quote by the AK " + ak + " over " + selection + " failed: " + (log.ok() ? *log : ""));
  }
  QuoteFiles q;
  VTM_ASSIGN_OR_RETURN(q.message, ReadFile(dir + "/msg"));
  VTM_ASSIGN_OR_RETURN(q.signature, ReadFile(dir + "/sig"));
  VTM_ASSIGN_OR_RETURN(q.pcrs, ReadFile(dir + "/pcrs"));
  return q;
}

}  // namespace

struct TrustedService::Impl {
  ServiceOptions options;
  std::shared_ptr<internal::ProviderContext> providers;
  SslCtxPtr ctx;
};

TrustedService::TrustedService(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TrustedService::~TrustedService() = default;

Result<std::shared_ptr<TrustedService>> TrustedService::Create(const ServiceOptions& o) {
  if (o.trusted_device_ca_pem.empty()) {
    return Error(ErrorCode::kInvalidArgument, "no trusted device CA given: the service admits only devices it can check");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = o;
  VTM_ASSIGN_OR_RETURN(impl->providers, internal::ProviderContext::Create(internal::IsTpmKeyUri(o.key_uri), o.tcti));
  VTM_ASSIGN_OR_RETURN(impl->ctx, internal::NewTls13Context(*impl->providers, TLS_server_method()));
  SSL_CTX* ctx = impl->ctx.get();
  VTM_RETURN_IF_ERROR(internal::UseIdentity(ctx, impl->providers, o.certificate_chain_pem, o.key_uri, "service"));
  VTM_ASSIGN_OR_RETURN(internal::X509StorePtr store,
                       internal::MakeTrustStore(o.trusted_device_ca_pem, o.device_crls, o.allow_missing_crl));
  SSL_CTX_set1_cert_store(ctx, store.get());
  // The device's CertificateVerify is checked here, in the default provider: only the
  // service's own signature is in the vTPM.
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, internal::KeepRefusedPeer);
  return std::shared_ptr<TrustedService>(new TrustedService(std::move(impl)));
}

Result<std::unique_ptr<ServiceConnection>> TrustedService::Accept(int listen_fd) const {
  UniqueFd fd(accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
  if (!fd.valid()) return Error(ErrorCode::kUnavailable, std::string("accepting a connection: ") + std::strerror(errno));
  const auto timeout = impl_->options.timeout;
  timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  // Small request/answer exchanges (attestation, lines): no Nagle wait for a delayed ACK.
  int nodelay = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof nodelay);
  auto conn = std::make_unique<TlsChannel::Impl>();
  conn->providers = impl_->providers;
  conn->peer = kPeer;
  conn->fd = std::move(fd);
  conn->ssl.reset(SSL_new(impl_->ctx.get()));
  if (!conn->ssl || SSL_set_fd(conn->ssl.get(), conn->fd.get()) != 1) return OpenSslError(ErrorCode::kInternal, "SSL_new");
  ERR_clear_error();
  if (SSL_accept(conn->ssl.get()) != 1) {
    const long verify = SSL_get_verify_result(conn->ssl.get());
    if (verify != X509_V_OK) {
      ERR_clear_error();
      return internal::ChainError(static_cast<int>(verify), internal::RefusedPeer(conn->ssl.get()), kPeer)
          .Context("refused a device");
    }
    const unsigned long e = ERR_peek_last_error();
    if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
      ERR_clear_error();
      return Error(ErrorCode::kPermissionDenied, "refused a device: it presented no certificate (a device must prove its key)");
    }
    return OpenSslError(ErrorCode::kPermissionDenied, "refused a device: TLS 1.3 handshake failed");
  }
  X509Ptr peer(SSL_get1_peer_certificate(conn->ssl.get()));
  if (!peer) return Error(ErrorCode::kPermissionDenied, "refused a device: it presented no certificate");
  unsigned char* der = nullptr;
  const int n = i2d_X509(peer.get(), &der);
  std::unique_ptr<ServiceConnection> c(new ServiceConnection(std::move(conn)));
  c->device_.subject = SubjectOf(peer.get());
  if (n > 0) c->device_.certificate_der.assign(reinterpret_cast<char*>(der), static_cast<size_t>(n));
  OPENSSL_free(der);
  return c;
}

Quoter TpmToolsQuoter(const std::string& ak_handle, const std::string& tcti) {
  return [ak_handle, tcti](const std::string& nonce, const std::string& selection) {
    return QuoteWithTools(ak_handle, tcti, nonce, selection);
  };
}

Result<UniqueFd> ListenTcp(const std::string& address, int port, int* bound_port) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Error(ErrorCode::kInternal, std::string("socket: ") + std::strerror(errno));
  int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  if (address.empty()) {
    sa.sin_addr.s_addr = htonl(INADDR_ANY);
  } else if (inet_pton(AF_INET, address.c_str(), &sa.sin_addr) != 1) {
    return Error(ErrorCode::kInvalidArgument, "'" + address + "' is not an IPv4 address");
  }
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || listen(fd.get(), 16) != 0) {
    return Error(ErrorCode::kUnavailable,
                 "cannot listen on " + address + ":" + std::to_string(port) + ": " + std::strerror(errno));
  }
  socklen_t len = sizeof sa;
  getsockname(fd.get(), reinterpret_cast<sockaddr*>(&sa), &len);
  if (bound_port != nullptr) *bound_port = ntohs(sa.sin_port);
  return fd;
}

Result<AttestationAnswer> AnswerAttestationChallenge(ServiceConnection& conn, std::string_view already_read,
                                                     const Quoter& quote, const std::string& event_log) {
  auto refuse = [&conn](const Error& why) {
    AttestationAnswer refusal;
    refusal.reason = why.message().substr(0, kMaxAnswerReason);
    (void)conn.Write(EncodeAnswer(refusal));
    return refusal;
  };
  auto frame = ReadAttestationFrame(conn, already_read);
  if (!frame.ok()) {
    if (frame.error().message().find("closed") == std::string::npos) refuse(frame.error());
    return std::move(frame).error();
  }
  auto challenge = DecodeChallenge(*frame);
  if (!challenge.ok()) {
    refuse(challenge.error());
    return std::move(challenge).error();
  }
  auto quoted = [&]() -> Result<AttestationAnswer> {
    VTM_ASSIGN_OR_RETURN(SecretBytes exporter,
                         conn.ExportKeyingMaterial(kAttestationExporterLabel, kAttestationExporterSize));
    const std::string nonce = SessionNonce(
        std::string_view(reinterpret_cast<const char*>(exporter.data()), exporter.size()), *challenge);
    VTM_ASSIGN_OR_RETURN(QuoteFiles q, quote(nonce, challenge->pcr_selection));
    AttestationAnswer a;
    a.quoted = true;
    a.quote_message = std::move(q.message);
    a.quote_signature = std::move(q.signature);
    a.quote_pcrs = std::move(q.pcrs);
    a.event_log = event_log.size() <= kMaxEventLog ? event_log : std::string();
    return a;
  }();
  if (!quoted.ok()) return refuse(quoted.error());  // the stream is intact: the device decides
  VTM_RETURN_IF_ERROR(conn.Write(EncodeAnswer(*quoted)));
  return quoted;
}

}  // namespace vtm::tc
