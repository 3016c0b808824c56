// Request validation and dispatch for the vtmd API.
#include "api_service.h"

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <ctime>
#include <set>

#include "ca_rotation.h"
#include "migration_engine.h"
#include "vtm/hex.h"
#include "vtm/log.h"
#include "vtm/x509.h"
#include "vtpm_provisioner.h"

namespace vtm {
namespace {

api::VmState ToApiState(VmState s) {
  switch (s) {
    case VmState::kDefined: return api::VM_STATE_DEFINED;
    case VmState::kProvisioned: return api::VM_STATE_PROVISIONED;
    case VmState::kStarting: return api::VM_STATE_STARTING;
    case VmState::kRunning: return api::VM_STATE_RUNNING;
    case VmState::kStopping: return api::VM_STATE_STOPPING;
    case VmState::kStopped: return api::VM_STATE_STOPPED;
    case VmState::kDeleting: return api::VM_STATE_DELETING;
    case VmState::kFailed: return api::VM_STATE_FAILED;
    case VmState::kMigratingOut: return api::VM_STATE_MIGRATING_OUT;
    case VmState::kIncoming: return api::VM_STATE_INCOMING;
  }
  return api::VM_STATE_UNSPECIFIED;
}

// True for an RSA key, false for an EC key; anything else is refused.
Result<bool> IsRsaSpki(const std::string& spki) {
  const auto* p = reinterpret_cast<const unsigned char*>(spki.data());
  EVP_PKEY* key = d2i_PUBKEY(nullptr, &p, static_cast<long>(spki.size()));
  if (key == nullptr || p != reinterpret_cast<const unsigned char*>(spki.data()) + spki.size()) {
    EVP_PKEY_free(key);
    return Error(ErrorCode::kInvalidArgument, "the EK public key is not a DER SubjectPublicKeyInfo");
  }
  int id = EVP_PKEY_get_base_id(key);
  EVP_PKEY_free(key);
  if (id == EVP_PKEY_RSA) return true;
  if (id == EVP_PKEY_EC) return false;
  return Error(ErrorCode::kInvalidArgument, "the EK public key is neither RSA nor EC");
}

Status CheckVmRef(const std::string& vm) {
  if (vm.empty()) return Error(ErrorCode::kInvalidArgument, "name the VM by its UUID or name");
  if (NormalizeUuid(vm).ok()) return OkStatus();
  return ValidateVmName(vm);
}

}  // namespace

Result<api::Request> ParseRequest(const std::string& bytes) {
  api::Request req;
  if (!req.ParseFromString(bytes)) return Error(ErrorCode::kInvalidArgument, "malformed request");
  switch (req.op_case()) {
    case api::Request::kCreate:
      if (!req.create().uuid().empty()) VTM_RETURN_IF_ERROR(NormalizeUuid(req.create().uuid()));
      if (!req.create().name().empty()) VTM_RETURN_IF_ERROR(ValidateVmName(req.create().name()));
      if (!req.create().service().empty()) VTM_RETURN_IF_ERROR(ValidateVmName(req.create().service()));
      break;
    case api::Request::kCerts: VTM_RETURN_IF_ERROR(CheckVmRef(req.certs().uuid())); break;
    case api::Request::kRenewCerts: VTM_RETURN_IF_ERROR(CheckVmRef(req.renew_certs().uuid())); break;
    case api::Request::kCaInstall:
      if (req.ca_install().certificate_pem().empty()) {
        return Error(ErrorCode::kInvalidArgument, "ca install needs the certificate issued by the fleet CA");
      }
      break;
    case api::Request::kCaShow:
    case api::Request::kCaCsr:
    case api::Request::kCaCrl: break;
    case api::Request::kCaRotate:
      if (req.ca_rotate().csr() && req.ca_rotate().cancel()) {
        return Error(ErrorCode::kInvalidArgument, "ca rotate: --csr and --cancel exclude each other");
      }
      break;
    case api::Request::kActivateHostCredential:
      if (req.activate_host_credential().id_object().size() > 1024 ||
          req.activate_host_credential().encrypted_secret().size() > 1024) {
        return Error(ErrorCode::kInvalidArgument, "the credential is too large");
      }
      break;
    case api::Request::kIssueEkCert: {
      const auto& r = req.issue_ek_cert();
      if (r.ek_spki_der().empty() || r.ek_spki_der().size() > 4096) {
        return Error(ErrorCode::kInvalidArgument, "issue_ek_cert needs the EK public key (DER SubjectPublicKeyInfo)");
      }
      for (const std::string* field : {&r.tpm_manufacturer(), &r.tpm_model(), &r.tpm_version(), &r.vm_id()}) {
        if (field->size() > 128) return Error(ErrorCode::kInvalidArgument, "issue_ek_cert: a field is over 128 bytes");
      }
      break;
    }
    case api::Request::kAttestHost: VTM_RETURN_IF_ERROR(CheckNonce(req.attest_host().nonce())); break;
    case api::Request::kAttestDeep: {
      const auto& d = req.attest_deep();
      VTM_RETURN_IF_ERROR(CheckVmRef(d.vm()));
      VTM_RETURN_IF_ERROR(CheckNonce(d.nonce()));
      // A TPMS_ATTEST of a quote and a TPMT_SIGNATURE are well under 1 KiB; 24 PCRs of 4 banks
      // under 4 KiB. Larger is not a quote.
      if (d.guest_quote().attest().empty() || d.guest_quote().attest().size() > 2048 ||
          d.guest_quote().signature().empty() || d.guest_quote().signature().size() > 2048 ||
          d.guest_quote().pcr_values().size() > 8192) {
        return Error(ErrorCode::kInvalidArgument,
                     "the guest quote needs its TPMS_ATTEST and TPMT_SIGNATURE (tpm2_quote -m and -s), each under "
                     "2 KiB, and PCR values under 8 KiB");
      }
      break;
    }
    case api::Request::kStart: VTM_RETURN_IF_ERROR(CheckVmRef(req.start().uuid())); break;
    case api::Request::kStop: VTM_RETURN_IF_ERROR(CheckVmRef(req.stop().uuid())); break;
    case api::Request::kDelete: VTM_RETURN_IF_ERROR(CheckVmRef(req.delete_().uuid())); break;
    case api::Request::kShow: VTM_RETURN_IF_ERROR(CheckVmRef(req.show().uuid())); break;
    case api::Request::kList:
    case api::Request::kHost: break;
    case api::Request::kHostReseal: {
      const auto& expected = req.host_reseal().expected();
      if (expected.empty()) {
        return Error(ErrorCode::kInvalidArgument, "host reseal needs the expected value of at least one PCR (--pcr N=HEX)");
      }
      std::set<uint32_t> seen;
      for (const auto& v : expected) {
        if (v.pcr() > 23) {
          return Error(ErrorCode::kInvalidArgument, "PCR " + std::to_string(v.pcr()) + " is not an index from 0 to 23");
        }
        if (!seen.insert(v.pcr()).second) {
          return Error(ErrorCode::kInvalidArgument, "PCR " + std::to_string(v.pcr()) + " is given more than once");
        }
        // The longest bank is sha512: 64 bytes, 128 hex digits.
        if (v.digest_hex().size() > 128 || !HexDecode(v.digest_hex()).ok()) {
          return Error(ErrorCode::kInvalidArgument, "the expected value of PCR " + std::to_string(v.pcr()) +
                                                        " is not a digest in hex (e.g. 64 hex digits for sha256)");
        }
      }
      break;
    }
    case api::Request::kMigrate: {
      const auto& m = req.migrate();
      switch (m.step()) {
        case api::MigrateRequest::STEP_PREPARE:
          VTM_RETURN_IF_ERROR(CheckVmRef(m.vm()));
          if (m.destination().empty() || m.destination().size() > 256) {
            return Error(ErrorCode::kInvalidArgument, "migrate prepare needs the destination HOST:PORT");
          }
          break;
        case api::MigrateRequest::STEP_SEND:
        case api::MigrateRequest::STEP_COMMIT:
        case api::MigrateRequest::STEP_ABORT:
        case api::MigrateRequest::STEP_CONNECT:
          if (m.migration_id().empty()) return Error(ErrorCode::kInvalidArgument, "this step needs the migration ID");
          [[fallthrough]];
        case api::MigrateRequest::STEP_STATUS:
          if (m.migration_id().size() > 64) return Error(ErrorCode::kInvalidArgument, "a migration ID is at most 64 characters");
          break;
        default: return Error(ErrorCode::kInvalidArgument, "migrate needs a step (prepare, send, commit, abort, status, connect)");
      }
      break;
    }
    case api::Request::OP_NOT_SET:
      return Error(ErrorCode::kInvalidArgument, "request names no operation (this vtmd may be older than vtmctl)");
  }
  return req;
}

void ApiService::FillVm(const VmRecord& rec, api::Vm* out) {
  VmPaths paths = manager_.PathsFor(rec.uuid);
  out->set_uuid(rec.uuid);
  out->set_name(rec.name);
  out->set_state(ToApiState(rec.state));
  out->set_generation(rec.generation);
  out->set_tpm_socket(paths.tpm_socket);
  out->set_state_dir(paths.vm_dir);
  out->set_instance_pid(rec.instance_pid);
  out->set_instance_uid(rec.instance_uid);
  out->set_created_at(rec.created_at);
  out->set_updated_at(rec.updated_at);
  out->set_last_error(rec.last_error);
  out->set_service(rec.service);
}

Status ApiService::HandleCa(const api::Request& req, const ApiCaller& caller, api::Response* resp) {
  if (host_ca_ == nullptr || host_ak_ == nullptr) {
    return Error(ErrorCode::kFailedPrecondition, "this vtmd runs without a host CA");
  }
  switch (req.op_case()) {
    case api::Request::kCaShow: {
      auto* ca = resp->mutable_ca();
      ca->set_certificate_pem(ca::DerToPem(host_ca_->ca_certificate()));
      std::string chain = host_ca_->ca_chain_der().substr(host_ca_->ca_certificate().size());
      if (!chain.empty()) ca->set_chain_pem(ca::DerToPem(chain));
      ca->set_residency(host_ca_->residency() == CaResidency::kTpm ? "tpm" : "sealed");
      if (host_ca_->residency() == CaResidency::kSealed) {
        ca->set_ca_key_quote_attest(host_ca_->ca_key_quote().attest);
        ca->set_ca_key_quote_signature(host_ca_->ca_key_quote().signature);
      }
      if (host_ca_->rotation_pending()) {
        ca->set_rotation("pending");
      } else if (!host_ca_->RetiredAwaitingFinalCrl().empty()) {
        ca->set_rotation("incomplete");
      }
      VTM_ASSIGN_OR_RETURN(auto retired, host_ca_->RetiredCas());
      for (const auto& r : retired) ca->add_retired_certificate_pem(ca::DerToPem(r.certificate));
      if (!host_ak_->ek_certificate().empty()) ca->set_host_ek_certificate_pem(ca::DerToPem(host_ak_->ek_certificate()));
      ca->set_host_ak_public_pem(ca::DerToPem(host_ak_->ak_public().spki_der, "PUBLIC KEY"));
      ca->set_host_ek_public_pem(ca::DerToPem(host_ak_->ek_public().spki_der, "PUBLIC KEY"));
      ca->set_host_ak_name(HexEncode(host_ak_->ak_public().name));
      return OkStatus();
    }
    case api::Request::kCaCsr: {
      VTM_ASSIGN_OR_RETURN(std::string csr, host_ca_->CreateCsr(req.ca_csr().pending()));
      resp->set_pem(ca::DerToPem(csr, "CERTIFICATE REQUEST"));
      return OkStatus();
    }
    case api::Request::kCaInstall: {
      bool rotated = false;
      VTM_RETURN_IF_ERROR(
          host_ca_->InstallCertificate(req.ca_install().certificate_pem(), req.ca_install().chain_pem(), &rotated));
      if (rotated) return CompleteRotation(resp);
      // A certificate for the current key (joining a fleet): new connections get the new chain.
      std::string errors;
      const std::string endpoints = RefreshEndpointCertificates(&errors);
      if (!endpoints.empty()) resp->set_note("vtmd's " + endpoints + " TLS certificates re-issued under the new chain");
      if (!errors.empty()) {
        resp->set_note("WARNING: re-issuing vtmd's TLS certificates failed (" + errors +
                       "); restart vtmd so that its endpoints present the new chain");
      }
      return OkStatus();
    }
    case api::Request::kCaRotate: {
      // Every certificate of every VM hangs on the CA key: replacing it is the host
      // administrator's decision, as re-sealing the master key is.
      if (!caller.uid || *caller.uid != 0) {
        return Error(ErrorCode::kPermissionDenied,
                     "replacing the host CA key is for root only; " +
                         (caller.uid ? "uid " + std::to_string(*caller.uid) : std::string("a remote caller")) +
                         " may not");
      }
      const auto& r = req.ca_rotate();
      if (r.cancel()) return host_ca_->CancelRotation();
      // An interrupted rotation (switched, not complete) is completed, not begun anew.
      if (!host_ca_->RetiredAwaitingFinalCrl().empty()) return CompleteRotation(resp);
      const bool self_signed = !r.csr() && host_ca_->self_signed();
      VTM_ASSIGN_OR_RETURN(std::string csr, host_ca_->BeginRotation(self_signed));
      if (!self_signed) {
        resp->set_pem(ca::DerToPem(csr, "CERTIFICATE REQUEST"));
        resp->set_note(
            "a new host CA key was created (in the residency of the current one) and waits for its certificate: have "
            "the fleet CA certify this CSR (CA:TRUE, pathlen 0, keyCertSign|cRLSign), then `vtmctl ca install CERT "
            "[CHAIN]`; the current CA key signs until then");
        return OkStatus();
      }
      return CompleteRotation(resp);
    }
    case api::Request::kIssueEkCert: {
      // The host CA would certify whatever public key it is given as a TPM EK: only root, who
      // could read the CA's residency anyway, may ask, and what it gets is marked as a key vtm
      // did not create (vtmd's own provisioning issues EK certificates in-process, unmarked).
      if (!caller.uid || *caller.uid != 0) {
        return Error(ErrorCode::kPermissionDenied,
                     "issuing an EK certificate for an outside key (swtpm_setup's certificate tool, "
                     "vtm-create-certs) is for root only; " +
                         (caller.uid ? "uid " + std::to_string(*caller.uid) : std::string("a remote caller")) +
                         " may not. Run swtpm_setup as root");
      }
      const auto& r = req.issue_ek_cert();
      ca::EkCertRequest ek;
      ek.unprovisioned_key = true;
      ek.ek_spki_der = r.ek_spki_der();
      VTM_ASSIGN_OR_RETURN(ek.rsa, IsRsaSpki(ek.ek_spki_der));
      ek.tpm_manufacturer = r.tpm_manufacturer().empty() ? "id:00001014" : r.tpm_manufacturer();
      ek.tpm_model = r.tpm_model().empty() ? "swtpm" : r.tpm_model();
      ek.tpm_version = r.tpm_version().empty() ? "id:20191023" : r.tpm_version();
      VTM_ASSIGN_OR_RETURN(ek.validity, host_ca_->NewCertificateValidity(std::time(nullptr)));
      const std::string owner = "swtpm_setup:" + (r.vm_id().empty() ? std::string("-") : r.vm_id());
      VTM_ASSIGN_OR_RETURN(CertRecord rec, host_ca_->Issue(registry_, owner, ek.rsa ? "ek-rsa" : "ek-ecc",
                                                           [&](ca::Signer& key, const std::string& issuer, uint64_t serial) {
                                                             ek.serial = serial;
                                                             return ca::IssueEkCertificate(key, issuer, ek);
                                                           }));
      resp->set_pem(ca::DerToPem(rec.der));
      return OkStatus();
    }
    case api::Request::kActivateHostCredential: {
      TpmCredential cred{req.activate_host_credential().id_object(), req.activate_host_credential().encrypted_secret()};
      auto secret = host_ak_->ActivateCredential(cred);
      if (!secret.ok()) {
        return Error(ErrorCode::kInvalidArgument, "the host TPM refused the credential: " + secret.error().message());
      }
      resp->set_secret(std::string(reinterpret_cast<const char*>(secret->data()), secret->size()));
      return OkStatus();
    }
    case api::Request::kCaCrl: {
      VTM_ASSIGN_OR_RETURN(auto retired, host_ca_->RetiredCas());
      if (req.ca_crl().retired()) {
        if (retired.empty()) return Error(ErrorCode::kNotFound, "this host's CA key was never rotated: no retired CA");
        std::string pems;
        for (const auto& r : retired) pems += r.crl;
        resp->set_pem(pems);
        return OkStatus();
      }
      VTM_ASSIGN_OR_RETURN(auto revoked, registry_.RevokedCertificates());
      // After a rotation the registry also holds what retired keys issued: their final CRLs
      // name those, this one only what the key in use issued.
      const bool rotated = !retired.empty() || !host_ca_->RetiredAwaitingFinalCrl().empty();
      const std::string ca_cert = host_ca_->ca_certificate();
      std::vector<ca::RevokedCert> list;
      list.reserve(revoked.size());
      for (const auto& c : revoked) {
        if (rotated && !IssuedBy(c.der, ca_cert)) continue;
        list.push_back({c.serial, static_cast<std::time_t>(c.revoked_unix)});
      }
      VTM_ASSIGN_OR_RETURN(uint64_t number, registry_.NextCrlNumber());
      VTM_ASSIGN_OR_RETURN(std::string crl, host_ca_->CreateCrl(list, number, std::time(nullptr)));
      resp->set_pem(ca::DerToPem(crl, "X509 CRL"));
      return OkStatus();
    }
    default: return Error(ErrorCode::kInvalidArgument, "not a CA request");
  }
}

std::string ApiService::RefreshEndpointCertificates(std::string* errors) {
  std::string endpoints;
  for (HostTlsIdentity* identity : tls_identities_) {
    bool reissued = false;
    Status st = identity->ReissueIfStale(&reissued);
    if (!st.ok()) {
      LOG_WARNING << st.error().message();
      *errors += (errors->empty() ? "" : "; ") + st.error().message();
    } else if (reissued) {
      endpoints += (endpoints.empty() ? "" : " and ") + identity->purpose();
    }
  }
  return endpoints;
}

Status ApiService::CompleteRotation(api::Response* resp) {
  MutexLock one_at_a_time(completion_mu_);
  // The endpoints first: once the completion has revoked their old certificates, new
  // connections already get the new ones. (A crash in between: the next start issues them.)
  std::string endpoint_errors;
  const std::string endpoints = RefreshEndpointCertificates(&endpoint_errors);
  VTM_ASSIGN_OR_RETURN(CaRotationReport report, CompleteCaRotation(*host_ca_, manager_, registry_));
  resp->mutable_ca()->set_certificate_pem(ca::DerToPem(host_ca_->ca_certificate()));
  std::string note = "the host CA key was rotated: the new key signs from now on";
  if (!report.retired.empty()) {
    note += "; " + std::to_string(report.vms_renewed) +
            " VMs' certificates re-issued by it (they reach each vTPM's NV at its next start), " +
            std::to_string(report.revoked) + " other certificates of the old key revoked; the old CA certificate " +
            "and its final CRL: `vtmctl ca crl --retired`";
  }
  if (!endpoints.empty()) {
    const bool several = endpoints.find(" and ") != std::string::npos;
    note += "; vtmd's " + endpoints + (several ? " endpoints present" : " endpoint presents") +
            " TLS certificates of the new key to new connections (open ones finish on the old), no restart needed";
  }
  if (!endpoint_errors.empty()) {
    note += "; WARNING: " + endpoint_errors + ": restart vtmd to issue them";
  }
  resp->set_note(note);
  return OkStatus();
}

Status ApiService::HandleAttest(const api::Request& req, api::Response* resp) {
  if (ra_ == nullptr) return Error(ErrorCode::kFailedPrecondition, "this vtmd runs without a host CA; attestation needs one");
  if (req.op_case() == api::Request::kAttestHost) {
    VTM_ASSIGN_OR_RETURN(*resp->mutable_host_evidence(), ra_->HostEvidence(req.attest_host().nonce()));
    return OkStatus();
  }
  const auto& d = req.attest_deep();
  VTM_ASSIGN_OR_RETURN(*resp->mutable_deep_evidence(),
                       ra_->DeepEvidence(d.vm(), d.nonce(), d.guest_quote(), d.guest_event_log()));
  return OkStatus();
}

api::Response ApiService::Handle(const api::Request& req, const ApiCaller& caller) {
  api::Response resp;
  auto fail = [&resp](const Error& e) {
    resp.set_status(ToApiStatus(e.code()));
    resp.set_error(e.message());
  };
  auto one = [&](const Result<VmRecord>& r) {
    if (r.ok()) {
      FillVm(*r, resp.add_vms());
    } else {
      fail(r.error());
    }
  };
  switch (req.op_case()) {
    case api::Request::kCreate:
      one(manager_.Create(req.create().uuid(), req.create().name(), req.create().service()));
      break;
    case api::Request::kCerts:
    case api::Request::kRenewCerts: {
      auto certs = req.has_renew_certs() ? manager_.RenewCertificates(req.renew_certs().uuid())
                                         : manager_.Certificates(req.certs().uuid());
      if (!certs.ok()) {
        fail(certs.error());
        break;
      }
      for (const auto& c : *certs) ToApiCertificate(c, resp.add_certificates());
      if (host_ca_ != nullptr) {
        auto* ca = resp.mutable_ca();
        ca->set_certificate_pem(ca::DerToPem(host_ca_->ca_certificate()));
      }
      break;
    }
    case api::Request::kCaShow:
    case api::Request::kCaCsr:
    case api::Request::kCaInstall:
    case api::Request::kCaCrl:
    case api::Request::kCaRotate:
    case api::Request::kIssueEkCert:
    case api::Request::kActivateHostCredential:
      if (Status st = HandleCa(req, caller, &resp); !st.ok()) fail(st.error());
      break;
    case api::Request::kAttestHost:
    case api::Request::kAttestDeep:
      if (Status st = HandleAttest(req, &resp); !st.ok()) fail(st.error());
      break;
    case api::Request::kStart: {
      std::string note;
      one(manager_.Start(req.start().uuid(), &note));
      resp.set_note(note);
      break;
    }
    case api::Request::kStop: {
      std::string note;
      one(manager_.Stop(req.stop().uuid(), req.stop().force(), &note));
      resp.set_note(note);
      break;
    }
    case api::Request::kShow: one(manager_.Show(req.show().uuid())); break;
    case api::Request::kDelete: {
      auto rec = manager_.Show(req.delete_().uuid());
      if (!rec.ok()) {
        fail(rec.error());
        break;
      }
      Status st = manager_.Delete(rec->uuid);
      if (st.ok()) {
        FillVm(*rec, resp.add_vms());
        resp.mutable_vms(0)->set_state(api::VM_STATE_UNSPECIFIED);
      } else {
        fail(st.error());
      }
      break;
    }
    case api::Request::kList: {
      auto vms = manager_.List();
      if (!vms.ok()) {
        fail(vms.error());
        break;
      }
      for (const auto& rec : *vms) FillVm(rec, resp.add_vms());
      break;
    }
    case api::Request::kHost: {
      auto* h = resp.mutable_host();
      h->set_host_tpm(host_.host_tpm);
      h->set_simulated_host_tpm(host_.simulated);
      h->set_pcr_policy(host_.pcr_policy);
      h->set_version(VTM_VERSION);
      if (host_.measurements != nullptr) {
        MeasurementLogStatus m = host_.measurements->Check();
        h->set_measure_pcr(m.pcr);
        h->set_measurement_log_consistent(m.consistent);
        h->set_measurement_log_detail(m.detail);
      }
      h->set_run_dir(host_.run_dir);
      break;
    }
    case api::Request::kMigrate:
      if (Status st = HandleMigrate(req.migrate(), caller, &resp); !st.ok()) fail(st.error());
      break;
    case api::Request::kHostReseal:
      if (Status st = HandleReseal(req.host_reseal(), caller, &resp); !st.ok()) fail(st.error());
      break;
    case api::Request::OP_NOT_SET: fail(Error(ErrorCode::kInvalidArgument, "request names no operation")); break;
  }
  return resp;
}

Status ApiService::HandleMigrate(const api::MigrateRequest& req, const ApiCaller& caller, api::Response* resp) {
  // Moving a VM's keys to another host is the host administrator's decision.
  if (!caller.uid || *caller.uid != 0) {
    return Error(ErrorCode::kPermissionDenied, "migration is for root only");
  }
  if (migration_ == nullptr) {
    return Error(ErrorCode::kFailedPrecondition,
                 "this vtmd takes no part in migrations: start it with --migration-peer-ca (the fleet CA) and "
                 "--migration-policy (source) or --migration-listen (destination)");
  }
  Result<api::Migration> one = Error(ErrorCode::kInternal, "");
  switch (req.step()) {
    case api::MigrateRequest::STEP_PREPARE: one = migration_->Prepare(req.vm(), req.destination(), req.cold()); break;
    case api::MigrateRequest::STEP_SEND: one = migration_->Send(req.migration_id()); break;
    case api::MigrateRequest::STEP_COMMIT: one = migration_->Commit(req.migration_id(), req.activate_only()); break;
    case api::MigrateRequest::STEP_ABORT: one = migration_->Abort(req.migration_id()); break;
    case api::MigrateRequest::STEP_CONNECT: one = migration_->OpenCommitChannel(req.migration_id()); break;
    default: {
      VTM_ASSIGN_OR_RETURN(auto all, migration_->List(req.migration_id()));
      for (auto& m : all) *resp->add_migrations() = std::move(m);
      return OkStatus();
    }
  }
  if (!one.ok()) return std::move(one).error();
  *resp->add_migrations() = std::move(one).value();
  return OkStatus();
}

Status ApiService::HandleReseal(const api::HostResealRequest& req, const ApiCaller& caller, api::Response* resp) {
  // Which host states may unseal the master key is the host administrator's decision.
  if (!caller.uid || *caller.uid != 0) {
    return Error(ErrorCode::kPermissionDenied,
                 "re-sealing the master key is for root only; " +
                     (caller.uid ? "uid " + std::to_string(*caller.uid) : std::string("a remote caller")) + " may not");
  }
  if (!reseal_) return Error(ErrorCode::kFailedPrecondition, "this vtmd cannot re-seal its master key");
  std::map<int, std::string> expected;
  for (const auto& v : req.expected()) {
    VTM_ASSIGN_OR_RETURN(std::string digest, HexDecode(v.digest_hex()));
    expected[static_cast<int>(v.pcr())] = std::move(digest);
  }
  VTM_ASSIGN_OR_RETURN(PreparedReseal prepared, reseal_(expected));
  auto* out = resp->mutable_reseal();
  out->set_pcr_selection(prepared.expected.selection.ToString());
  for (const auto& [pcr, digest] : prepared.expected.digests) {
    auto* v = out->add_pcrs();
    v->set_pcr(static_cast<uint32_t>(pcr));
    v->set_digest_hex(HexEncode(digest));
  }
  for (int pcr : prepared.changed) out->add_changed(static_cast<uint32_t>(pcr));
  out->set_prepared_file(prepared.path);
  out->set_current_file(prepared.current_path);
  return OkStatus();
}

}  // namespace vtm
