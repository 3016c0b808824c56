// Allow-list seccomp filters (see seccomp_filter.h).
#include "seccomp_filter.h"

#include <sys/prctl.h>

namespace vtm::instance {

SeccompAllowList::SeccompAllowList() : ctx_(seccomp_init(SCMP_ACT_KILL_PROCESS)) {}

SeccompAllowList::~SeccompAllowList() {
  if (ctx_ != nullptr) seccomp_release(ctx_);
}

Status SeccompAllowList::Allow(std::initializer_list<int> syscalls) {
  if (ctx_ == nullptr) return Error(ErrorCode::kInternal, "seccomp_init failed");
  for (int sys : syscalls) {
    if (seccomp_rule_add(ctx_, SCMP_ACT_ALLOW, sys, 0) != 0) {
      return Error(ErrorCode::kInternal, "seccomp_rule_add failed for syscall " + std::to_string(sys));
    }
  }
  return OkStatus();
}

Status SeccompAllowList::AllowIf(int syscall, scmp_arg_cmp rule) {
  if (ctx_ == nullptr) return Error(ErrorCode::kInternal, "seccomp_init failed");
  if (seccomp_rule_add(ctx_, SCMP_ACT_ALLOW, syscall, 1, rule) != 0) {
    return Error(ErrorCode::kInternal, "seccomp_rule_add failed for syscall " + std::to_string(syscall));
  }
  return OkStatus();
}

Status SeccompAllowList::Load(const std::string& whose) {
  if (ctx_ == nullptr) return Error(ErrorCode::kInternal, "seccomp_init failed");
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return ErrnoError("PR_SET_NO_NEW_PRIVS");
  int rc = seccomp_load(ctx_);
  if (rc != 0) return ErrnoError("loading the seccomp filter of " + whose, -rc);
  return OkStatus();
}

}  // namespace vtm::instance
