// Event log parsers and replay (see event_log.h). All input is outside data: a Reader hands
// out bytes only after checking that they remain, and errors name the entry and its offset.
#include "vtm/event_log.h"

#include <openssl/evp.h>

#include <cstring>

#include "vtm/hex.h"
#include "vtm/tpm_structures.h"

namespace vtm::attest {
namespace {

constexpr uint32_t kMaxPcrIndex = 23;
constexpr size_t kMaxEvents = 1000000;
constexpr size_t kSha1Size = 20;
constexpr char kSpecIdSignature[] = "Spec ID Event03";  // 16 bytes with its NUL
constexpr uint32_t kEvEfiHcrtmEvent = 0x80000010;
constexpr char kStartupLocality[] = "StartupLocality";  // 16 bytes with its NUL

// Little-endian reads bounded by the input (TCG logs and IMA's native order on x86/arm64).
class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}
  size_t offset() const { return pos_; }
  size_t remaining() const { return bytes_.size() - pos_; }
  bool empty() const { return pos_ == bytes_.size(); }

  bool Bytes(size_t n, std::string_view* out) {
    if (n > remaining()) return false;
    *out = bytes_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  bool U8(uint8_t* v) { return Le(v); }
  bool U16(uint16_t* v) { return Le(v); }
  bool U32(uint32_t* v) { return Le(v); }

 private:
  template <typename T>
  bool Le(T* v) {
    std::string_view b;
    if (!Bytes(sizeof(T), &b)) return false;
    T out = 0;
    for (size_t i = 0; i < sizeof(T); ++i) out |= static_cast<T>(static_cast<T>(static_cast<uint8_t>(b[i])) << (8 * i));
    *v = out;
    return true;
  }

  std::string_view bytes_;
  size_t pos_ = 0;
};

Error Malformed(const char* log, size_t entry, size_t offset, const std::string& what) {
  return Error(ErrorCode::kInvalidArgument, std::string(log) + ": entry " + std::to_string(entry) + " at byte " +
                                                std::to_string(offset) + ": " + what);
}

size_t DigestSize(TPM2_ALG_ID alg) {
  const EVP_MD* md = DigestForTpmAlg(alg);
  return md == nullptr ? 0 : static_cast<size_t>(EVP_MD_get_size(md));
}

// The TCG_EfiSpecIDEvent in the first entry's data: the banks and their digest sizes.
Status ParseSpecIdEvent(std::string_view data, TcgEventLog* log) {
  Reader r(data);
  std::string_view signature;
  uint32_t platform_class = 0, count = 0;
  uint8_t minor = 0, major = 0, errata = 0, uintn = 0;
  if (!r.Bytes(16, &signature) || !r.U32(&platform_class) || !r.U8(&minor) || !r.U8(&major) || !r.U8(&errata) ||
      !r.U8(&uintn) || !r.U32(&count)) {
    return Malformed("TCG event log", 0, 0, "the Spec ID event is truncated");
  }
  if (count == 0 || count > TPM2_NUM_PCR_BANKS) {
    return Malformed("TCG event log", 0, 0, "the Spec ID event lists " + std::to_string(count) + " algorithms");
  }
  for (uint32_t i = 0; i < count; ++i) {
    uint16_t alg = 0, size = 0;
    if (!r.U16(&alg) || !r.U16(&size)) return Malformed("TCG event log", 0, 0, "the Spec ID event is truncated");
    // Unknown banks are kept (their digests are skipped by size) but cannot be replayed.
    if (DigestSize(alg) != 0 && DigestSize(alg) != size) {
      return Malformed("TCG event log", 0, 0, "the Spec ID event gives algorithm " + std::to_string(alg) +
                                                  " a digest size of " + std::to_string(size));
    }
    if (size == 0 || size > sizeof(TPMU_HA)) {
      return Malformed("TCG event log", 0, 0, "the Spec ID event gives a digest size of " + std::to_string(size));
    }
    log->algorithms[alg] = size;
  }
  uint8_t vendor_size = 0;
  std::string_view vendor;
  if (!r.U8(&vendor_size) || !r.Bytes(vendor_size, &vendor) || !r.empty()) {
    return Malformed("TCG event log", 0, 0, "the Spec ID event's vendor info does not fill it exactly");
  }
  return OkStatus();
}

// A TCG_PCR_EVENT (SHA-1 format): PCRIndex, EventType, SHA-1 digest, EventSize, Event.
Status ReadSha1Event(Reader& r, size_t index, TcgEvent* e) {
  e->offset = r.offset();
  std::string_view digest, data;
  uint32_t size = 0;
  if (!r.U32(&e->pcr) || !r.U32(&e->event_type) || !r.Bytes(kSha1Size, &digest) || !r.U32(&size) ||
      !r.Bytes(size, &data)) {
    return Malformed("TCG event log", index, e->offset, "truncated TCG_PCR_EVENT");
  }
  e->digests[TPM2_ALG_SHA1] = std::string(digest);
  e->data = std::string(data);
  return OkStatus();
}

// A TCG_PCR_EVENT2: PCRIndex, EventType, TPML_DIGEST_VALUES (count, {hashAlg, digest}),
// EventSize, Event.
Status ReadEvent2(Reader& r, size_t index, const TcgEventLog& log, TcgEvent* e) {
  e->offset = r.offset();
  uint32_t count = 0;
  if (!r.U32(&e->pcr) || !r.U32(&e->event_type) || !r.U32(&count)) {
    return Malformed("TCG event log", index, e->offset, "truncated TCG_PCR_EVENT2");
  }
  if (count != log.algorithms.size()) {
    return Malformed("TCG event log", index, e->offset,
                     std::to_string(count) + " digests, but the Spec ID event lists " +
                         std::to_string(log.algorithms.size()) + " algorithms");
  }
  for (uint32_t i = 0; i < count; ++i) {
    uint16_t alg = 0;
    std::string_view digest;
    if (!r.U16(&alg)) return Malformed("TCG event log", index, e->offset, "truncated digest list");
    auto it = log.algorithms.find(alg);
    if (it == log.algorithms.end()) {
      return Malformed("TCG event log", index, e->offset,
                       "digest of algorithm " + std::to_string(alg) + " that the Spec ID event does not list");
    }
    if (!r.Bytes(it->second, &digest)) return Malformed("TCG event log", index, e->offset, "truncated digest");
    if (!e->digests.emplace(alg, std::string(digest)).second) {
      return Malformed("TCG event log", index, e->offset, "two digests of algorithm " + std::to_string(alg));
    }
  }
  uint32_t size = 0;
  std::string_view data;
  if (!r.U32(&size) || !r.Bytes(size, &data)) {
    return Malformed("TCG event log", index, e->offset, "event data runs past the end of the log");
  }
  e->data = std::string(data);
  return OkStatus();
}

std::string Sha(TPM2_ALG_ID alg, std::string_view data) {
  auto d = TpmDigest(alg, data);
  return d.ok() ? *d : std::string();
}

}  // namespace

