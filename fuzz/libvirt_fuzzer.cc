// libFuzzer target for what vtm reads from libvirt: domain XML (the hook gets it from libvirtd,
// `vtmctl libvirt patch` from the operator), qemu.conf and `virsh list --uuid` output.
#include <cstdint>
#include <string>

#include "vtm/libvirt.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  auto domain = vtm::libvirt::ReadDomain(input);
  if (domain.ok()) {
    (void)vtm::libvirt::OptsIn(*domain, "/run/vtm");
    vtm::libvirt::TpmSettings s;
    s.socket = "/run/vtm/vms/" + domain->uuid + "/tpm.sock";
    auto patched = vtm::libvirt::PatchDomain(input, s);
    // What we write we must read back, marked and pointing at the socket.
    if (patched.ok()) {
      auto again = vtm::libvirt::ReadDomain(*patched);
      if (!again.ok() || !again->marked || again->uuid != domain->uuid) __builtin_trap();
    }
    (void)vtm::libvirt::RewriteTpmSocket(input, s.socket);
  } else if (domain.error().code() != vtm::ErrorCode::kInvalidArgument) {
    __builtin_trap();
  }
  (void)vtm::libvirt::ParseQemuConfUser(input);
  (void)vtm::libvirt::ParseDomainUuidList(input);
  return 0;
}
