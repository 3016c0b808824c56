// The Migration Engine (ISO/IEC 27070 5.3, 6.6): moves a VM's vTPM to another host so that only
// the attested destination can open it, exactly one instance is active at any moment, and the
// vTPM keeps its keys (its identity) while the destination's host CA certifies them anew.
//
// The source drives (vtmctl migrate -> its vtmd -> the destination's migration endpoint):
//   prepare  the VM goes migrating-out; the destination answers with host evidence on the
//            source's nonce and a fresh import key in its host TPM certified by its host AK; the
//            source appraises the evidence with the attestation verifier (--migration-policy),
//            checks the channel is the attested host's, and checks the import key's certification
//   send     the VM's keys (cold: and its encrypted swtpm state) sealed to the import key; the
//            destination records the VM as incoming (live: starts an instance that admits only
//            this migration's state, which QEMU then carries in its own stream)
//   commit   the source fences its instance, the destination activates the VM and issues its
//            certificates, the source destroys state and keys, revokes and leaves a tombstone
//   abort    (before commit) the destination destroys what it made; the source carries on
// The step order, what each failure leaves and how each is resumed: docs/migration.md.
//
// Thread safety: all methods may be called from any thread; each step claims the VM in the
// Manager for its length, and the registry's compare-and-set decides between racing steps.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "host_attestation_key.h"
#include "host_ca.h"
#include "host_tls.h"
#include "manager.h"
#include "migration.pb.h"
#include "migration_peer.h"
#include "ra_client.h"
#include "registry.h"
#include "vtm.pb.h"
#include "vtm/claims.h"
#include "vtm/mutex.h"
#include "vtm/tls.h"
#include "vtm/verifier.h"

namespace vtm {

struct MigrationConfig {
  std::string host_name;
  // This vtmd's migration certificate and the fleet CA it trusts (replaced after a host CA key
  // rotation; each connection to a peer takes the one in use then). Must outlive the engine.
  const HostTlsIdentity* peer_identity = nullptr;
  std::chrono::milliseconds timeout{30000};
  // Destination: a prepared migration not sent within this time is aborted (its import key
  // dropped), so that sources that went away leave nothing usable behind.
  std::chrono::seconds prepare_ttl{600};
};

class MigrationEngine {
 public:
  // destination_verifier: appraises destinations (from --migration-policy); null: this host
  // can receive but not send.
  MigrationEngine(MigrationConfig config, Manager& manager, Registry& registry, HostAttestationKey& host_ak,
                  HostCa& host_ca, RaClient& ra, std::unique_ptr<attest::Verifier> destination_verifier);

  // Source steps (the local API, root only).
  Result<api::Migration> Prepare(const std::string& vm, const std::string& destination, bool cold);
  Result<api::Migration> Send(const std::string& id);
  // activate_only: return once the destination is active (the guest-visible part of a live
  // migration), the migration still `committing`; a later Commit finishes (records
  // `activated`, certificates there, destruction and tombstone here).
  // Over the channel OpenCommitChannel left for it, if there is one.
  Result<api::Migration> Commit(const std::string& id, bool activate_only = false);
  // Opens the TLS channel to the destination that the next Commit of migration id uses, or, if
  // one is open, checks that it still answers (which also keeps the destination from closing
  // it as idle): a live migration's commit then starts inside the guest's pause without a
  // handshake. Changes no state. The channel goes with that Commit or an Abort; one unused for a
  // minute is dropped when another is opened.
  Result<api::Migration> OpenCommitChannel(const std::string& id);
  Result<api::Migration> Abort(const std::string& id);
  // One migration, or every one this host knows (id empty).
  Result<std::vector<api::Migration>> List(const std::string& id);

  // Destination: one step from a source vtmd (peer_host: the host its certificate names).
  migration_api::PeerResponse HandlePeer(const migration_api::PeerRequest& request, const std::string& peer_host);

  // At start-up: a VM left migrating-out by a prepare that never recorded its migration goes
  // back to where it was.
  Status Reconcile();

 private:
  Result<std::unique_ptr<MigrationPeerClient>> Connect(const std::string& destination);
  // Connect to a source migration's destination; a failure becomes the migration's last_error
  // (its state unchanged), so that `migrate status` says why the step did not go through.
  Result<std::unique_ptr<MigrationPeerClient>> ConnectFor(const MigrationRecord& m);
  // The channel OpenCommitChannel left for migration id (null if none), now the caller's.
  std::unique_ptr<MigrationPeerClient> TakeCommitChannel(const std::string& id);
  // Leaves peer as migration id's channel for its next commit.
  void KeepCommitChannel(const std::string& id, std::unique_ptr<MigrationPeerClient> peer) EXCLUDES(channels_mu_);
  Result<MigrationRecord> SourceMigration(const std::string& id);
  // Source, commit, before the fence: OK if `there` (the destination's status) says it can take
  // over m; otherwise m goes back from `committing` to `sent` and the error says why.
  Status ReturnToSentUnlessReady(const MigrationRecord& m, const Result<migration_api::PeerResponse>& there);
  Result<VmRecord> OwnedVm(const MigrationRecord& m);
  api::Migration Describe(const MigrationRecord& m);

  Result<migration_api::PrepareResponse> OnPrepare(const migration_api::PrepareRequest& req, const std::string& peer);
  Result<migration_api::TransferResponse> OnTransfer(const migration_api::TransferRequest& req, const std::string& peer);
  Result<migration_api::CommitResponse> OnCommit(const migration_api::CommitRequest& req, const std::string& peer);
  Status OnAbort(const migration_api::AbortRequest& req, const std::string& peer);
  Result<migration_api::StatusResponse> OnStatus(const migration_api::StatusRequest& req, const std::string& peer);
  Result<MigrationRecord> DestinationMigration(const std::string& id, const std::string& peer);
  // Destination: undoes what a prepare (and an interrupted transfer) left and drops the import key.
  Status AbortAsDestination(const MigrationRecord& m, const std::string& reason);
  // Destination: true if m was prepared longer ago than config_.prepare_ttl and never sent.
  bool PrepareExpired(const MigrationRecord& m) const;
  // Destination: aborts every prepared migration whose source let it expire.
  void ExpireAbandonedPrepares();

  MigrationConfig config_;
  Manager& manager_;
  Registry& registry_;
  HostAttestationKey& host_ak_;
  HostCa& host_ca_;
  RaClient& ra_;
  std::unique_ptr<attest::Verifier> verifier_;

  struct CommitChannel {
    std::unique_ptr<MigrationPeerClient> peer;
    std::chrono::steady_clock::time_point opened;
  };
  // Commit and abort of one migration, one at a time: a commit may take `committing` back to
  // `sent`, which an abort running beside it must not see half-way.
  Result<Claims::Claim> TakeTurn(const std::string& id);
  Claims turns_;

  Mutex channels_mu_;
  std::map<std::string, CommitChannel> commit_channels_ GUARDED_BY(channels_mu_);  // by migration ID
};

}  // namespace vtm