Status ExtendReplay(PcrReplay& replay, TPM2_ALG_ID bank, uint32_t pcr, std::string_view digest) {
  const size_t size = DigestSize(bank);
  if (size == 0) return Error(ErrorCode::kInvalidArgument, "cannot replay bank " + std::to_string(bank));
  if (digest.size() != size) {
    return Error(ErrorCode::kInvalidArgument, "a digest of " + std::to_string(digest.size()) + " bytes for bank " +
                                                  std::to_string(bank));
  }
  auto [it, fresh] = replay[bank].try_emplace(pcr, std::string(size, '\0'));
  (void)fresh;
  VTM_ASSIGN_OR_RETURN(it->second, TpmDigest(bank, it->second + std::string(digest)));
  return OkStatus();
}

Result<TcgEventLog> ParseTcgEventLog(std::string_view bytes) {
  TcgEventLog log;
  Reader r(bytes);
  if (r.empty()) return Error(ErrorCode::kInvalidArgument, "TCG event log: empty");
  TcgEvent first;
  VTM_RETURN_IF_ERROR(ReadSha1Event(r, 0, &first));
  log.crypto_agile = first.event_type == kEvNoAction && first.pcr == 0 && first.data.size() >= 16 &&
                     std::memcmp(first.data.data(), kSpecIdSignature, 16) == 0;
  if (log.crypto_agile) {
    VTM_RETURN_IF_ERROR(ParseSpecIdEvent(first.data, &log));
  } else {
    log.algorithms[TPM2_ALG_SHA1] = kSha1Size;
    log.events.push_back(std::move(first));
  }
  while (!r.empty()) {
    const size_t index = log.events.size() + (log.crypto_agile ? 1 : 0);
    if (log.events.size() >= kMaxEvents) return Malformed("TCG event log", index, r.offset(), "too many entries");
    TcgEvent e;
    VTM_RETURN_IF_ERROR(log.crypto_agile ? ReadEvent2(r, index, log, &e) : ReadSha1Event(r, index, &e));
    if (e.pcr > kMaxPcrIndex) {
      return Malformed("TCG event log", index, e.offset, "PCR index " + std::to_string(e.pcr) + " (at most 23)");
    }
    if (e.event_type == kEvNoAction && e.data.size() == 17 && std::memcmp(e.data.data(), kStartupLocality, 16) == 0) {
      log.startup_locality = static_cast<uint8_t>(e.data[16]);
    }
    // An H-CRTM started the TPM: PCR 0 starts at 4 (TPM 2.0 Library Part 1, 34.3).
    if (e.event_type == kEvEfiHcrtmEvent && e.pcr == 0) log.startup_locality = 4;
    log.events.push_back(std::move(e));
  }
  return log;
}

