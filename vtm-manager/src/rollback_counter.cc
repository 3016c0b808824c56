// The registry's rollback counter in the host TPM's NV.
#include "rollback_counter.h"

#include <cstdio>

#include "vtm/log.h"

namespace vtm {
namespace {

std::string Hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

}  // namespace

Result<std::unique_ptr<HostNvCounter>> HostNvCounter::OpenOrDefine(HostTpmExecutor& tpm, uint32_t nv_index,
                                                                   SecretBytes auth, bool* created) {
  std::unique_ptr<HostNvCounter> counter(new HostNvCounter(tpm, nv_index, std::move(auth)));
  const SecretBytes& key = counter->auth_;
  *created = false;
  Status opened = tpm.Run([&](Tpm& t) -> Status {
    auto value = t.ReadNvCounter(nv_index, key);
    if (!value.ok() && value.error().code() == ErrorCode::kNotFound) {
      VTM_RETURN_IF_ERROR(t.DefineNvCounter(nv_index, key));
      *created = true;
      value = std::optional<uint64_t>();
    }
    if (!value.ok()) {
      Error e = std::move(value).error();
      if (e.code() == ErrorCode::kTpm) {
        e = Error(e.code(), e.message() +
                                " (if this host's vtm state directory was reset, the counter belongs to the "
                                "installation before; if nothing else uses it, remove it with "
                                "`tpm2_nvundefine -C o " +
                                Hex32(nv_index) +
                                "` and start vtmd again, or set "
                                "another rollback-nv-index)");
      }
      return e;
    }
    if (!value->has_value()) {
      *created = true;
      return t.IncrementNvCounter(nv_index, key);  // a counter has no value before its first increment
    }
    return OkStatus();
  });
  if (!opened.ok()) return std::move(opened).error().Context("opening the rollback counter " + Hex32(nv_index));
  if (*created) LOG_INFO << "defined the rollback counter " << Hex32(nv_index) << " in the host TPM";
  return counter;
}

Result<uint64_t> HostNvCounter::Read() {
  auto value = tpm_.Run([&](Tpm& t) { return t.ReadNvCounter(nv_index_, auth_); });
  if (!value.ok()) return std::move(value).error();
  if (!value->has_value()) return Error(ErrorCode::kInternal, Describe() + " has no value");
  return **value;
}

Status HostNvCounter::Increment() {
  return tpm_.Run([&](Tpm& t) { return t.IncrementNvCounter(nv_index_, auth_); });
}

std::string HostNvCounter::Describe() const { return "the host TPM's NV counter " + Hex32(nv_index_); }

}  // namespace vtm
