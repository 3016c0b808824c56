// A fake of QEMU's tpm-emulator backend; see fake_qemu.h.
#include "fake_qemu.h"

#include <sys/socket.h>

#include "vtm/net.h"

namespace vtm::testing {
namespace {

constexpr uint32_t kStateFlagDecrypted = 1;  // PTM_STATE_FLAG_DECRYPTED: QEMU's request

void Put16(std::vector<uint8_t>& b, uint16_t v) {
  b.push_back(static_cast<uint8_t>(v >> 8));
  b.push_back(static_cast<uint8_t>(v));
}
void Put32(std::vector<uint8_t>& b, uint32_t v) {
  Put16(b, static_cast<uint16_t>(v >> 16));
  Put16(b, static_cast<uint16_t>(v));
}
uint32_t Get32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

void SetTimeouts(int fd) {
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

// A TPM 2.0 command; with auth, one password session with an empty password (the vTPM's owner
// has none).
std::vector<uint8_t> TpmCommand(uint32_t cc, const std::vector<uint32_t>& handles, bool auth,
                                const std::vector<uint8_t>& params) {
  std::vector<uint8_t> b;
  Put16(b, auth ? 0x8002 : 0x8001);
  Put32(b, 0);
  Put32(b, cc);
  for (uint32_t h : handles) Put32(b, h);
  if (auth) {
    Put32(b, 9);
    Put32(b, 0x40000009);  // TPM_RS_PW
    Put16(b, 0);
    b.push_back(0);
    Put16(b, 0);
  }
  b.insert(b.end(), params.begin(), params.end());
  const auto size = static_cast<uint32_t>(b.size());
  for (int i = 0; i < 4; ++i) b[2 + i] = static_cast<uint8_t>(size >> (24 - 8 * i));
  return b;
}

}  // namespace

FakeQemu::FakeQemu(const std::string& tpm_sock) {
  auto c = ConnectUnix(tpm_sock);
  if (!c.ok()) return;
  ctrl_ = std::move(*c);
  SetTimeouts(ctrl_.get());
}

void FakeQemu::Disconnect() {
  data_.reset();
  ctrl_.reset();
}

std::vector<uint8_t> FakeQemu::Call(uint32_t cmd, const std::vector<uint8_t>& body, size_t response_size, int pass_fd) {
  std::vector<uint8_t> req;
  Put32(req, cmd);
  req.insert(req.end(), body.begin(), body.end());
  if (!SendWithFd(ctrl_.get(), req.data(), req.size(), pass_fd).ok()) return {};
  std::vector<uint8_t> resp(response_size);
  if (!ReadAll(ctrl_.get(), resp.data(), resp.size()).ok()) return {};
  return resp;
}

uint32_t FakeQemu::Simple(uint32_t cmd, const std::vector<uint8_t>& body) {
  const auto r = Call(cmd, body, 4);
  return r.size() == 4 ? Get32(r.data()) : kNoAnswer;
}

::testing::AssertionResult FakeQemu::Start(bool init) {
  if (!ctrl_.valid()) return ::testing::AssertionFailure() << "cannot connect to the vTPM's socket";
  if (Call(kCtrlGetCapability, {}, 8).size() != 8) return ::testing::AssertionFailure() << "GET_CAPABILITY: no answer";
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return ::testing::AssertionFailure() << "socketpair";
  data_.reset(sv[0]);
  UniqueFd theirs(sv[1]);
  SetTimeouts(data_.get());
  if (const auto r = Call(kCtrlSetDataFd, {}, 4, theirs.get()); r.size() != 4 || Get32(r.data()) != 0) {
    return ::testing::AssertionFailure() << "SET_DATAFD failed";
  }
  if (!init) return ::testing::AssertionSuccess();
  std::vector<uint8_t> flags;
  Put32(flags, 0);
  const uint32_t rc = Simple(kCtrlInit, flags);
  if (rc == kNoAnswer) return ::testing::AssertionFailure() << "INIT got no answer";
  if (rc != 0) return ::testing::AssertionFailure() << "INIT result 0x" << std::hex << rc;
  return ::testing::AssertionSuccess();
}

bool FakeQemu::GetStateBlob(uint32_t type, std::vector<uint8_t>* blob) {
  std::vector<uint8_t> body;
  Put32(body, kStateFlagDecrypted);
  Put32(body, type);
  Put32(body, 0);
  auto hdr = Call(kCtrlGetStateBlob, body, 16);
  if (hdr.size() != 16 || Get32(hdr.data()) != 0) return false;
  const uint32_t total = Get32(hdr.data() + 8);
  if (total > (8u << 20)) return false;
  blob->resize(total);
  return ReadAll(ctrl_.get(), blob->data(), total).ok();
}

uint32_t FakeQemu::SetStateBlob(uint32_t type, const std::vector<uint8_t>& blob) {
  std::vector<uint8_t> body;
  Put32(body, 0);
  Put32(body, type);
  Put32(body, static_cast<uint32_t>(blob.size()));
  body.insert(body.end(), blob.begin(), blob.end());
  return Simple(kCtrlSetStateBlob, body);
}

uint32_t FakeQemu::Tpm(const std::vector<uint8_t>& command, std::vector<uint8_t>* response) {
  if (!WriteAll(data_.get(), command.data(), command.size()).ok()) return kNoAnswer;
  std::vector<uint8_t> resp(10);
  if (!ReadAll(data_.get(), resp.data(), 10).ok()) return kNoAnswer;
  const uint32_t size = Get32(resp.data() + 2);
  if (size < 10 || size > 8192) return kNoAnswer;
  resp.resize(size);
  if (!ReadAll(data_.get(), resp.data() + 10, size - 10).ok()) return kNoAnswer;
  const uint32_t rc = Get32(resp.data() + 6);
  if (response != nullptr) *response = std::move(resp);
  return rc;
}

uint32_t FakeQemu::StartupClear() { return Tpm(TpmCommand(0x144, {}, false, {0x00, 0x00})); }

::testing::AssertionResult FakeQemu::StartupAndGetRandom() {
  if (const uint32_t rc = StartupClear(); rc != 0) {
    return ::testing::AssertionFailure() << "TPM2_Startup rc 0x" << std::hex << rc;
  }
  std::vector<uint8_t> rnd;
  if (const uint32_t rc = Tpm(TpmCommand(0x17b, {}, false, {0x00, 0x10}), &rnd); rc != 0) {
    return ::testing::AssertionFailure() << "GetRandom rc 0x" << std::hex << rc;
  }
  if (rnd.size() != 10 + 2 + 16 || rnd[10] != 0 || rnd[11] != 16) {
    return ::testing::AssertionFailure() << "GetRandom returned " << rnd.size() << " bytes";
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult FakeQemu::NvWrite(uint32_t index, const std::string& value) {
  std::vector<uint8_t> def;
  Put16(def, 0);  // auth
  Put16(def, 14);
  Put32(def, index);
  Put16(def, 0x000b);      // SHA-256
  Put32(def, 0x00060006);  // OWNERWRITE | AUTHWRITE | OWNERREAD | AUTHREAD
  Put16(def, 0);
  Put16(def, static_cast<uint16_t>(value.size()));
  if (uint32_t rc = Tpm(TpmCommand(0x12a, {0x40000001}, true, def)); rc != 0) {
    return ::testing::AssertionFailure() << "TPM2_NV_DefineSpace rc 0x" << std::hex << rc;
  }
  std::vector<uint8_t> w;
  Put16(w, static_cast<uint16_t>(value.size()));
  w.insert(w.end(), value.begin(), value.end());
  Put16(w, 0);
  if (uint32_t rc = Tpm(TpmCommand(0x137, {0x40000001, index}, true, w)); rc != 0) {
    return ::testing::AssertionFailure() << "TPM2_NV_Write rc 0x" << std::hex << rc;
  }
  return ::testing::AssertionSuccess();
}

std::string FakeQemu::NvRead(uint32_t index, size_t size) {
  std::vector<uint8_t> r;
  Put16(r, static_cast<uint16_t>(size));
  Put16(r, 0);
  std::vector<uint8_t> resp;
  if (Tpm(TpmCommand(0x14e, {0x40000001, index}, true, r), &resp) != 0 || resp.size() < 16) return "";
  const size_t n = (size_t{resp[14]} << 8) | resp[15];
  if (resp.size() < 16 + n) return "";
  return std::string(resp.begin() + 16, resp.begin() + 16 + static_cast<std::ptrdiff_t>(n));
}

}  // namespace vtm::testing