Result<PcrReplay> ReplayTcgEventLog(const TcgEventLog& log) {
  PcrReplay replay;
  for (const auto& [alg, size] : log.algorithms) {
    if (DigestSize(alg) == 0) continue;  // a bank we cannot hash; its PCRs stay unreplayed
    std::string pcr0(size, '\0');
    pcr0.back() = static_cast<char>(log.startup_locality);
    replay[alg][0] = pcr0;
  }
  for (size_t i = 0; i < log.events.size(); ++i) {
    const TcgEvent& e = log.events[i];
    if (e.event_type == kEvNoAction) continue;
    for (const auto& [alg, digest] : e.digests) {
      if (DigestSize(alg) == 0) continue;
      auto st = ExtendReplay(replay, alg, e.pcr, digest);
      if (!st.ok()) return Malformed("TCG event log", i, e.offset, std::move(st).error().message());
    }
  }
  return replay;
}

namespace {

// ima-ng/ima-sig/ima-modsig... fields: each as a 4-byte length and bytes. d-ng is
// "<algo>:\0<digest>" (or a bare SHA-1 digest from old kernels); n-ng a NUL-terminated name.
Status ParseImaNgFields(ImaEntry* e, size_t index) {
  Reader r(e->template_data);
  std::vector<std::string_view> fields;
  while (!r.empty()) {
    uint32_t len = 0;
    std::string_view f;
    if (!r.U32(&len) || !r.Bytes(len, &f)) {
      return Malformed("IMA log", index, e->offset, "template field " + std::to_string(fields.size()) +
                                                        " runs past the template data");
    }
    fields.push_back(f);
  }
  if (fields.size() < 2) return Malformed("IMA log", index, e->offset, e->template_name + " has fewer than 2 fields");
  std::string_view d = fields[0];
  const size_t colon = d.find(':');
  if (colon != std::string_view::npos && colon + 1 < d.size() && d[colon + 1] == '\0') {
    e->file_hash_alg = std::string(d.substr(0, colon));
    e->file_digest = std::string(d.substr(colon + 2));
  } else if (d.size() == kSha1Size) {
    e->file_hash_alg = "sha1";
    e->file_digest = std::string(d);
  } else {
    return Malformed("IMA log", index, e->offset, "the d-ng field is not \"<algo>:\\0<digest>\"");
  }
  std::string_view n = fields[1];
  if (!n.empty() && n.back() == '\0') n.remove_suffix(1);
  e->file_name = std::string(n);
  return OkStatus();
}

}  // namespace

