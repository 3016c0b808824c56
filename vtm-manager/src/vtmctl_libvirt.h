// `vtmctl libvirt ...`: the libvirt hook and the operator's helpers for libvirt domains
// (docs/operator-guide.md, "libvirt").
#pragma once

#include <string>
#include <vector>

namespace vtm {

// args: everything after "libvirt". Returns vtmctl's exit code.
int RunLibvirtCommand(const std::vector<std::string>& args, const std::string& vtmd_socket);

}  // namespace vtm
