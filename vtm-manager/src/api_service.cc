// Request validation and dispatch for the vtmd API.
#include "api_service.h"

#include "vtm/log.h"

namespace vtm {
namespace {

api::VmState ToApiState(VmState s) {
  switch (s) {
    case VmState::kProvisioned: return api::VM_STATE_PROVISIONED;
    case VmState::kStarting: return api::VM_STATE_STARTING;
    case VmState::kRunning: return api::VM_STATE_RUNNING;
    case VmState::kStopping: return api::VM_STATE_STOPPING;
    case VmState::kStopped: return api::VM_STATE_STOPPED;
    case VmState::kDeleting: return api::VM_STATE_DELETING;
    case VmState::kFailed: return api::VM_STATE_FAILED;
  }
  return api::VM_STATE_UNSPECIFIED;
}

Status CheckVmRef(const api::VmRef& ref) {
  if (ref.uuid().empty()) return Error(ErrorCode::kInvalidArgument, "name the VM by its UUID or name");
  if (NormalizeUuid(ref.uuid()).ok()) return OkStatus();
  return ValidateVmName(ref.uuid());
}

}  // namespace

api::Status ToApiStatus(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return api::STATUS_INVALID_ARGUMENT;
    case ErrorCode::kNotFound: return api::STATUS_NOT_FOUND;
    case ErrorCode::kAlreadyExists: return api::STATUS_ALREADY_EXISTS;
    case ErrorCode::kFailedPrecondition: return api::STATUS_FAILED_PRECONDITION;
    case ErrorCode::kPermissionDenied: return api::STATUS_PERMISSION_DENIED;
    case ErrorCode::kUnavailable: return api::STATUS_UNAVAILABLE;
    default: return api::STATUS_INTERNAL;
  }
}

Result<api::Request> ParseRequest(const std::string& bytes) {
  api::Request req;
  if (!req.ParseFromString(bytes)) return Error(ErrorCode::kInvalidArgument, "malformed request");
  switch (req.op_case()) {
    case api::Request::kCreate:
      if (!req.create().uuid().empty()) VTM_RETURN_IF_ERROR(NormalizeUuid(req.create().uuid()));
      if (!req.create().name().empty()) VTM_RETURN_IF_ERROR(ValidateVmName(req.create().name()));
      break;
    case api::Request::kStart: VTM_RETURN_IF_ERROR(CheckVmRef(req.start())); break;
    case api::Request::kStop: VTM_RETURN_IF_ERROR(CheckVmRef(req.stop())); break;
    case api::Request::kDelete: VTM_RETURN_IF_ERROR(CheckVmRef(req.delete_())); break;
    case api::Request::kShow: VTM_RETURN_IF_ERROR(CheckVmRef(req.show())); break;
    case api::Request::kList:
    case api::Request::kHost: break;
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
}

api::Response ApiService::Handle(const api::Request& req) {
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
    case api::Request::kCreate: one(manager_.Create(req.create().uuid(), req.create().name())); break;
    case api::Request::kStart: one(manager_.Start(req.start().uuid())); break;
    case api::Request::kStop: one(manager_.Stop(req.stop().uuid())); break;
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
      break;
    }
    case api::Request::OP_NOT_SET: fail(Error(ErrorCode::kInvalidArgument, "request names no operation")); break;
  }
  return resp;
}

}  // namespace vtm