Result<std::vector<ImaEntry>> ParseImaLog(std::string_view bytes) {
  std::vector<ImaEntry> entries;
  Reader r(bytes);
  while (!r.empty()) {
    const size_t index = entries.size();
    if (index >= kMaxEvents) return Malformed("IMA log", index, r.offset(), "too many entries");
    ImaEntry e;
    e.offset = r.offset();
    uint32_t name_len = 0;
    std::string_view hash, name;
    if (!r.U32(&e.pcr) || !r.Bytes(kSha1Size, &hash) || !r.U32(&name_len)) {
      return Malformed("IMA log", index, e.offset, "truncated entry header");
    }
    if (name_len == 0 || name_len > 255) {
      return Malformed("IMA log", index, e.offset, "template name of " + std::to_string(name_len) + " bytes");
    }
    if (!r.Bytes(name_len, &name)) return Malformed("IMA log", index, e.offset, "truncated template name");
    if (e.pcr > kMaxPcrIndex) {
      return Malformed("IMA log", index, e.offset, "PCR index " + std::to_string(e.pcr) + " (at most 23)");
    }
    e.template_hash = std::string(hash);
    e.template_name = std::string(name);
    if (e.template_name == "ima") {
      // The original template: a 20-byte SHA-1 file digest, then the name as a length and
      // bytes without NUL; hashed as digest || name padded with zeros to 256 bytes.
      std::string_view digest, file;
      uint32_t file_len = 0;
      if (!r.Bytes(kSha1Size, &digest) || !r.U32(&file_len) || file_len > 255 || !r.Bytes(file_len, &file)) {
        return Malformed("IMA log", index, e.offset, "truncated or oversized ima template data");
      }
      e.file_hash_alg = "sha1";
      e.file_digest = std::string(digest);
      e.file_name = std::string(file);
      e.template_data = e.file_digest + e.file_name + std::string(256 - file.size(), '\0');
    } else {
      uint32_t data_len = 0;
      std::string_view data;
      if (!r.U32(&data_len) || !r.Bytes(data_len, &data)) {
        return Malformed("IMA log", index, e.offset, "template data runs past the end of the log");
      }
      e.template_data = std::string(data);
      if (e.template_name.rfind("ima-", 0) == 0) VTM_RETURN_IF_ERROR(ParseImaNgFields(&e, index));
    }
    if (!e.violation() && Sha(TPM2_ALG_SHA1, e.template_data) != e.template_hash) {
      return Malformed("IMA log", index, e.offset,
                       "the template hash is not SHA-1 of the template data (entry edited) for " + e.file_name);
    }
    entries.push_back(std::move(e));
  }
  return entries;
}

Result<PcrReplay> ReplayImaLog(const std::vector<ImaEntry>& entries) {
  PcrReplay replay;
  for (size_t i = 0; i < entries.size(); ++i) {
    const ImaEntry& e = entries[i];
    const bool v = e.violation();
    VTM_RETURN_IF_ERROR(ExtendReplay(replay, TPM2_ALG_SHA1, e.pcr, v ? std::string(20, '\xff') : e.template_hash));
    VTM_RETURN_IF_ERROR(
        ExtendReplay(replay, TPM2_ALG_SHA256, e.pcr, v ? std::string(32, '\xff') : Sha(TPM2_ALG_SHA256, e.template_data)));
  }
  return replay;
}

Result<std::string> ReplayMeasurementLog(const MeasurementLog& log) {
  if (log.version() != 1) {
    return Error(ErrorCode::kInvalidArgument,
                 "measurement log: version " + std::to_string(log.version()) + " (this verifier reads 1)");
  }
  if (log.pcr() > kMaxPcrIndex) {
    return Error(ErrorCode::kInvalidArgument, "measurement log: PCR " + std::to_string(log.pcr()));
  }
  PcrReplay replay;
  replay[TPM2_ALG_SHA256][log.pcr()] = std::string(32, '\0');
  for (int i = 0; i < log.events_size(); ++i) {
    const MeasurementEvent& e = log.events(i);
    const std::string where = "measurement log: entry " + std::to_string(i) + ": ";
    if (e.sequence() != static_cast<uint64_t>(i)) {
      return Error(ErrorCode::kInvalidArgument, where + "sequence " + std::to_string(e.sequence()) +
                                                    " (entries missing or reordered)");
    }
    if (e.pcr() != log.pcr()) {
      return Error(ErrorCode::kInvalidArgument, where + "PCR " + std::to_string(e.pcr()) + " in a log of PCR " +
                                                    std::to_string(log.pcr()));
    }
    if (e.digest().size() != 32) return Error(ErrorCode::kInvalidArgument, where + "digest is not 32 bytes");
    if (!e.event_data().empty()) {
      if (Sha(TPM2_ALG_SHA256, e.event_data()) != e.digest()) {
        return Error(ErrorCode::kInvalidArgument, where + "event_data does not hash to the digest (edited)");
      }
      bool parsed = false;
      if (e.type() == MEASUREMENT_TYPE_VTMD_START) {
        VtmdStart s;
        parsed = s.ParseFromString(e.event_data());
      } else if (e.type() == MEASUREMENT_TYPE_INSTANCE_LAUNCH) {
        InstanceLaunch l;
        parsed = l.ParseFromString(e.event_data());
      }
      if (!parsed) {
        return Error(ErrorCode::kInvalidArgument,
                     where + "event_data is not a valid " + MeasurementType_Name(e.type()));
      }
    }
    VTM_RETURN_IF_ERROR(ExtendReplay(replay, TPM2_ALG_SHA256, log.pcr(), e.digest()));
  }
  return replay[TPM2_ALG_SHA256][log.pcr()];
}

}  // namespace vtm::attest
