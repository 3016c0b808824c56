// The end-to-end test guest: Debian's cloud kernel and a busybox + tpm2-tools initramfs
// (built by tests/guest/build-guest.sh) booted under QEMU TCG with a vTPM on a unix socket.
//
//   class MyGuestTest : public GuestImageTest {};  // SetUp builds the image (or skips)
//   TEST_F(MyGuestTest, ReadsPcrs) {
//     GuestOptions o;
//     o.tpm_socket = swtpm_ctrl_socket;          // QEMU's tpm-emulator backend connects here
//     o.script = "tpm2_pcrread sha256:10\n";     // becomes /vtm-test.sh in the guest
//     GuestRun run = RunGuest(o);
//     EXPECT_TRUE(run.booted) << run.console;
//     EXPECT_EQ(run.exit_code, 0) << run.console;
//   }
//
// The guest prints "VTM-GUEST: boot ok", runs the script with `sh` (tpm2-tools reach the
// TPM through TPM2TOOLS_TCTI=device:/dev/tpmrm0), prints "VTM-GUEST: exit <code>" and
// powers off. See tests/guest/README.md.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <string>
#include <vector>

namespace vtm::testing {

// Build-tree directory holding vmlinuz and initrd.img.
std::string GuestDir();

// Runs tests/guest/build-guest.sh GuestDir() unless the images are up to date (once per
// process; concurrent processes are serialised by the script's lock). On failure returns
// false with the reason and the build log's tail in *error; *apt_unreachable (optional) is
// set when the kernel package could not be fetched, the one case a test may skip for.
bool EnsureGuestImage(std::string* error, bool* apt_unreachable = nullptr);

// Writes base_initrd followed by a newc cpio holding `script` as /vtm-test.sh (mode 0755)
// to out_path. Linux unpacks concatenated archives, so the base image is reused as is.
// extra_files: guest path (relative to /, its directory in the base image) -> host file, added
// with mode 0755.
bool MakeScriptInitrd(const std::string& base_initrd, const std::string& script,
                      const std::string& out_path, std::string* error,
                      const std::map<std::string, std::string>& extra_files = {});

// A program built on the host for GuestOptions::extra_files: itself as /usr/bin/NAME and the
// shared libraries ldd names as /lib/x86_64-linux-gnu/* (the guest has the host's libc).
std::map<std::string, std::string> GuestProgram(const std::string& host_binary);

// Base fixture for tests that boot the guest: SetUp runs EnsureGuestImage, skips the test when
// only the kernel package could not be fetched, and fails it when the image cannot be built.
class GuestImageTest : public ::testing::Test {
 protected:
  void SetUp() override;
};

struct GuestOptions {
  // Unix socket of an swtpm (or vtm-instance) control channel; empty: no TPM device.
  std::string tpm_socket;
  // "tpm-crb" or "tpm-tis".
  std::string tpm_device = "tpm-crb";
  // Shell text run as /vtm-test.sh; empty: the guest prints `tpm2_pcrread sha256`.
  std::string script;
  // Whole run, QEMU start to exit. QEMU is killed when it runs out.
  std::chrono::seconds timeout{120};
  // Where console.log, qemu.log and the per-run initrd go. Empty: a temporary directory
  // that is removed afterwards.
  std::string work_dir;
  // Appended to "console=ttyS0 quiet panic=-1 ima_policy=tcb".
  std::string extra_cmdline;
  std::vector<std::string> extra_qemu_args;
  int memory_mb = 256;
  // Guest TCP port -> host port on 127.0.0.1. Non-empty: the guest gets a virtio-net NIC on
  // QEMU user-mode networking (restrict=on: no way out, only these forwards in); it is
  // 10.0.2.15 and the host 10.0.2.2.
  std::map<int, int> tcp_forwards;
  // Files added to the per-run initrd: guest path (relative to /) -> host path. GuestProgram
  // gives a host-built program with its libraries.
  std::map<std::string, std::string> extra_files;
};

struct GuestRun {
  int exit_code = -1;         // from "VTM-GUEST: exit N"; -1 if the line never came
  std::string console;        // the serial console, '\r' removed
  bool booted = false;        // "VTM-GUEST: boot ok" seen
  bool timed_out = false;     // QEMU killed after GuestOptions::timeout
  std::string error;          // set when the run could not be set up or QEMU failed
  std::string qemu_log;       // QEMU's own stdout/stderr
  double seconds_to_boot = 0; // QEMU start to "boot ok" (0 if never)
  double seconds_total = 0;   // QEMU start to exit

  // The script's output: console text between the boot and exit markers.
  std::string ScriptOutput() const;
  // One line for assertion messages: how the run ended plus the console.
  std::string Describe() const;
};

GuestRun RunGuest(const GuestOptions& options);

// Writes data to a unix socket QEMU serves (a serial port or QMP in server mode), retrying for
// up to 10 s while QEMU starts. With reply, then reads what comes back until 2 s pass quietly
// or QEMU closes the connection.
bool SendToSocket(const std::string& path, const std::string& data, std::string* reply = nullptr);

// What guest scripts print for the host to check:
// The value of the first "KEY=value" line of script output ("" if there is none); scripts
// print binary files as hex this way, e.g. `echo EKCERT=$(od -An -tx1 -v f | tr -d ' \n')`.
std::string GuestMarker(const std::string& script_output, const std::string& key);
// A console log a guest writes into a file (libvirt's <serial type='file'>), '\r' removed;
// "" if there is none yet.
std::string ReadConsoleFile(const std::string& path);
// Waits until that console shows a "KEY=value" line and returns the value ("" on timeout).
std::string WaitForConsoleMarker(const std::string& path, const std::string& key, std::chrono::seconds timeout);
// The "  10: 0xABC..." lines of `tpm2_pcrread sha256:...`: PCR index -> lower-case hex digest.
std::map<int, std::string> GuestPcrs(const std::string& script_output);

}  // namespace vtm::testing
