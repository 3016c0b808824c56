// Synthetic event logs (see event_log_builder.h), little-endian as on x86.
#include "event_log_builder.h"

#include <openssl/evp.h>

#include "test_env.h"

namespace vtm::testing {
namespace {

void Le16(std::string& out, uint16_t v) {
  out += static_cast<char>(v & 0xff);
  out += static_cast<char>(v >> 8);
}
void Le32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
}

std::string Sha1Event(uint32_t pcr, uint32_t type, const std::string& digest, const std::string& data) {
  std::string out;
  Le32(out, pcr);
  Le32(out, type);
  out += digest;
  Le32(out, static_cast<uint32_t>(data.size()));
  out += data;
  return out;
}

}  // namespace

std::string Sha1(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha1(), nullptr);
  return std::string(reinterpret_cast<char*>(md), len);
}

std::string BuildCryptoAgileLog(const std::vector<FirmwareEvent>& events, int startup_locality) {
  std::string spec_id("Spec ID Event03", 16);
  Le32(spec_id, 0);     // platformClass
  spec_id += '\0';      // specVersionMinor
  spec_id += '\2';      // specVersionMajor
  spec_id += '\0';      // specErrata
  spec_id += '\2';      // uintnSize (64-bit)
  Le32(spec_id, 2);     // numberOfAlgorithms
  Le16(spec_id, 0x0004);  // TPM_ALG_SHA1
  Le16(spec_id, 20);
  Le16(spec_id, 0x000b);  // TPM_ALG_SHA256
  Le16(spec_id, 32);
  spec_id += '\0';  // vendorInfoSize
  std::string log = Sha1Event(0, 3, std::string(20, '\0'), spec_id);
  auto event2 = [&](uint32_t pcr, uint32_t type, const std::string& data, bool zero_digests) {
    Le32(log, pcr);
    Le32(log, type);
    Le32(log, 2);
    Le16(log, 0x0004);
    log += zero_digests ? std::string(20, '\0') : Sha1(data);
    Le16(log, 0x000b);
    log += zero_digests ? std::string(32, '\0') : Sha256(data);
    Le32(log, static_cast<uint32_t>(data.size()));
    log += data;
  };
  if (startup_locality >= 0) {
    std::string data("StartupLocality", 16);
    data += static_cast<char>(startup_locality);
    event2(0, 3, data, true);
  }
  for (const FirmwareEvent& e : events) event2(e.pcr, e.type, e.data, false);
  return log;
}

std::string BuildSha1Log(const std::vector<FirmwareEvent>& events) {
  std::string log;
  for (const FirmwareEvent& e : events) log += Sha1Event(e.pcr, e.type, Sha1(e.data), e.data);
  return log;
}

std::vector<FirmwareEvent> TypicalFirmwareEvents() {
  std::vector<FirmwareEvent> events = {
      {0, 0x00000008, std::string("1\0.\0" "0\0\0\0", 8)},  // EV_S_CRTM_VERSION (UCS-2 "1.0")
      {0, 0x80000008, "firmware volume 1"},                  // EV_EFI_PLATFORM_FIRMWARE_BLOB
      {1, 0x0000000a, "platform configuration"},              // EV_PLATFORM_CONFIG_FLAGS
      {2, 0x00000001, "option ROM"},                          // EV_POST_CODE
      {4, 0x80000007, "Calling EFI Application from Boot Option"},  // EV_EFI_ACTION
  };
  for (uint32_t pcr = 0; pcr <= 7; ++pcr) events.push_back({pcr, 0x00000004, std::string(4, '\0')});  // EV_SEPARATOR
  events.push_back({5, 0x80000007, "Exit Boot Services Invocation"});
  return events;
}

std::string BuildImaNgLog(const std::vector<ImaFile>& files) {
  std::string log;
  auto entry = [&](const std::string& hash_field, const std::string& name) {
    std::string data;
    Le32(data, static_cast<uint32_t>(hash_field.size()));
    data += hash_field;
    Le32(data, static_cast<uint32_t>(name.size() + 1));
    data += name;
    data += '\0';
    Le32(log, 10);
    log += Sha1(data);
    Le32(log, 6);
    log += "ima-ng";
    Le32(log, static_cast<uint32_t>(data.size()));
    log += data;
  };
  entry(std::string("sha256:\0", 8) + Sha256("boot aggregate"), "boot_aggregate");
  for (const ImaFile& f : files) entry(std::string("sha256:\0", 8) + Sha256(f.content), f.path);
  return log;
}

std::string BuildImaEntry(const ImaFile& file) {
  const std::string digest = Sha1(file.content);
  std::string log;
  Le32(log, 10);
  log += Sha1(digest + file.path + std::string(256 - file.path.size(), '\0'));
  Le32(log, 3);
  log += "ima";
  log += digest;
  Le32(log, static_cast<uint32_t>(file.path.size()));
  log += file.path;
  return log;
}

}  // namespace vtm::testing
