// The vtmd API's status codes and vtm's ErrorCode, both ways: servers answer an Error as a
// status (ToApiStatus), clients of the API (vtmctl, the libvirt hook, remote verifiers) turn a
// failed response back into an Error (ErrorFromResponse). Header-only so that every user of
// vtm_proto, with or without vtmd's libraries, shares the one mapping.
#pragma once

#include <string>

#include "vtm.pb.h"
#include "vtm/error.h"

namespace vtm {

inline api::Status ToApiStatus(ErrorCode code) {
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

inline ErrorCode FromApiStatus(api::Status status) {
  switch (status) {
    case api::STATUS_INVALID_ARGUMENT: return ErrorCode::kInvalidArgument;
    case api::STATUS_NOT_FOUND: return ErrorCode::kNotFound;
    case api::STATUS_ALREADY_EXISTS: return ErrorCode::kAlreadyExists;
    case api::STATUS_FAILED_PRECONDITION: return ErrorCode::kFailedPrecondition;
    case api::STATUS_PERMISSION_DENIED: return ErrorCode::kPermissionDenied;
    case api::STATUS_UNAVAILABLE: return ErrorCode::kUnavailable;
    default: return ErrorCode::kInternal;
  }
}

// The Error of a response whose status is not OK; prefix (e.g. "the host answered: ") goes
// before vtmd's own message.
inline Error ErrorFromResponse(const api::Response& resp, const std::string& prefix = "") {
  return Error(FromApiStatus(resp.status()), prefix + resp.error());
}

}  // namespace vtm
