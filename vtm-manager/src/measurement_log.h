// vtmd's measurement log (ISO/IEC 27070 6.3, transitive trust host -> manager -> instance):
// every measurement is extended into one host PCR (sha256 bank, --measure-pcr) and appended
// to a replayable log (attest::MeasurementLog, proto/attestation.proto) kept in the state dir.
//
// Crash safety: write-ahead. An entry is written to the log file (temp + fsync + rename)
// BEFORE its digest is extended, and the launch it describes happens only after the extend. So
// after a crash the PCR equals the replay of either the whole log or the whole log but its last
// entry (the crash fell between the write and the extend); Open() drops such an entry and says
// so. Any other mismatch (a foreign extend or reset of the PCR, an edited log) cannot be
// repaired: the log is kept, marked inconsistent with the reason, and reported by
// `vtmctl host` and in evidence, until the host reboots.
//
// The log belongs to one boot (boot_id): after a host reboot the PCR starts over and so does
// the log (the previous boot's log is kept as measurement-log.previous).
//
// Thread safety: all methods may be called from any thread; Measure() calls are serialized so
// the log order is the extend order.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "attestation.pb.h"
#include "vtm/error.h"
#include "vtm/host_tpm_executor.h"

namespace vtm {

// SHA-256 replay of the log's digests from a zero PCR.
std::string ReplayMeasurements(const attest::MeasurementLog& log);
// Parses a serialized MeasurementLog and checks its shape (version, 32-byte digests, one PCR,
// sequence 0..n-1, event_data digest matches where present). kDataLoss names what is wrong.
Result<attest::MeasurementLog> ParseMeasurementLog(const std::string& bytes);

// The current host boot (/proc/sys/kernel/random/boot_id).
Result<std::string> CurrentBootId();

struct MeasurementLogStatus {
  bool consistent = true;
  std::string detail;  // why not, or a one-line summary when it is
  size_t entries = 0;
  uint32_t pcr = 0;
};

class HostMeasurementLog {
 public:
  // Loads (or starts) the log at path for PCR `pcr` of the sha256 bank of tpm and checks it
  // against the PCR (see the file comment). boot_id: the current boot.
  static Result<std::unique_ptr<HostMeasurementLog>> Open(HostTpmExecutor& tpm, const std::string& path, uint32_t pcr,
                                                          const std::string& boot_id);

  // Appends one event (write-ahead) and extends SHA-256(event_data) into the PCR.
  Status Measure(attest::MeasurementType type, const std::string& event_data);

  // Checks the log against the PCR's value now (a foreign extend since the last measurement
  // shows here) and returns the verdict.
  MeasurementLogStatus Check();
  // Runs job(log) with no measurement in between: a quote taken inside the job covers exactly
  // the entries of the log it is given. The log's inconsistency field is set when known.
  template <typename Job>
  auto WithLog(Job&& job) const -> decltype(job(std::declval<const attest::MeasurementLog&>())) {
    std::lock_guard<std::mutex> lock(mu_);
    attest::MeasurementLog copy = log_;
    if (!consistent_) copy.set_inconsistency(inconsistency_);
    return job(static_cast<const attest::MeasurementLog&>(copy));
  }
  uint32_t pcr() const { return pcr_; }

 private:
  HostMeasurementLog(HostTpmExecutor& tpm, std::string path, uint32_t pcr) : tpm_(tpm), path_(std::move(path)), pcr_(pcr) {}
  Status Save();  // caller holds mu_
  Result<std::string> ReadPcr();
  void MarkInconsistent(const std::string& why);  // caller holds mu_

  HostTpmExecutor& tpm_;
  const std::string path_;
  const uint32_t pcr_;
  mutable std::mutex mu_;
  attest::MeasurementLog log_;   // GUARDED_BY(mu_)
  bool consistent_ = true;       // GUARDED_BY(mu_)
  std::string inconsistency_;    // GUARDED_BY(mu_)
};

}  // namespace vtm
