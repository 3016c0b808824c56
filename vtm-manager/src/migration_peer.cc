// The migration channel: TLS accept/connect, the peer-certificate check and the frame loop.
#include "migration_peer.h"

#include <algorithm>
#include <cctype>

#include "api_status.h"
#include "host_tls.h"
#include "manager.h"
#include "vtm/framing.h"
#include "vtm/log.h"
#include "vtm/x509.h"

namespace vtm {
namespace {

constexpr std::chrono::milliseconds kHandshakeTimeout{10000};
constexpr const char* kUriPrefix = "vtm:host:";

Status CheckMigrationId(const std::string& id) {
  const bool ok = !id.empty() && id.size() <= 64 && std::all_of(id.begin(), id.end(), [](unsigned char c) {
    return std::islower(c) || std::isdigit(c) || c == '-';
  });
  if (!ok) return Error(ErrorCode::kInvalidArgument, "malformed migration ID");
  return OkStatus();
}

}  // namespace

Result<migration_api::PeerRequest> ParsePeerRequest(const std::string& bytes) {
  migration_api::PeerRequest req;
  if (!req.ParseFromString(bytes)) return Error(ErrorCode::kInvalidArgument, "malformed migration request");
  switch (req.step_case()) {
    case migration_api::PeerRequest::kPrepare: {
      const auto& p = req.prepare();
      VTM_RETURN_IF_ERROR(NormalizeUuid(p.vm_uuid()));
      VTM_RETURN_IF_ERROR(ValidateVmName(p.vm_name()));
      if (p.generation() == 0) return Error(ErrorCode::kInvalidArgument, "a migration needs the VM's generation");
      if (p.source_nonce().size() < 8 || p.source_nonce().size() > 64) {
        return Error(ErrorCode::kInvalidArgument, "the source's nonce must be 8 to 64 bytes");
      }
      if (p.mode() != "live" && p.mode() != "cold") {
        return Error(ErrorCode::kInvalidArgument, "migration mode must be live or cold");
      }
      break;
    }
    case migration_api::PeerRequest::kTransfer: {
      const auto& t = req.transfer();
      VTM_RETURN_IF_ERROR(CheckMigrationId(t.migration_id()));
      if (t.sealed_package().empty() || t.sealed_package().size() > kMaxMigrationFrameLen) {
        return Error(ErrorCode::kInvalidArgument, "the transfer carries no sealed package, or one too large");
      }
      if (t.certificates_size() > 8) return Error(ErrorCode::kInvalidArgument, "too many certificates");
      for (const auto& c : t.certificates()) {
        if (c.pem().size() > 16384 || c.kind().size() > 16) {
          return Error(ErrorCode::kInvalidArgument, "a certificate in the transfer is too large");
        }
      }
      break;
    }
    case migration_api::PeerRequest::kCommit: VTM_RETURN_IF_ERROR(CheckMigrationId(req.commit().migration_id())); break;
    case migration_api::PeerRequest::kAbort:
      VTM_RETURN_IF_ERROR(CheckMigrationId(req.abort().migration_id()));
      if (req.abort().reason().size() > 1024) return Error(ErrorCode::kInvalidArgument, "abort reason too long");
      break;
    case migration_api::PeerRequest::kStatus: VTM_RETURN_IF_ERROR(CheckMigrationId(req.status().migration_id())); break;
    case migration_api::PeerRequest::STEP_NOT_SET:
      return Error(ErrorCode::kInvalidArgument, "the migration request names no step");
  }
  return req;
}

Result<std::string> MigrationPeerHost(const std::string& der) {
  VTM_ASSIGN_OR_RETURN(ca::CertificateInfo info, ca::ParseCertificate(der));
  std::string host;
  for (const std::string& uri : info.uris) {
    if (uri.rfind(kUriPrefix, 0) == 0) host = uri.substr(std::char_traits<char>::length(kUriPrefix));
  }
  // IssueHostTlsCertificate names the purpose in the subject's CN; an attestation endpoint's or
  // a VM's IK certificate under the same fleet CA is no migration peer.
  if (host.empty() || info.subject.find("CN=" + host + " vtmd migration") == std::string::npos) {
    return Error(ErrorCode::kPermissionDenied, "the peer's certificate (" + info.subject +
                                                   ") chains to the fleet CA but is not a vtmd migration "
                                                   "certificate: only another vtmd may take part in a migration");
  }
  return host;
}

Result<std::unique_ptr<MigrationEndpoint>> MigrationEndpoint::Start(const std::string& listen,
                                                                    const HostTlsIdentity& identity, Handler handler,
                                                                    int max_connections) {
  std::unique_ptr<MigrationEndpoint> ep(new MigrationEndpoint(identity, std::move(handler)));
  VTM_ASSIGN_OR_RETURN(UniqueFd fd, ListenTcp(listen));
  VTM_ASSIGN_OR_RETURN(ep->port_, BoundTcpPort(fd.get()));
  MigrationEndpoint* self = ep.get();
  ep->listener_ = std::make_unique<Listener>(
      std::move(fd), [self](UniqueFd conn) { self->HandleConnection(std::move(conn)); }, max_connections,
      [](UniqueFd) {});  // busy: closed before the handshake; the source retries the step
  LOG_INFO << "migration endpoint on " << listen << " (port " << ep->port_ << ")";
  return ep;
}

void MigrationEndpoint::HandleConnection(UniqueFd conn) {
  // The identity now: a rotation of the host CA key may have replaced it since the last connection.
  auto tls = tls_.server_context()->Accept(std::move(conn), kHandshakeTimeout);
  if (!tls.ok()) {
    LOG_WARNING << "migration endpoint: refused a connection: " << tls.error().message();
    return;
  }
  TlsStream& stream = **tls;
  auto peer = MigrationPeerHost(stream.peer_certificate_der());
  for (;;) {
    auto frame = ReadFrame(stream, kMaxMigrationFrameLen);
    if (!frame.ok()) {
      if (frame.error().code() != ErrorCode::kUnavailable) {
        LOG_WARNING << "migration endpoint: " << stream.peer_subject() << ": " << frame.error().message();
      }
      return;
    }
    migration_api::PeerResponse resp;
    if (!peer.ok()) {
      resp.set_status(api::STATUS_PERMISSION_DENIED);
      resp.set_error(peer.error().message());
      LOG_WARNING << "migration endpoint: refused " << stream.peer_subject() << ": " << peer.error().message();
    } else if (auto req = ParsePeerRequest(*frame); !req.ok()) {
      resp.set_status(ToApiStatus(req.error().code()));
      resp.set_error(req.error().message());
      LOG_WARNING << "migration endpoint: " << *peer << ": " << req.error().message();
    } else {
      resp = handler_(*req, *peer);
    }
    if (!WriteFrame(stream, resp.SerializeAsString(), kMaxMigrationFrameLen).ok()) return;
  }
}

Result<std::unique_ptr<MigrationPeerClient>> MigrationPeerClient::Connect(const std::string& host_port,
                                                                          const TlsCredentials& credentials,
                                                                          std::chrono::milliseconds timeout) {
  VTM_ASSIGN_OR_RETURN(std::shared_ptr<TlsContext> ctx, TlsContext::Create(TlsContext::Role::kClient, credentials));
  return Connect(host_port, std::shared_ptr<const TlsContext>(std::move(ctx)), timeout);
}

Result<std::unique_ptr<MigrationPeerClient>> MigrationPeerClient::Connect(const std::string& host_port,
                                                                          const std::shared_ptr<const TlsContext>& ctx,
                                                                          std::chrono::milliseconds timeout) {
  auto fd = ConnectTcp(host_port);
  if (!fd.ok()) {
    return Error(ErrorCode::kUnavailable, "cannot reach the destination's migration endpoint " + host_port + ": " +
                                              fd.error().message());
  }
  auto stream = ctx->Connect(std::move(fd).value(), timeout);
  if (!stream.ok()) return std::move(stream).error().Context("TLS with the destination " + host_port);
  VTM_ASSIGN_OR_RETURN(std::string host, MigrationPeerHost((*stream)->peer_certificate_der()));
  return std::unique_ptr<MigrationPeerClient>(new MigrationPeerClient(std::move(stream).value(), host, host_port));
}

Result<migration_api::PeerResponse> MigrationPeerClient::Call(const migration_api::PeerRequest& request) {
  VTM_RETURN_IF_ERROR(Send(request));
  return Receive();
}

Status MigrationPeerClient::Send(const migration_api::PeerRequest& request) {
  auto sent = WriteFrame(*stream_, request.SerializeAsString(), kMaxMigrationFrameLen);
  if (!sent.ok()) return std::move(sent).error().Context("sending to the destination " + address_);
  return OkStatus();
}

Result<migration_api::PeerResponse> MigrationPeerClient::Receive() {
  auto frame = ReadFrame(*stream_, kMaxMigrationFrameLen);
  if (!frame.ok()) return std::move(frame).error().Context("reading the destination's answer (" + address_ + ")");
  migration_api::PeerResponse resp;
  if (!resp.ParseFromString(*frame)) {
    return Error(ErrorCode::kDataLoss, "the destination " + address_ + " sent a malformed answer");
  }
  if (resp.status() != api::STATUS_OK) {
    return Error(FromApiStatus(resp.status()), "the destination " + peer_host_ + " refused: " + resp.error());
  }
  return resp;
}

}  // namespace vtm
