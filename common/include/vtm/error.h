// One error model for the whole code base: an Error carries a code a caller can
// branch on and a message a user can act on; Result<T> is a value or an Error.
// TPM return codes are turned into Errors once, at the host-TPM boundary.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace vtm {

enum class ErrorCode {
  kInvalidArgument,     // the caller asked for something malformed
  kNotFound,            // the named object does not exist
  kAlreadyExists,       // the object exists already
  kFailedPrecondition,  // the object is in the wrong state for this request
  kPermissionDenied,    // the caller may not do this
  kUnavailable,         // a dependency (daemon, TPM, socket) cannot be reached
  kPolicyMismatch,      // the host TPM refused a policy (e.g. PCRs changed)
  kDataLoss,            // stored data is corrupt or fails authentication
  kTpm,                 // a TPM command failed
  kIo,                  // an OS call failed
  kInternal,            // a broken invariant
};

const char* ErrorCodeName(ErrorCode code);

class Error {
 public:
  Error(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}

  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // Prefixes what was being done when the error happened: "starting VM x: <message>".
  Error&& Context(const std::string& what) && {
    message_ = what + ": " + message_;
    return std::move(*this);
  }
  std::string ToString() const { return std::string(ErrorCodeName(code_)) + ": " + message_; }

 private:
  ErrorCode code_;
  std::string message_;
};

// An Error built from errno after a failed OS call.
Error ErrnoError(const std::string& what, int err);
Error ErrnoError(const std::string& what);

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}          // NOLINT(google-explicit-constructor)
  Result(Error error) : v_(std::move(error)) {}      // NOLINT(google-explicit-constructor)

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { assert(ok()); return std::get<0>(v_); }
  const T& value() const& { assert(ok()); return std::get<0>(v_); }
  T&& value() && { assert(ok()); return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const& { assert(!ok()); return std::get<1>(v_); }
  Error&& error() && { assert(!ok()); return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const& { assert(!ok_); return error_; }
  Error&& error() && { assert(!ok_); return std::move(error_); }

 private:
  Error error_{ErrorCode::kInternal, ""};
  bool ok_ = true;
};

using Status = Result<void>;

inline Status OkStatus() { return Status(); }

}  // namespace vtm

// Propagates an error from an expression returning Result<...>/Status.
#define VTM_RETURN_IF_ERROR(expr)                 \
  do {                                            \
    auto vtm_status_ = (expr);                    \
    if (!vtm_status_.ok()) return std::move(vtm_status_).error(); \
  } while (0)

#define VTM_CONCAT_INNER_(a, b) a##b
#define VTM_CONCAT_(a, b) VTM_CONCAT_INNER_(a, b)
// Binds lhs to the value of a Result or returns its error.
#define VTM_ASSIGN_OR_RETURN(lhs, expr) VTM_ASSIGN_OR_RETURN_IMPL_(VTM_CONCAT_(vtm_result_, __LINE__), lhs, expr)
// tmp and lhs name declarations, which cannot be parenthesized.
// NOLINTBEGIN(bugprone-macro-parentheses)
#define VTM_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return std::move(tmp).error();    \
  lhs = std::move(tmp).value()
// NOLINTEND(bugprone-macro-parentheses)
