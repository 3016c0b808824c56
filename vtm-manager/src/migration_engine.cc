// Sealed migration: the source's steps, the destination's answers, and their records.
#include "migration_engine.h"

#include <chrono>
#include <ctime>

#include "api_status.h"
#include "migration_import_key.h"
#include "migration_peer.h"
#include "vtm/crash_point.h"
#include "vtm/hex.h"
#include "vtm/log.h"
#include "vtm/migration_package.h"
#include "vtm/tpm_structures.h"
#include "vtm/x509.h"
#include "vtpm_provisioner.h"

namespace vtm {
namespace {

constexpr const char* kSource = "source";
constexpr const char* kDestination = "destination";
// A commit channel unused for this long is dropped (its orchestrator went away); one in use is
// checked every few seconds by the orchestrator's OpenCommitChannel.
constexpr std::chrono::seconds kCommitChannelIdle{60};

std::string AsString(const SecretBytes& b) { return std::string(reinterpret_cast<const char*>(b.data()), b.size()); }

Result<std::string> NewMigrationId() {
  VTM_ASSIGN_OR_RETURN(SecretBytes random, RandomSecret(16));
  return "mig-" + HexEncode(AsString(random));
}

// Seconds since a registry timestamp ("YYYY-MM-DDTHH:MM:SSZ"); 0 if it does not parse.
int64_t AgeSeconds(const std::string& utc, std::time_t now) {
  std::tm tm{};
  const char* end = strptime(utc.c_str(), "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (end == nullptr || *end != '\0') return 0;
  return static_cast<int64_t>(now - timegm(&tm));
}

// The public keys the vTPM certificates the source sent certify, one of each kind.
Result<VtpmSpkis> SpkisSentBySource(const google::protobuf::RepeatedPtrField<api::Certificate>& certs) {
  std::vector<KindAndCertificate> sent;
  for (const auto& c : certs) sent.emplace_back(c.kind(), c.pem());
  auto spkis = SpkisOfCertificates(sent);
  if (!spkis.ok()) {
    return Error(ErrorCode::kInvalidArgument, "the vTPM certificates the source sent: " + spkis.error().message());
  }
  return spkis;
}

migration_api::PeerResponse Failed(const Error& e) {
  migration_api::PeerResponse resp;
  resp.set_status(ToApiStatus(e.code()));
  resp.set_error(e.message());
  return resp;
}

}  // namespace

MigrationEngine::MigrationEngine(MigrationConfig config, Manager& manager, Registry& registry,
                                 HostAttestationKey& host_ak, HostCa& host_ca, RaClient& ra,
                                 std::unique_ptr<attest::Verifier> destination_verifier)
    : config_(std::move(config)),
      manager_(manager),
      registry_(registry),
      host_ak_(host_ak),
      host_ca_(host_ca),
      ra_(ra),
      verifier_(std::move(destination_verifier)) {}

api::Migration MigrationEngine::Describe(const MigrationRecord& m) {
  api::Migration out;
  out.set_id(m.id);
  out.set_vm_uuid(m.vm_uuid);
  out.set_role(m.role);
  out.set_mode(m.mode);
  out.set_peer(m.peer);
  out.set_state(m.state);
  out.set_generation(m.generation);
  out.set_created_at(m.created_at);
  out.set_updated_at(m.updated_at);
  out.set_last_error(m.last_error);
  if (m.role == kDestination) {
    migration_api::DestinationRecord rec;
    if (rec.ParseFromString(m.prepared)) out.set_destination_tpm_socket(rec.tpm_socket());
  }
  return out;
}

Result<std::unique_ptr<MigrationPeerClient>> MigrationEngine::Connect(const std::string& destination) {
  return MigrationPeerClient::Connect(destination, config_.peer_identity->client_context(), config_.timeout);
}

Result<std::unique_ptr<MigrationPeerClient>> MigrationEngine::ConnectFor(const MigrationRecord& m) {
  auto peer = Connect(m.peer);
  if (!peer.ok()) (void)registry_.UpdateMigration(m.id, {m.state}, m.state, peer.error().message());
  return peer;
}

std::unique_ptr<MigrationPeerClient> MigrationEngine::TakeCommitChannel(const std::string& id) {
  MutexLock lock(channels_mu_);
  auto it = commit_channels_.find(id);
  if (it == commit_channels_.end()) return nullptr;
  std::unique_ptr<MigrationPeerClient> peer = std::move(it->second.peer);
  commit_channels_.erase(it);
  return peer;
}

Result<MigrationRecord> MigrationEngine::SourceMigration(const std::string& id) {
  VTM_ASSIGN_OR_RETURN(MigrationRecord m, registry_.GetMigration(id));
  if (m.role != kSource) {
    return Error(ErrorCode::kFailedPrecondition, "this host is the destination of migration " + id +
                                                     "; the source host drives its steps");
  }
  return m;
}

Result<VmRecord> MigrationEngine::OwnedVm(const MigrationRecord& m) {
  VTM_ASSIGN_OR_RETURN(VmRecord rec, registry_.Get(m.vm_uuid));
  if (rec.state != VmState::kMigratingOut || rec.generation != m.generation) {
    return Error(ErrorCode::kFailedPrecondition,
                 "VM " + m.vm_uuid + " is " + VmStateName(rec.state) + " at generation " +
                     std::to_string(rec.generation) + "; migration " + m.id + " (generation " +
                     std::to_string(m.generation) + ") no longer owns it");
  }
  return rec;
}

// ---- Source ----------------------------------------------------------------------------

Result<api::Migration> MigrationEngine::Prepare(const std::string& vm, const std::string& destination, bool cold) {
  if (verifier_ == nullptr) {
    return Error(ErrorCode::kFailedPrecondition,
                 "this vtmd cannot appraise a destination: start it with --migration-policy FILE (the attestation "
                 "policy destinations must meet)");
  }
  if (destination.empty()) return Error(ErrorCode::kInvalidArgument, "migrate prepare needs --to HOST:PORT");
  {
    VTM_ASSIGN_OR_RETURN(VmRecord named, registry_.Get(vm));
    VTM_ASSIGN_OR_RETURN(auto open, registry_.OpenMigrationOf(named.uuid, kSource));
    if (open) {
      return Error(ErrorCode::kFailedPrecondition, "VM " + named.uuid + " already has migration " + open->id + " (" +
                                                       open->state + "): `vtmctl migrate commit|abort " + open->id + "`");
    }
  }
  VmState before = VmState::kStopped;
  VTM_ASSIGN_OR_RETURN(VmRecord rec, manager_.BeginMigrationOut(vm, cold, &before));
  auto back = [&](Error e) -> Error {
    (void)manager_.AbortMigrationOut(rec.uuid, rec.generation, before);
    return std::move(e).Context("preparing the migration of VM " + rec.uuid + " to " + destination);
  };
  auto nonce = attest::IssueNonce(std::time(nullptr));
  if (!nonce.ok()) return back(std::move(nonce).error());
  auto peer = Connect(destination);
  if (!peer.ok()) return back(std::move(peer).error());
  migration_api::PeerRequest req;
  auto* p = req.mutable_prepare();
  p->set_vm_uuid(rec.uuid);
  p->set_generation(rec.generation);
  p->set_source_nonce(*nonce);
  p->set_mode(cold ? "cold" : "live");
  p->set_vm_name(rec.name);
  auto answer = (*peer)->Call(req);
  if (!answer.ok()) return back(std::move(answer).error());
  const migration_api::PrepareResponse& prep = answer->prepare();
  auto abort_there = [&](const std::string& why) {
    migration_api::PeerRequest ab;
    ab.mutable_abort()->set_migration_id(prep.migration_id());
    ab.mutable_abort()->set_reason(why);
    (void)(*peer)->Call(ab);
  };
  // The destination must be a host the policy trusts, the channel must end at that host, and
  // the import key must be that host's TPM's own, made for this migration.
  attest::Verdict verdict = verifier_->AppraiseHost(prep.evidence(), *nonce, std::time(nullptr));
  if (!verdict.trusted) {
    abort_there("the destination failed attestation");
    return back(Error(ErrorCode::kPermissionDenied,
                      "the destination " + (*peer)->peer_host() + " failed attestation against --migration-policy:\n" +
                          verdict.ToText()));
  }
  if (Status bound = ca::VerifyIssuedBy((*peer)->peer_certificate_der(), prep.evidence().host().ca_certificate(),
                                        "the destination's migration certificate");
      !bound.ok()) {
    abort_there("channel binding failed");
    return back(Error(ErrorCode::kPermissionDenied, bound.error().message() +
                                                        ": the host that answered is not the host that was attested"));
  }
  TpmAttestation certify{prep.import_key_certify_attest(), prep.import_key_certify_signature()};
  if (Status key_ok = migration::VerifyImportKey(prep.import_key_public(), certify, prep.evidence().host().ak_public(),
                                                 migration::ImportKeyQualifying(prep.migration_id(), *nonce));
      !key_ok.ok()) {
    abort_there("import key refused");
    return back(std::move(key_ok).error().Context("the destination's import key"));
  }
  MigrationRecord m;
  m.id = prep.migration_id();
  m.vm_uuid = rec.uuid;
  m.role = kSource;
  m.mode = cold ? "cold" : "live";
  m.peer = destination;
  m.state = "prepared";
  m.generation = rec.generation;
  m.vm_state_before = VmStateName(before);
  m.prepared = prep.SerializeAsString();
  if (Status st = registry_.InsertMigration(&m); !st.ok()) {
    abort_there("the source could not record the migration");
    return back(std::move(st).error());
  }
  CrashPoint("migrate.source-prepared");
  LOG_INFO << "migration " << m.id << " of VM " << rec.uuid << " to " << (*peer)->peer_host() << " (" << destination
           << ", " << m.mode << "): destination attested and its import key checked";
  api::Migration out = Describe(m);
  out.set_appraisal(verdict.ToText());
  return out;
}

Result<api::Migration> MigrationEngine::Send(const std::string& id) {
  VTM_ASSIGN_OR_RETURN(MigrationRecord m, SourceMigration(id));
  if (m.state == "sent") {
    auto st = List(id);
    if (st.ok() && !st->empty()) return st->front();
  }
  if (m.state != "prepared") {
    return Error(ErrorCode::kFailedPrecondition, "migration " + id + " is " + m.state + "; send follows prepare");
  }
  VTM_ASSIGN_OR_RETURN(VmRecord rec, OwnedVm(m));
  migration_api::PrepareResponse prep;
  if (!prep.ParseFromString(m.prepared)) return Error(ErrorCode::kDataLoss, "migration " + id + ": its record is corrupt");
  VTM_ASSIGN_OR_RETURN(VmSecrets keys, manager_.UnwrapKeys(rec));
  migration::KeyTransfer payload;
  payload.vm_uuid = rec.uuid;
  payload.name = rec.name;
  payload.service = rec.service;
  payload.generation = m.generation;
  payload.state_key = std::move(keys.state_key);
  payload.migration_key = std::move(keys.migration_key);
  payload.ek_name = rec.vtpm.ek_name;
  payload.ek_rsa_name = rec.vtpm.ek_rsa_name;
  payload.ak_name = rec.vtpm.ak_name;
  payload.ek_public = rec.vtpm.ek_public;
  payload.ak_public = rec.vtpm.ak_public;
  if (m.mode == "cold") {
    VTM_ASSIGN_OR_RETURN(payload.state_files, manager_.ReadTpmState(rec.uuid));
  }
  migration::PackageHeader header;
  header.migration_id = id;
  header.vm_uuid = rec.uuid;
  header.generation = m.generation;
  VTM_ASSIGN_OR_RETURN(header.import_key_name, TpmNameOfPublic(prep.import_key_public()));
  header.source_host = config_.host_name;
  header.destination_host = prep.destination_host();
  VTM_ASSIGN_OR_RETURN(migration::SealedPackage sealed,
                       migration::SealForDestination(payload, header, prep.import_key_public()));
  migration_api::PeerRequest req;
  auto* t = req.mutable_transfer();
  t->set_migration_id(id);
  t->set_sealed_package(sealed.Serialize());
  VTM_ASSIGN_OR_RETURN(auto certs, registry_.CertificatesOf(rec.uuid));
  for (const auto& c : certs) {
    if (c.revoked_at.empty() && NvIndexOfCertKind(c.kind) != 0) ToApiCertificate(c, t->add_certificates());
  }
  VTM_ASSIGN_OR_RETURN(auto peer, ConnectFor(m));
  auto answer = peer->Call(req);
  if (!answer.ok()) {
    (void)registry_.UpdateMigration(id, {"prepared"}, "prepared", answer.error().message());
    return std::move(answer).error().Context("sending migration " + id);
  }
  VTM_ASSIGN_OR_RETURN(MigrationRecord sent, registry_.UpdateMigration(id, {"prepared"}, "sent", ""));
  CrashPoint("migrate.source-sent");
  LOG_INFO << "migration " << id << ": VM " << rec.uuid << "'s keys" << (m.mode == "cold" ? " and state" : "")
           << " sealed to the destination's import key and sent";
  api::Migration out = Describe(sent);
  out.set_destination_tpm_socket(answer->transfer().tpm_socket());
  return out;
}

Result<api::Migration> MigrationEngine::OpenCommitChannel(const std::string& id) {
  VTM_ASSIGN_OR_RETURN(MigrationRecord m, SourceMigration(id));
  if (m.state != "sent" && m.state != "committing" && m.state != "activated") {
    return Error(ErrorCode::kFailedPrecondition,
                 "migration " + id + " is " + m.state + "; a commit channel is opened for a migration that was sent");
  }
  std::unique_ptr<MigrationPeerClient> peer = TakeCommitChannel(id);
  if (peer != nullptr) {
    // A status call: it fails on a channel the destination closed, and keeps it from idling out.
    migration_api::PeerRequest ask;
    ask.mutable_status()->set_migration_id(id);
    if (!peer->Call(ask).ok()) peer.reset();
  }
  if (peer == nullptr) {
    VTM_ASSIGN_OR_RETURN(peer, Connect(m.peer));
  }
  const auto now = std::chrono::steady_clock::now();
  std::vector<std::unique_ptr<MigrationPeerClient>> idle;  // closed outside the lock
  {
    MutexLock lock(channels_mu_);
    for (auto it = commit_channels_.begin(); it != commit_channels_.end();) {
      if (now - it->second.opened < kCommitChannelIdle) {
        ++it;
        continue;
      }
      idle.push_back(std::move(it->second.peer));
      it = commit_channels_.erase(it);
    }
  }
  KeepCommitChannel(id, std::move(peer));
  return Describe(m);
}

void MigrationEngine::KeepCommitChannel(const std::string& id, std::unique_ptr<MigrationPeerClient> peer) {
  MutexLock lock(channels_mu_);
  commit_channels_[id] = CommitChannel{std::move(peer), std::chrono::steady_clock::now()};
}

Result<Claims::Claim> MigrationEngine::TakeTurn(const std::string& id) {
  std::optional<Claims::Claim> turn = turns_.Try(id);
  if (!turn) {
    return Error(ErrorCode::kFailedPrecondition,
                 "a commit or abort of migration " + id + " is in progress; repeat this when it has finished");
  }
  return std::move(*turn);
}

Status MigrationEngine::ReturnToSentUnlessReady(const MigrationRecord& m,
                                                const Result<migration_api::PeerResponse>& there) {
  // Called while this host's instance is not fenced: no commit can have reached the
  // destination (it is activated only after the fence), so going back to `sent` is safe.
  if (!there.ok()) {
    (void)registry_.UpdateMigration(m.id, {"committing"}, "sent", there.error().message());
    return Error(there.error())
        .Context("asking the destination whether it can take over migration " + m.id +
                 " (the migration is sent again; nothing was changed)");
  }
  const auto& st = there->status_result();
  std::string not_ready;
  if (st.migration().state() != "received" && st.migration().state() != "committed") {
    not_ready = "the destination's migration " + m.id + " is " + st.migration().state() + ", not received";
  } else if (m.mode == "live" && !st.state_received()) {
    not_ready =
        "the destination's vTPM has not received the state yet: commit after QEMU's migration has "
        "completed (query-migrate: completed); nothing was changed";
  }
  if (not_ready.empty()) return OkStatus();
  (void)registry_.UpdateMigration(m.id, {"committing"}, "sent", not_ready);
  return Error(ErrorCode::kFailedPrecondition, not_ready);
}

Result<api::Migration> MigrationEngine::Commit(const std::string& id, bool activate_only) {
  // Each phase's duration goes to the log: on a live migration the guest waits for this.
  const auto t0 = std::chrono::steady_clock::now();
  std::string timings;
  auto mark = [&](const char* what) {
    timings += std::string(timings.empty() ? "" : ", ") + what + " " +
               std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count() / 1000.0).substr(0, 6) + " ms";
  };
  VTM_ASSIGN_OR_RETURN(Claims::Claim turn, TakeTurn(id));
  VTM_ASSIGN_OR_RETURN(MigrationRecord m, SourceMigration(id));
  if (m.state == "committed") return Describe(m);
  if (m.state != "sent" && m.state != "committing" && m.state != "activated") {
    return Error(ErrorCode::kFailedPrecondition, "migration " + id + " is " + m.state + "; commit follows send");
  }
  std::unique_ptr<MigrationPeerClient> peer = TakeCommitChannel(id);
  bool reconnect = peer != nullptr;
  if (peer == nullptr) {
    VTM_ASSIGN_OR_RETURN(peer, ConnectFor(m));
    mark("connected");
  } else {
    mark("channel open");
  }
  // The first call: over a channel opened before, which may have gone stale, once more over a
  // fresh one if it fails. Each step a commit can start with (status, commit, recertify) is
  // repeatable.
  auto call = [&](const migration_api::PeerRequest& request) -> Result<migration_api::PeerResponse> {
    auto answer = peer->Call(request);
    const bool retry = !answer.ok() && reconnect;
    reconnect = false;
    if (!retry) return answer;
    LOG_INFO << "migration " << id << ": the commit channel failed (" << answer.error().message() << "); reconnecting";
    VTM_ASSIGN_OR_RETURN(peer, Connect(m.peer));
    mark("reconnected");
    return peer->Call(request);
  };
  migration_api::PeerRequest ask;
  ask.mutable_status()->set_migration_id(id);
  if (m.state == "sent") {
    // Fencing is irreversible, so the destination must be able to take over first. The question
    // goes out now and its answer is read once `committing` is durable: the round trip overlaps
    // the fsync. Nothing irreversible happens before the answer, and a destination that cannot
    // take over returns the migration to `sent`.
    const Status asked = peer->Send(ask);
    VTM_ASSIGN_OR_RETURN(m, registry_.UpdateMigration(id, {"sent"}, "committing"));
    mark("recorded");
    CrashPoint("migrate.source-committing");
    auto there = asked.ok() ? peer->Receive() : Result<migration_api::PeerResponse>(asked.error());
    if (!there.ok() && reconnect) there = call(ask);  // the open channel had gone stale
    VTM_RETURN_IF_ERROR(ReturnToSentUnlessReady(m, there));
    mark("destination ready");
    CrashPoint("migrate.source-destination-ready");
  } else if (m.state == "committing") {
    // A commit that ended (or whose vtmd died) between recording `committing` and the fence:
    // the same question, answered before the fence.
    auto unfenced = manager_.OutgoingInstanceUnfenced(m.vm_uuid);
    if (unfenced.ok() && *unfenced) VTM_RETURN_IF_ERROR(ReturnToSentUnlessReady(m, call(ask)));
  }
  // From here the migration only goes forward: every step below is repeatable.
  if (m.state == "committing") {
    VTM_RETURN_IF_ERROR(manager_.FenceOutgoing(m.vm_uuid, m.generation));
    mark("fenced");
    CrashPoint("migrate.source-fenced");
    migration_api::PeerRequest commit;
    commit.mutable_commit()->set_migration_id(id);
    auto activated = call(commit);
    if (!activated.ok()) {
      (void)registry_.UpdateMigration(id, {"committing"}, "committing", activated.error().message());
      return std::move(activated).error().Context("committing migration " + id +
                                                  " (the source is fenced; repeat `vtmctl migrate commit " + id + "`)");
    }
    mark("destination active");
    if (activate_only) {
      // The guest waits for this answer, so `activated` is left to the commit that completes
      // the migration: from `committing` it repeats the fence and the activation (both answer
      // at once when done) and records it. The two states ask for the same recovery (repeat
      // commit) and both refuse an abort; `committing`, durable before the fence, is what
      // decides that the migration goes forward once the fence is done.
      LOG_INFO << "migration " << id << " activated on the destination, the guest may continue there: " << timings;
      // The completing commit follows: it takes the channel (its TLS teardown is not the guest's).
      KeepCommitChannel(id, std::move(peer));
      return Describe(m);
    }
    VTM_ASSIGN_OR_RETURN(m, registry_.UpdateMigration(id, {"committing"}, "activated", ""));
    mark("recorded");
    LOG_INFO << "migration " << id << " activated on the destination: " << timings;
    CrashPoint("migrate.source-destination-committed");
  }
  // The rest is off the guest's path: the destination's certificates, and nothing left here.
  migration_api::PeerRequest recertify;
  recertify.mutable_commit()->set_migration_id(id);
  recertify.mutable_commit()->set_recertify(true);
  auto certified = call(recertify);
  if (!certified.ok()) {
    (void)registry_.UpdateMigration(id, {"activated"}, "activated", certified.error().message());
    return std::move(certified).error().Context("completing migration " + id + " (repeat `vtmctl migrate commit " +
                                                id + "`)");
  }
  CrashPoint("migrate.source-recertified");
  Tombstone tomb;
  tomb.vm_uuid = m.vm_uuid;
  tomb.generation = m.generation;
  tomb.destination = peer->peer_host() + " (" + m.peer + ")";
  tomb.migration_id = id;
  VTM_RETURN_IF_ERROR(manager_.FinishMigrationOut(m.vm_uuid, m.generation, tomb));
  VTM_ASSIGN_OR_RETURN(MigrationRecord done, registry_.GetMigration(id));
  return Describe(done);
}

Result<api::Migration> MigrationEngine::Abort(const std::string& id) {
  VTM_ASSIGN_OR_RETURN(Claims::Claim turn, TakeTurn(id));
  VTM_ASSIGN_OR_RETURN(MigrationRecord m, registry_.GetMigration(id));
  TakeCommitChannel(id).reset();  // no commit follows an abort
  if (m.role == kDestination) {
    // The destination's operator clears what a source that can no longer reach it left here
    // (it cannot become active: only the source's commit activates it).
    migration_api::AbortRequest req;
    req.set_migration_id(id);
    req.set_reason("aborted on the destination by its operator");
    VTM_RETURN_IF_ERROR(OnAbort(req, m.peer));
    VTM_ASSIGN_OR_RETURN(MigrationRecord done, registry_.GetMigration(id));
    return Describe(done);
  }
  if (m.state == "aborted") return Describe(m);
  if (m.state == "committing" || m.state == "activated" || m.state == "committed") {
    return Error(ErrorCode::kFailedPrecondition,
                 "migration " + id + " is " + m.state +
                     ": the destination may be active; repeat `vtmctl migrate commit " + id +
                     "`: it completes the migration or, if the destination cannot take over and this host's "
                     "instance was not fenced, returns it to sent, which can be aborted");
  }
  std::string note;
  auto peer = Connect(m.peer);
  if (peer.ok()) {
    migration_api::PeerRequest req;
    req.mutable_abort()->set_migration_id(id);
    req.mutable_abort()->set_reason("aborted by the source");
    auto there = (*peer)->Call(req);
    if (!there.ok()) note = there.error().message();
  } else {
    note = peer.error().message();
  }
  if (!note.empty()) {
    LOG_WARNING << "migration " << id << ": the destination did not confirm the abort (" << note
                << "); it cannot activate the VM without the source's commit, and `vtmctl migrate abort " << id
                << "` on the destination removes what it holds";
  }
  auto before = ParseVmState(m.vm_state_before);
  VTM_RETURN_IF_ERROR(manager_.AbortMigrationOut(m.vm_uuid, m.generation, before.ok() ? *before : VmState::kStopped));
  VTM_ASSIGN_OR_RETURN(MigrationRecord done, registry_.UpdateMigration(id, {"prepared", "sent"}, "aborted", note));
  LOG_INFO << "migration " << id << " aborted; VM " << m.vm_uuid << " stays here";
  return Describe(done);
}

Result<std::vector<api::Migration>> MigrationEngine::List(const std::string& id) {
  std::vector<api::Migration> out;
  if (!id.empty()) {
    VTM_ASSIGN_OR_RETURN(MigrationRecord m, registry_.GetMigration(id));
    out.push_back(Describe(m));
    return out;
  }
  VTM_ASSIGN_OR_RETURN(auto all, registry_.ListMigrations());
  for (const auto& m : all) out.push_back(Describe(m));
  return out;
}

Status MigrationEngine::Reconcile() {
  VTM_ASSIGN_OR_RETURN(auto vms, registry_.List());
  for (const auto& rec : vms) {
    if (rec.state != VmState::kMigratingOut) continue;
    VTM_ASSIGN_OR_RETURN(auto open, registry_.OpenMigrationOf(rec.uuid, kSource));
    if (open) continue;  // its steps resume it
    // A prepare that never recorded its migration: nothing was sent.
    const VmState before = rec.instance_pid > 0 ? VmState::kRunning : VmState::kStopped;
    VTM_RETURN_IF_ERROR(manager_.AbortMigrationOut(rec.uuid, rec.generation, before));
    LOG_WARNING << "VM " << rec.uuid << ": a migration prepare was interrupted before it was recorded; the VM stays here";
  }
  ExpireAbandonedPrepares();
  return OkStatus();
}

// ---- Destination -----------------------------------------------------------------------

migration_api::PeerResponse MigrationEngine::HandlePeer(const migration_api::PeerRequest& request,
                                                         const std::string& peer_host) {
  migration_api::PeerResponse resp;
  const char* step = "";
  Status result = OkStatus();
  switch (request.step_case()) {
    case migration_api::PeerRequest::kPrepare: {
      step = "prepare";
      auto r = OnPrepare(request.prepare(), peer_host);
      if (r.ok()) *resp.mutable_prepare() = std::move(r).value(); else result = std::move(r).error();
      break;
    }
    case migration_api::PeerRequest::kTransfer: {
      step = "transfer";
      auto r = OnTransfer(request.transfer(), peer_host);
      if (r.ok()) *resp.mutable_transfer() = std::move(r).value(); else result = std::move(r).error();
      break;
    }
    case migration_api::PeerRequest::kCommit: {
      step = "commit";
      auto r = OnCommit(request.commit(), peer_host);
      if (r.ok()) *resp.mutable_commit() = std::move(r).value(); else result = std::move(r).error();
      break;
    }
    case migration_api::PeerRequest::kAbort: {
      step = "abort";
      result = OnAbort(request.abort(), peer_host);
      if (result.ok()) resp.mutable_abort();
      break;
    }
    case migration_api::PeerRequest::kStatus: {
      step = "status";
      auto r = OnStatus(request.status(), peer_host);
      if (r.ok()) *resp.mutable_status_result() = std::move(r).value(); else result = std::move(r).error();
      break;
    }
    default: result = Error(ErrorCode::kInvalidArgument, "unknown migration step");
  }
  if (!result.ok()) {
    LOG_WARNING << "migration endpoint: " << step << " from " << peer_host << " refused: " << result.error().message();
    return Failed(result.error());
  }
  if (request.step_case() != migration_api::PeerRequest::kStatus) {
    LOG_INFO << "migration endpoint: " << step << " from " << peer_host << " done";
  }
  resp.set_status(api::STATUS_OK);
  return resp;
}

Result<MigrationRecord> MigrationEngine::DestinationMigration(const std::string& id, const std::string& peer) {
  auto m = registry_.GetMigration(id);
  if (!m.ok() || m->role != kDestination) {
    return Error(ErrorCode::kNotFound, "this host prepared no migration '" + id + "'");
  }
  if (m->peer != peer) {
    return Error(ErrorCode::kPermissionDenied,
                 "migration " + id + " was prepared for source " + m->peer + ", not for " + peer);
  }
  return m;
}

Result<migration_api::PrepareResponse> MigrationEngine::OnPrepare(const migration_api::PrepareRequest& req,
                                                                  const std::string& peer) {
  VTM_ASSIGN_OR_RETURN(std::string uuid, NormalizeUuid(req.vm_uuid()));
  if (req.generation() == 0) return Error(ErrorCode::kInvalidArgument, "a migration needs the VM's generation");
  if (req.mode() != "live" && req.mode() != "cold") {
    return Error(ErrorCode::kInvalidArgument, "migration mode must be live or cold, not '" + req.mode() + "'");
  }
  VTM_RETURN_IF_ERROR(ValidateVmName(req.vm_name()));
  VTM_RETURN_IF_ERROR(CheckNonce(req.source_nonce()));
  // A host whose CA can no longer certify the VM's keys does not take it in.
  if (auto can_certify = host_ca_.NewCertificateValidity(std::time(nullptr)); !can_certify.ok()) {
    return std::move(can_certify).error();
  }
  ExpireAbandonedPrepares();
  auto existing = registry_.Get(uuid);
  if (existing.ok()) {
    return Error(ErrorCode::kAlreadyExists, "VM " + uuid + " already has a vTPM on this host (" +
                                                VmStateName(existing->state) + ")");
  }
  VTM_ASSIGN_OR_RETURN(auto tomb, registry_.GetTombstone(uuid));
  if (tomb && req.generation() <= tomb->generation) {
    return Error(ErrorCode::kFailedPrecondition,
                 "VM " + uuid + " left this host at generation " + std::to_string(tomb->generation) +
                     "; generation " + std::to_string(req.generation()) + " is not newer (a replay or a stale source)");
  }
  VTM_ASSIGN_OR_RETURN(auto open, registry_.OpenMigrationOf(uuid, kDestination));
  if (open) {
    if (open->state != "prepared") {
      return Error(ErrorCode::kFailedPrecondition, "VM " + uuid + " is arriving already (migration " + open->id +
                                                       ", " + open->state + ")");
    }
    // An earlier prepare that never sent: superseded.
    (void)registry_.UpdateMigration(open->id, {"prepared"}, "aborted", "superseded by a new prepare");
  }
  VTM_ASSIGN_OR_RETURN(std::string id, NewMigrationId());
  VTM_ASSIGN_OR_RETURN(ImportKey key, CreateImportKey(host_ak_, id, req.source_nonce()));
  VTM_ASSIGN_OR_RETURN(attest::HostEvidence evidence, ra_.HostEvidence(req.source_nonce()));
  migration_api::DestinationRecord record;
  *record.mutable_request() = req;
  record.set_import_key_public(key.blob.tpm2b_public);
  record.set_import_key_private(key.blob.tpm2b_private);
  MigrationRecord m;
  m.id = id;
  m.vm_uuid = uuid;
  m.role = kDestination;
  m.mode = req.mode();
  m.peer = peer;
  m.state = "prepared";
  m.generation = req.generation();
  m.prepared = record.SerializeAsString();
  VTM_RETURN_IF_ERROR(registry_.InsertMigration(&m));
  CrashPoint("migrate.destination-prepared");
  migration_api::PrepareResponse resp;
  resp.set_migration_id(id);
  *resp.mutable_evidence() = std::move(evidence);
  resp.set_import_key_public(key.pub.tpm2b_public);
  resp.set_import_key_certify_attest(key.certify.attest);
  resp.set_import_key_certify_signature(key.certify.signature);
  resp.set_destination_host(config_.host_name);
  return resp;
}

Result<migration_api::TransferResponse> MigrationEngine::OnTransfer(const migration_api::TransferRequest& req,
                                                                    const std::string& peer) {
  VTM_ASSIGN_OR_RETURN(MigrationRecord m, DestinationMigration(req.migration_id(), peer));
  if (PrepareExpired(m)) ExpireAbandonedPrepares();
  VTM_ASSIGN_OR_RETURN(m, DestinationMigration(req.migration_id(), peer));
  if (m.state == "aborted") {
    return Error(ErrorCode::kFailedPrecondition, "migration " + m.id + " was aborted here (" + m.last_error +
                                                     "): `vtmctl migrate abort " + m.id + "` and prepare again");
  }
  if (m.state != "prepared") {
    return Error(ErrorCode::kFailedPrecondition,
                 "migration " + m.id + " is " + m.state + ": its package was received already (a replay is refused)");
  }
  migration_api::DestinationRecord record;
  if (!record.ParseFromString(m.prepared)) return Error(ErrorCode::kDataLoss, "migration " + m.id + ": record corrupt");
  VTM_ASSIGN_OR_RETURN(migration::SealedPackage package, migration::SealedPackage::Parse(req.sealed_package()));
  migration::PackageHeader expected;
  expected.migration_id = m.id;
  expected.vm_uuid = m.vm_uuid;
  expected.generation = m.generation;
  VTM_ASSIGN_OR_RETURN(expected.import_key_name, TpmNameOfPublic(record.import_key_public()));
  expected.source_host = peer;
  expected.destination_host = config_.host_name;
  const TpmKeyBlob blob{record.import_key_public(), record.import_key_private()};
  VTM_ASSIGN_OR_RETURN(migration::KeyTransfer payload,
                       migration::OpenSealedPackage(package, expected, [&](const TpmCredential& credential) {
                         return ActivateWithImportKey(host_ak_, blob, credential);
                       }));
  // The certificates to re-issue must certify the very keys the package names.
  VTM_ASSIGN_OR_RETURN(VtpmSpkis sent, SpkisSentBySource(req.certificates()));
  VTM_ASSIGN_OR_RETURN(std::string ek_from_package, SpkiFromTpmPublic(payload.ek_public));
  VTM_ASSIGN_OR_RETURN(std::string ak_from_package, SpkiFromTpmPublic(payload.ak_public));
  if (sent.ek_ecc != ek_from_package || sent.ak != ak_from_package) {
    return Error(ErrorCode::kPermissionDenied,
                 "the certificates sent with migration " + m.id + " are not for the vTPM's EK and AK in its package");
  }
  // A transfer of this migration that a crash interrupted may have left the VM half-received.
  if (auto leftover = registry_.Get(m.vm_uuid); leftover.ok() && leftover->state == VmState::kIncoming) {
    VTM_RETURN_IF_ERROR(manager_.AbortIncoming(m.vm_uuid));
  }
  IncomingVm vm;
  vm.uuid = payload.vm_uuid;
  vm.name = payload.name;
  vm.service = payload.service;
  vm.generation = payload.generation;
  vm.keys.state_key = std::move(payload.state_key);
  vm.keys.migration_key = std::move(payload.migration_key);
  vm.identity.ek_name = payload.ek_name;
  vm.identity.ek_rsa_name = payload.ek_rsa_name;
  vm.identity.ak_name = payload.ak_name;
  vm.identity.ek_public = payload.ek_public;
  vm.identity.ak_public = payload.ak_public;
  vm.state_files = std::move(payload.state_files);
  vm.live = m.mode == "live";
  vm.migration_id = m.id;
  VTM_ASSIGN_OR_RETURN(VmRecord rec, manager_.ReceiveIncoming(vm));
  *record.mutable_source_certificates() = req.certificates();
  record.set_tpm_socket(vm.live ? manager_.PathsFor(rec.uuid).tpm_socket : "");
  VTM_RETURN_IF_ERROR(registry_.SetMigrationPrepared(m.id, record.SerializeAsString()));
  VTM_RETURN_IF_ERROR(registry_.UpdateMigration(m.id, {"prepared"}, "received"));
  CrashPoint("migrate.destination-received");
  migration_api::TransferResponse resp;
  resp.set_tpm_socket(record.tpm_socket());
  return resp;
}

Result<migration_api::CommitResponse> MigrationEngine::OnCommit(const migration_api::CommitRequest& req,
                                                                const std::string& peer) {
  VTM_ASSIGN_OR_RETURN(MigrationRecord m, DestinationMigration(req.migration_id(), peer));
  if (m.state != "received" && m.state != "committed") {
    return Error(ErrorCode::kFailedPrecondition, "migration " + m.id + " is " + m.state + "; commit follows transfer");
  }
  migration_api::DestinationRecord record;
  if (!record.ParseFromString(m.prepared)) return Error(ErrorCode::kDataLoss, "migration " + m.id + ": record corrupt");
  // Once committed here the VM is this host's and lives on by itself (its instance may have
  // ended, leaving it failed, or been stopped): a repeated commit only finishes the
  // certificates, whatever state the VM is in now.
  VTM_ASSIGN_OR_RETURN(VmRecord rec, m.state == "committed"
                                         ? registry_.Get(m.vm_uuid)
                                         : manager_.CommitIncoming(m.vm_uuid, m.mode == "live", m.id));
  if (m.state != "committed") {
    LOG_INFO << "migration " << m.id << " committed: VM " << rec.uuid << " is " << VmStateName(rec.state) << " here";
  }
  migration_api::CommitResponse resp;
  if (!req.recertify()) return resp;
  // This host's CA certifies the keys the vTPM brought (once, also when the step is repeated).
  VTM_ASSIGN_OR_RETURN(auto certs, registry_.CertificatesOf(rec.uuid));
  bool issued = false;
  for (const auto& c : certs) issued = issued || (c.revoked_at.empty() && NvIndexOfCertKind(c.kind) != 0);
  if (!issued) {
    VTM_ASSIGN_OR_RETURN(VtpmSpkis spkis, SpkisSentBySource(record.source_certificates()));
    VTM_ASSIGN_OR_RETURN(certs, IssueVtpmCertificates(host_ca_, registry_, rec.uuid, rec.service, spkis));
    // The import key has done its work: what re-derives it is dropped.
    record.clear_import_key_private();
    VTM_RETURN_IF_ERROR(registry_.SetMigrationPrepared(m.id, record.SerializeAsString()));
    LOG_INFO << "migration " << m.id << ": VM " << rec.uuid << "'s vTPM keys certified by this host's CA";
  }
  for (const auto& c : certs) {
    if (c.revoked_at.empty()) ToApiCertificate(c, resp.add_certificates());
  }
  return resp;
}

Status MigrationEngine::OnAbort(const migration_api::AbortRequest& req, const std::string& peer) {
  VTM_ASSIGN_OR_RETURN(MigrationRecord m, DestinationMigration(req.migration_id(), peer));
  if (m.state == "aborted") return OkStatus();
  if (m.state == "committed") {
    return Error(ErrorCode::kFailedPrecondition, "migration " + m.id + " committed here; it cannot be aborted");
  }
  VTM_RETURN_IF_ERROR(AbortAsDestination(m, req.reason()));
  LOG_INFO << "migration " << m.id << " of VM " << m.vm_uuid << " aborted by the source: " << req.reason();
  return OkStatus();
}

Status MigrationEngine::AbortAsDestination(const MigrationRecord& m, const std::string& reason) {
  // Also in `prepared`: a transfer interrupted by a crash may have left the VM incoming.
  VTM_RETURN_IF_ERROR(manager_.AbortIncoming(m.vm_uuid));
  VTM_RETURN_IF_ERROR(registry_.UpdateMigration(m.id, {"prepared", "received"}, "aborted", reason));
  // The import key blob goes with the record's contents: nothing of it remains usable.
  (void)registry_.SetMigrationPrepared(m.id, "");
  return OkStatus();
}

bool MigrationEngine::PrepareExpired(const MigrationRecord& m) const {
  return m.role == kDestination && m.state == "prepared" &&
         AgeSeconds(m.created_at, std::time(nullptr)) > static_cast<int64_t>(config_.prepare_ttl.count());
}

void MigrationEngine::ExpireAbandonedPrepares() {
  auto all = registry_.ListMigrations();
  if (!all.ok()) {
    LOG_WARNING << "listing migrations to expire abandoned prepares: " << all.error().message();
    return;
  }
  for (const auto& m : *all) {
    if (!PrepareExpired(m)) continue;
    const std::string why = "expired: the source did not send it within " +
                            std::to_string(config_.prepare_ttl.count()) + " s of the prepare";
    if (Status st = AbortAsDestination(m, why); !st.ok()) {
      LOG_WARNING << "migration " << m.id << ": " << st.error().message();
      continue;
    }
    LOG_INFO << "migration " << m.id << " of VM " << m.vm_uuid << " from " << m.peer << " " << why
             << "; its import key is dropped";
  }
}

Result<migration_api::StatusResponse> MigrationEngine::OnStatus(const migration_api::StatusRequest& req,
                                                                const std::string& peer) {
  VTM_ASSIGN_OR_RETURN(MigrationRecord m, DestinationMigration(req.migration_id(), peer));
  migration_api::StatusResponse resp;
  *resp.mutable_migration() = Describe(m);
  if (m.state == "received" && m.mode == "live") {
    auto received = manager_.IncomingStateReceived(m.vm_uuid);
    resp.set_state_received(received.ok() && *received);
  } else {
    resp.set_state_received(m.state == "received" || m.state == "committed");
  }
  return resp;
}

}  // namespace vtm
