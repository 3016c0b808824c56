// Synthetic event logs in the kernel's binary formats, for tests and fuzz corpora: a TCG PC
// Client crypto-agile (or SHA-1) firmware log whose digests are the hashes of the event data,
// and IMA binary_runtime_measurements (ima-ng and ima templates). Built byte by byte from the
// specifications, independently of the parsers they test.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vtm::testing {

struct FirmwareEvent {
  uint32_t pcr;
  uint32_t type;
  std::string data;
};

// TCG_PCR_EVENT "Spec ID Event03" header (sha1 + sha256), then TCG_PCR_EVENT2 entries.
// startup_locality >= 0 adds an EV_NO_ACTION StartupLocality event first.
std::string BuildCryptoAgileLog(const std::vector<FirmwareEvent>& events, int startup_locality = -1);
// TCG_PCR_EVENT entries only (SHA-1 log).
std::string BuildSha1Log(const std::vector<FirmwareEvent>& events);
// A boot-like sequence: CRTM version, firmware blobs, separators in PCRs 0-7, an EFI action.
std::vector<FirmwareEvent> TypicalFirmwareEvents();

struct ImaFile {
  std::string path;
  std::string content;  // hashed as the measured file
};
// ima-ng entries in PCR 10 (file hash sha256), after a boot_aggregate entry.
std::string BuildImaNgLog(const std::vector<ImaFile>& files);
// One entry of the original "ima" template (SHA-1 file hash).
std::string BuildImaEntry(const ImaFile& file);

std::string Sha1(const std::string& data);

}  // namespace vtm::testing
