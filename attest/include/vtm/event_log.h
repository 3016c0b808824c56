// Event logs a verifier replays against quoted PCRs (vtm_attest): the TCG PC Client firmware
// event log (crypto-agile TCG_PCR_EVENT2 entries after a TCG_PCR_EVENT "Spec ID Event03"
// header, or the SHA-1-only log of TCG_PCR_EVENT entries), the Linux IMA
// binary_runtime_measurements (templates ima-ng, ima-sig and ima; PCR 10 by default), and vtmd's
// measurement log (proto/attestation.proto). Each parser reads outside data: every length is
// bounded by the bytes that remain, and an error names the entry, its byte offset and what is
// wrong. Replay folds each entry's digest into its PCR (PCR := H(PCR || digest)) from the
// reset values. Stateless; thread-safe.
#pragma once

#include <tss2/tss2_tpm2_types.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "attestation.pb.h"
#include "vtm/error.h"

namespace vtm::attest {

// Replayed PCR values: bank (TPM2_ALG_SHA1, TPM2_ALG_SHA256, ...) -> PCR index -> value.
using PcrReplay = std::map<TPM2_ALG_ID, std::map<uint32_t, std::string>>;

// PCR := H(PCR || digest) in the given bank, starting from zeros if pcr is not there yet.
Status ExtendReplay(PcrReplay& replay, TPM2_ALG_ID bank, uint32_t pcr, std::string_view digest);

// ---- TCG PC Client firmware event log (TCG PC Client Platform Firmware Profile 10.2) -------

inline constexpr uint32_t kEvNoAction = 0x00000003;

struct TcgEvent {
  size_t offset = 0;  // byte offset of the entry in the log
  uint32_t pcr = 0;
  uint32_t event_type = 0;
  std::map<TPM2_ALG_ID, std::string> digests;  // one per bank the log records
  std::string data;
};

struct TcgEventLog {
  bool crypto_agile = false;  // false: SHA-1 log (TCG_PCR_EVENT entries only)
  std::map<TPM2_ALG_ID, uint16_t> algorithms;  // from the Spec ID Event03 header (sha1 only otherwise)
  uint8_t startup_locality = 0;  // from an EV_NO_ACTION "StartupLocality" event, if any
  std::vector<TcgEvent> events;  // after the header
};

// kInvalidArgument for a truncated entry, an unknown digest algorithm, a digest count other
// than the header's, a PCR index >= 24, or more than 1,000,000 entries.
Result<TcgEventLog> ParseTcgEventLog(std::string_view bytes);
// EV_NO_ACTION entries are not extended; PCR 0 starts at the startup locality (PFP 10.4.5.3).
Result<PcrReplay> ReplayTcgEventLog(const TcgEventLog& log);

// ---- Linux IMA binary_runtime_measurements --------------------------------------------------

struct ImaEntry {
  size_t offset = 0;
  uint32_t pcr = 0;
  std::string template_hash;  // SHA-1 as logged (all zero: a measurement violation)
  std::string template_name;  // "ima-ng", "ima-sig", "ima", ...
  std::string template_data;  // the hashed template data
  // Parsed from ima-ng / ima-sig ("d-ng", "n-ng") and ima ("d", "n"); empty for other templates.
  std::string file_hash_alg;  // e.g. "sha256" ("sha1" for the ima template)
  std::string file_digest;
  std::string file_name;
  bool violation() const { return template_hash == std::string(20, '\0'); }
};

// Entries in the kernel's native (little-endian) byte order. kInvalidArgument for a truncated
// entry, a template name over 255 bytes, ima-ng/ima template data whose fields do not fill it
// exactly, or a template hash that is not SHA-1 of the template data (an edited entry).
Result<std::vector<ImaEntry>> ParseImaLog(std::string_view bytes);
// SHA-1 bank: the logged template hashes; SHA-256 bank: SHA-256 of each template's data (what
// kernels since 5.8 extend); a violation extends all-ones in each bank.
Result<PcrReplay> ReplayImaLog(const std::vector<ImaEntry>& entries);

// ---- vtmd's measurement log --------------------------------------------------------------

// Checks the log's shape (version 1, sequence 0,1,2..., every entry in log.pcr, 32-byte
// digests, event_data hashing to its digest and parsing as its type, or empty = redacted) and
// returns the value its entries replay to in the sha256 bank of log.pcr from zero.
// kInvalidArgument naming the entry for any violation.
Result<std::string> ReplayMeasurementLog(const MeasurementLog& log);

}  // namespace vtm::attest
