// Names of error codes and the errno helper.
#include "vtm/error.h"

#include <cerrno>
#include <cstring>

namespace vtm {

const char* ErrorCodeName(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kNotFound: return "not found";
    case ErrorCode::kAlreadyExists: return "already exists";
    case ErrorCode::kFailedPrecondition: return "failed precondition";
    case ErrorCode::kPermissionDenied: return "permission denied";
    case ErrorCode::kUnavailable: return "unavailable";
    case ErrorCode::kPolicyMismatch: return "policy mismatch";
    case ErrorCode::kDataLoss: return "data loss";
    case ErrorCode::kTpm: return "TPM error";
    case ErrorCode::kIo: return "I/O error";
    case ErrorCode::kInternal: return "internal error";
  }
  return "unknown error";
}

Error ErrnoError(const std::string& what, int err) {
  ErrorCode code = ErrorCode::kIo;
  if (err == ENOENT) code = ErrorCode::kNotFound;
  if (err == EACCES || err == EPERM) code = ErrorCode::kPermissionDenied;
  if (err == ECONNREFUSED || err == ETIMEDOUT) code = ErrorCode::kUnavailable;
  if (err == EEXIST) code = ErrorCode::kAlreadyExists;
  return Error(code, what + ": " + std::strerror(err));
}

Error ErrnoError(const std::string& what) { return ErrnoError(what, errno); }

}  // namespace vtm
