// libvirt integration: what vtm reads from and writes into libvirt's files. The QEMU user
// from qemu.conf, and the parts of a domain's XML that concern its vTPM: the opt-in marker
// (a <metadata> element in vtm's namespace), the <tpm> device with its external backend, and
// the rewrites the hook and `vtmctl libvirt` make. Domain XML is parsed with libxml2 without
// network access, DTD loading or entity substitution.
//
// Thread safety: free functions without shared state; safe from any thread once
// InitXml() (called by each of them) has run.
#pragma once

#include <sys/types.h>

#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "vtm/error.h"

namespace vtm::libvirt {

// The namespace of vtm's element in a domain's <metadata>. Stable: domains carry it.
//   <metadata><vtm:vtpm xmlns:vtm="https://vtm.example/ns/1" create="yes" service="shop"/></metadata>
inline constexpr const char* kMetadataNamespace = "https://vtm.example/ns/1";
inline constexpr const char* kMetadataPrefix = "vtm";
inline constexpr const char* kMetadataElement = "vtpm";

// ---- qemu.conf -----------------------------------------------------------------------------

// The value of the `user = "..."` setting in libvirt's qemu.conf text, nullopt if it is not
// set (only commented out, as Debian ships it). An error names the line that is malformed.
Result<std::optional<std::string>> ParseQemuConfUser(const std::string& qemu_conf);

struct QemuUser {
  std::string user;    // a user name, or "+N" for a numeric uid as libvirt writes it
  std::string source;  // where it came from, for messages
};

// The user libvirt runs QEMU as: qemu.conf's `user` if set; else `libvirt-qemu` if that
// account exists (Debian's build default); else root (libvirt's upstream default).
Result<QemuUser> DetectQemuUser(const std::string& qemu_conf_path,
                                const std::function<bool(const std::string&)>& user_exists);
// True if the account exists on this system (getpwnam).
bool SystemUserExists(const std::string& user);

struct UserIds {
  uid_t uid = 0;
  gid_t gid = 0;  // the user's primary group
};
// uid and gid of a QEMU user as libvirt names it: an account name or "+N" for uid N.
Result<UserIds> ResolveQemuUser(const std::string& user);

// ---- domain XML ----------------------------------------------------------------------------

struct DomainVtpm {
  std::string name;
  std::string uuid;                  // lower-case, as in <uuid>
  bool marked = false;               // has <vtm:vtpm> in <metadata>
  bool create = true;                // the marker's create="yes|no": may the hook create the vTPM
  std::string service;               // the marker's service="...", named in the IK certificate
  std::vector<std::string> sockets;  // paths of <tpm><backend type='external'><source type='unix'>
  std::string partition;             // <resource><partition>: the cgroup libvirt puts QEMU under
};

// Reads what vtm needs from a domain's XML. Errors say what is wrong with the document.
Result<DomainVtpm> ReadDomain(const std::string& xml);

// A domain opts in by the marker, or by an external TPM backend whose socket lies below
// run_dir/vms/ (vtmd's per-VM sockets).
bool OptsIn(const DomainVtpm& domain, const std::string& run_dir);

struct TpmSettings {
  std::string socket;              // the vTPM's tpm.sock
  std::string model = "tpm-crb";   // tpm-crb or tpm-tis
  bool create = true;
  std::string service;
  // Non-empty: the <resource><partition> to set. The vTPM tells its own VM's QEMU from another
  // VM's by this cgroup (vtm-instance's peer check), which a QEMU cannot leave.
  std::string partition;
};

// The <tpm> device element and the <metadata> marker, as text for operators.
std::string TpmElement(const TpmSettings& settings);
std::string MetadataElement(const TpmSettings& settings);

// The domain XML with every <tpm> device replaced by one external backend at settings.socket,
// the marker added (or updated) in <metadata> and, if settings.partition is set, the domain's
// <resource><partition> set to it; everything else is kept.
Result<std::string> PatchDomain(const std::string& xml, const TpmSettings& settings);

// For an incoming migration or a restore of a domain that opts in: the XML with each external
// TPM backend pointed at `socket` (this host's path for the vTPM, which may differ from the
// source host's); nullopt when nothing had to change (libvirt then keeps its XML).
Result<std::optional<std::string>> RewriteTpmSocket(const std::string& xml, const std::string& socket);

// ---- orphans ---------------------------------------------------------------------------------

// UUIDs from `virsh list --all --uuid` output: one per line, blank lines ignored. Anything
// else is an error naming the line (a failed virsh must not look like "no domains").
Result<std::set<std::string>> ParseDomainUuidList(const std::string& text);

}  // namespace vtm::libvirt
