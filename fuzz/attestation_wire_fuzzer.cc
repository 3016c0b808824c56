// libFuzzer target for the attestation exchange of a trusted connection (vtm/attestation_wire.h),
// outside data on both ends: a service decodes the device's challenge, a device decodes the
// service's answer and then takes its quote apart (tpm2-tools PCR file, TPMS_ATTEST) as
// LinkToHost does. The first input byte picks: even = challenge, odd = answer; both are also
// read through ReadAttestationFrame from a stream.
#include <cstdint>
#include <cstring>
#include <string>

#include "vtm/attestation_wire.h"
#include "vtm/quote.h"

namespace {

class BytesStream : public vtm::Stream {
 public:
  explicit BytesStream(std::string data) : data_(std::move(data)) {}
  vtm::Status WriteAll(const void*, size_t) override { return vtm::OkStatus(); }
  vtm::Status ReadAll(void* out, size_t len) override {
    if (data_.size() - off_ < len) return vtm::Error(vtm::ErrorCode::kUnavailable, "EOF");
    std::memcpy(out, data_.data() + off_, len);
    off_ += len;
    return vtm::OkStatus();
  }

 private:
  std::string data_;
  size_t off_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string input(reinterpret_cast<const char*>(data) + 1, size - 1);
  // The first byte taken before the frame is read, as a service does.
  BytesStream stream(input.empty() ? std::string() : input.substr(1));
  auto frame = vtm::tc::ReadAttestationFrame(stream, input.substr(0, input.empty() ? 0 : 1));
  if (data[0] % 2 == 0) {
    auto c = vtm::tc::DecodeChallenge(input);
    if (c.ok()) (void)vtm::tc::EncodeChallenge(*c);
    if (frame.ok()) (void)vtm::tc::DecodeChallenge(*frame);
    return 0;
  }
  auto a = vtm::tc::DecodeAnswer(input);
  if (frame.ok()) (void)vtm::tc::DecodeAnswer(*frame);
  if (!a.ok() || !a->quoted) return 0;
  vtm::attest::Quote quote;
  quote.set_attest(a->quote_message);
  quote.set_signature(a->quote_signature);
  auto pcrs = vtm::attest::PcrValuesFromTpm2ToolsFile(a->quote_pcrs);
  if (pcrs.ok()) quote.set_pcr_values(*pcrs);
  auto parsed = vtm::attest::ParseQuote(quote);
  if (parsed.ok()) (void)vtm::attest::CheckQuoteExtraData(*parsed, std::string(32, '\0'));
  return 0;
}
