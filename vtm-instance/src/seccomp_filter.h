// An allow-list seccomp filter: any system call not allowed kills the process. The relay and
// the peer inspector each build one after setup.
//
// Thread safety: one thread builds and loads a filter.
#pragma once

#include <seccomp.h>

#include <initializer_list>
#include <string>

#include "vtm/error.h"

namespace vtm::instance {

class SeccompAllowList {
 public:
  SeccompAllowList();
  ~SeccompAllowList();
  SeccompAllowList(const SeccompAllowList&) = delete;
  SeccompAllowList& operator=(const SeccompAllowList&) = delete;

  Status Allow(std::initializer_list<int> syscalls);
  // The call only when its arguments match `rule` (SCMP_A0(SCMP_CMP_EQ, x), ...).
  Status AllowIf(int syscall, scmp_arg_cmp rule);
  // Sets PR_SET_NO_NEW_PRIVS and loads the filter into this process; `whose` names it in errors.
  Status Load(const std::string& whose);

 private:
  scmp_filter_ctx ctx_;
};

}  // namespace vtm::instance
