// The measurement log: load and check against the PCR, write-ahead append, extend.
#include "measurement_log.h"

#include <cstdio>

#include "vtm/crash_point.h"
#include "vtm/digest.h"
#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/log.h"

namespace vtm {
namespace {

constexpr uint32_t kLogVersion = 1;

std::string ReplayFirst(const attest::MeasurementLog& log, int count) {
  std::string pcr(32, '\0');
  for (int i = 0; i < count; ++i) {
    pcr += log.events(i).digest();
    pcr = Sha256Digest(pcr);
  }
  return pcr;
}

}  // namespace

std::string ReplayMeasurements(const attest::MeasurementLog& log) { return ReplayFirst(log, log.events_size()); }

Result<attest::MeasurementLog> ParseMeasurementLog(const std::string& bytes) {
  attest::MeasurementLog log;
  if (!log.ParseFromString(bytes)) return Error(ErrorCode::kDataLoss, "the measurement log is not a MeasurementLog message");
  if (log.version() != kLogVersion) {
    return Error(ErrorCode::kDataLoss, "measurement log version " + std::to_string(log.version()) + " (expected 1)");
  }
  if (log.pcr() > 23) return Error(ErrorCode::kDataLoss, "measurement log PCR " + std::to_string(log.pcr()) + " > 23");
  for (int i = 0; i < log.events_size(); ++i) {
    const auto& e = log.events(i);
    const std::string at = "measurement log entry " + std::to_string(i);
    if (e.sequence() != static_cast<uint64_t>(i)) return Error(ErrorCode::kDataLoss, at + " has sequence " + std::to_string(e.sequence()));
    if (e.pcr() != log.pcr()) return Error(ErrorCode::kDataLoss, at + " names PCR " + std::to_string(e.pcr()) + ", not the log's");
    if (e.digest().size() != 32) return Error(ErrorCode::kDataLoss, at + " has a digest of " + std::to_string(e.digest().size()) + " bytes, not 32");
    if (!e.event_data().empty() && Sha256Digest(e.event_data()) != e.digest()) {
      return Error(ErrorCode::kDataLoss, at + ": its digest is not the SHA-256 of its event data");
    }
  }
  return log;
}

Result<std::string> CurrentBootId() {
  VTM_ASSIGN_OR_RETURN(std::string id, ReadFile("/proc/sys/kernel/random/boot_id"));
  while (!id.empty() && (id.back() == '\n' || id.back() == ' ')) id.pop_back();
  return id;
}

Result<std::unique_ptr<HostMeasurementLog>> HostMeasurementLog::Open(HostTpmExecutor& tpm, const std::string& path,
                                                                     uint32_t pcr, const std::string& boot_id) {
  if (pcr > 23) return Error(ErrorCode::kInvalidArgument, "--measure-pcr must be 0..23, not " + std::to_string(pcr));
  std::unique_ptr<HostMeasurementLog> m(new HostMeasurementLog(tpm, path, pcr));
  std::lock_guard<std::mutex> lock(m->mu_);
  bool fresh = true;
  if (PathExists(path)) {
    VTM_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
    auto parsed = ParseMeasurementLog(bytes);
    const std::string previous = path + ".previous";
    if (!parsed.ok()) {
      (void)std::rename(path.c_str(), previous.c_str());
      m->MarkInconsistent("the measurement log " + path + " was unreadable (" + parsed.error().message() +
                          "; kept as " + previous + "): the PCR holds measurements no log describes");
    } else if (parsed->boot_id() != boot_id) {
      (void)std::rename(path.c_str(), previous.c_str());
      LOG_WARNING << "the host rebooted since the measurement log was written (boot " << parsed->boot_id() << ", now "
                  << boot_id << "): the measurement log starts over; the previous boot's log is " << previous;
    } else if (parsed->pcr() != pcr) {
      (void)std::rename(path.c_str(), previous.c_str());
      m->MarkInconsistent("the measurement log of this boot was kept in PCR " + std::to_string(parsed->pcr()) +
                          "; --measure-pcr " + std::to_string(pcr) + " takes effect cleanly only after a reboot");
    } else {
      m->log_ = std::move(parsed).value();
      fresh = false;
    }
  }
  if (fresh) {
    m->log_.Clear();
    m->log_.set_version(kLogVersion);
    m->log_.set_boot_id(boot_id);
    m->log_.set_pcr(pcr);
  }
  VTM_ASSIGN_OR_RETURN(std::string value, m->ReadPcr());
  const int n = m->log_.events_size();
  if (value == ReplayFirst(m->log_, n)) {
    // consistent
  } else if (n > 0 && value == ReplayFirst(m->log_, n - 1)) {
    // Written ahead, never extended: vtmd stopped between the two, and the launch it
    // described never happened.
    LOG_WARNING << "measurement log entry " << (n - 1) << " was written but never extended into PCR " << pcr
                << " (vtmd stopped in between); dropped";
    m->log_.mutable_events()->RemoveLast();
  } else if (fresh && m->consistent_) {
    m->MarkInconsistent("PCR " + std::to_string(pcr) + " was not empty when the measurement log of this boot began (" +
                        HexEncode(value) + "): something else extends it; choose another --measure-pcr");
  } else if (m->consistent_) {
    m->MarkInconsistent("PCR " + std::to_string(pcr) + " holds " + HexEncode(value) + " but the log replays to " +
                        HexEncode(ReplayFirst(m->log_, n)) +
                        ": the PCR was extended or reset outside vtmd, or the log was changed");
  }
  VTM_RETURN_IF_ERROR(m->Save());
  return m;
}

void HostMeasurementLog::MarkInconsistent(const std::string& why) {
  if (!consistent_) return;  // the first reason is the one that matters
  consistent_ = false;
  inconsistency_ = why;
  LOG_ERROR << "measurement log inconsistent with the host PCR: " << why
            << "; verifiers will refuse this host's measurement log until it reboots";
}

Status HostMeasurementLog::Save() { return WriteFileAtomic(path_, log_.SerializeAsString(), 0600); }

Result<std::string> HostMeasurementLog::ReadPcr() {
  PcrSelection sel;
  sel.pcrs = {static_cast<int>(pcr_)};
  VTM_ASSIGN_OR_RETURN(PcrValues values, tpm_.Run([&](Tpm& tpm) { return tpm.ReadPcrs(sel); }));
  return values.digests[static_cast<int>(pcr_)];
}

Status HostMeasurementLog::Measure(attest::MeasurementType type, const std::string& event_data) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string expected = ReplayMeasurements(log_);
  auto* e = log_.add_events();
  e->set_sequence(static_cast<uint64_t>(log_.events_size() - 1));
  e->set_pcr(pcr_);
  e->set_type(type);
  e->set_digest(Sha256Digest(event_data));
  e->set_event_data(event_data);
  const std::string digest = e->digest();
  if (Status saved = Save(); !saved.ok()) {
    log_.mutable_events()->RemoveLast();
    return std::move(saved).error().Context("writing the measurement log");
  }
  // A crash here leaves an entry written ahead but never extended: the next start drops it.
  const bool launch = type == attest::MEASUREMENT_TYPE_INSTANCE_LAUNCH;
  if (launch) CrashPoint("start.launch-logged");
  PcrSelection sel;
  sel.pcrs = {static_cast<int>(pcr_)};
  // The check and the extend are one executor job: nothing of vtmd's runs in between.
  Result<std::string> before = tpm_.Run([&](Tpm& tpm) -> Result<std::string> {
    VTM_ASSIGN_OR_RETURN(PcrValues values, tpm.ReadPcrs(sel));
    VTM_RETURN_IF_ERROR(tpm.ExtendPcr("sha256", static_cast<int>(pcr_), digest));
    return values.digests[static_cast<int>(pcr_)];
  });
  if (!before.ok()) {
    log_.mutable_events()->RemoveLast();
    (void)Save();
    return std::move(before).error().Context("extending host PCR " + std::to_string(pcr_));
  }
  if (launch) CrashPoint("start.launch-extended");
  if (*before != expected) {
    MarkInconsistent("PCR " + std::to_string(pcr_) + " held " + HexEncode(*before) + " before entry " +
                     std::to_string(e->sequence()) + " where the log replays to " + HexEncode(expected) +
                     ": the PCR was extended or reset outside vtmd");
  }
  return OkStatus();
}

MeasurementLogStatus HostMeasurementLog::Check() {
  std::lock_guard<std::mutex> lock(mu_);
  MeasurementLogStatus st;
  st.pcr = pcr_;
  st.entries = static_cast<size_t>(log_.events_size());
  if (consistent_) {
    auto value = ReadPcr();
    if (!value.ok()) {
      st.consistent = false;
      st.detail = "cannot read PCR " + std::to_string(pcr_) + ": " + value.error().message();
      return st;
    }
    if (*value != ReplayMeasurements(log_)) {
      MarkInconsistent("PCR " + std::to_string(pcr_) + " holds " + HexEncode(*value) + " but the log replays to " +
                       HexEncode(ReplayMeasurements(log_)) + ": the PCR was extended or reset outside vtmd");
    }
  }
  st.consistent = consistent_;
  st.detail = consistent_ ? "replays to PCR " + std::to_string(pcr_) + " (" + std::to_string(st.entries) + " entries)"
                          : inconsistency_;
  return st;
}

}  // namespace vtm
