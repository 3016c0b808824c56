// Text form of a PCR selection ("sha256:0,1,7") and the on-disk form of a SealedObject.
// Both parse untrusted input (config files, files an attacker may have replaced), so every
// length is checked before it is used and every failure says what was wrong.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <set>
#include <string_view>

#include "internal/pcr_bank.h"
#include "internal/tpm_marshal.h"
#include "vtm/host_tpm.h"

namespace vtm {
namespace {

constexpr std::string_view kSelectionExample = "expected <bank>:<pcr>[,<pcr>...], e.g. sha256:0,1,7";

// Quotes user input for an error message without letting a huge or binary value into logs.
std::string Quote(std::string_view text) {
  constexpr size_t kMax = 64;
  std::string out = "\"";
  for (char c : text.substr(0, kMax)) {
    out += (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  if (text.size() > kMax) out += "...";
  return out + "\"";
}

Error SelectionError(const std::string& text, const std::string& what) {
  return Error(ErrorCode::kInvalidArgument, "invalid PCR selection " + Quote(text) + ": " + what);
}

// ---- SealedObject byte format ---------------------------------------------------------------
//
//   "VTMSEAL1"                                   magic; the digit is the format version
//   u16 n, n bytes                               PCR selection in canonical text form
//   u8 count, then count x { u8 pcr, u8 n, n bytes }   PCR values at seal, ascending pcr,
//                                                exactly the selection's PCRs, n = bank size
//   u32 n, n bytes                               marshalled TPM2B_PUBLIC
//   u32 n, n bytes                               marshalled TPM2B_PRIVATE
//   (nothing after)
// Integers are big-endian like the TPM's own. The PCR values are not authenticated: they only
// explain a policy failure; the TPM enforces the policy stored in the (integrity-protected)
// object itself.
constexpr std::string_view kMagic = "VTMSEAL1";
constexpr std::string_view kMagicPrefix = "VTMSEAL";
constexpr size_t kMaxSerializedSize = size_t{16} * 1024;
constexpr size_t kMaxBlobSize = 4096;  // far above any TPM2B_PUBLIC/PRIVATE a TPM produces
constexpr size_t kMaxSelectionText = 128;

void PutU8(std::string& out, uint8_t v) { out.push_back(static_cast<char>(v)); }
void PutU16(std::string& out, uint16_t v) {
  PutU8(out, static_cast<uint8_t>(v >> 8));
  PutU8(out, static_cast<uint8_t>(v));
}
void PutU32(std::string& out, uint32_t v) {
  PutU16(out, static_cast<uint16_t>(v >> 16));
  PutU16(out, static_cast<uint16_t>(v));
}

// Reads big-endian fields from an untrusted buffer; every read checks the bytes remain.
class ByteReader {
 public:
  explicit ByteReader(std::string_view bytes) : bytes_(bytes) {}

  size_t offset() const { return pos_; }
  size_t remaining() const { return bytes_.size() - pos_; }

  Result<uint32_t> ReadUint(size_t width, const char* what) {
    if (remaining() < width) return Truncated(what);
    uint32_t v = 0;
    for (size_t i = 0; i < width; ++i) v = (v << 8) | static_cast<uint8_t>(bytes_[pos_ + i]);
    pos_ += width;
    return v;
  }
  Result<std::string> ReadBytes(size_t n, const char* what) {
    if (remaining() < n) return Truncated(what);
    std::string out(bytes_.substr(pos_, n));
    pos_ += n;
    return out;
  }

 private:
  Error Truncated(const char* what) const {
    return Error(ErrorCode::kDataLoss, std::string("sealed object is truncated: ") + what + " at byte " +
                                           std::to_string(pos_) + " runs past the end (" +
                                           std::to_string(bytes_.size()) + " bytes)");
  }

  std::string_view bytes_;
  size_t pos_ = 0;
};

Error Corrupt(const std::string& what) { return Error(ErrorCode::kDataLoss, "sealed object is corrupt: " + what); }

}  // namespace

Result<PcrSelection> PcrSelection::Parse(const std::string& text) {
  if (text.empty()) return SelectionError(text, "it is empty; " + std::string(kSelectionExample));
  size_t colon = text.find(':');
  if (colon == std::string::npos || colon + 1 == text.size()) {
    return SelectionError(text, "it names no PCRs; " + std::string(kSelectionExample));
  }
  PcrSelection selection;
  selection.bank = text.substr(0, colon);
  if (internal::FindPcrBank(selection.bank) == nullptr) {
    return SelectionError(text, "unknown bank " + Quote(selection.bank) + "; use sha1, sha256, sha384 or sha512");
  }
  std::set<int> seen;
  std::string_view list(text);
  list.remove_prefix(colon + 1);
  for (;;) {
    size_t comma = list.find(',');
    std::string_view item = list.substr(0, comma);
    // At most two digits: anything longer is out of range anyway and cannot overflow an int.
    bool digits = !item.empty() && item.size() <= 2 &&
                  std::all_of(item.begin(), item.end(), [](char c) { return c >= '0' && c <= '9'; });
    int pcr = 0;
    if (digits) {
      for (char c : item) pcr = pcr * 10 + (c - '0');
    }
    if (!digits || pcr > internal::kMaxPcrIndex) {
      return SelectionError(text, "PCR " + Quote(item) + " is not an index from 0 to " +
                                      std::to_string(internal::kMaxPcrIndex));
    }
    // A repeated PCR is more likely a typo for another one than intended, so it is refused.
    if (!seen.insert(pcr).second) return SelectionError(text, "PCR " + std::to_string(pcr) + " is listed twice");
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  selection.pcrs.assign(seen.begin(), seen.end());
  return selection;
}

std::string PcrSelection::ToString() const {
  std::string out = bank + ":";
  for (size_t i = 0; i < pcrs.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(pcrs[i]);
  }
  return out;
}

std::string SealedObject::Serialize() const {
  std::string out(kMagic);
  std::string selection = pcrs_at_seal.selection.ToString();
  PutU16(out, static_cast<uint16_t>(selection.size()));
  out += selection;
  PutU8(out, static_cast<uint8_t>(pcrs_at_seal.digests.size()));
  for (const auto& [pcr, digest] : pcrs_at_seal.digests) {
    PutU8(out, static_cast<uint8_t>(pcr));
    PutU8(out, static_cast<uint8_t>(digest.size()));
    out += digest;
  }
  PutU32(out, static_cast<uint32_t>(tpm2b_public.size()));
  out += tpm2b_public;
  PutU32(out, static_cast<uint32_t>(tpm2b_private.size()));
  out += tpm2b_private;
  return out;
}

Result<SealedObject> SealedObject::Parse(const std::string& bytes) {
  if (bytes.size() > kMaxSerializedSize) {
    return Corrupt(std::to_string(bytes.size()) + " bytes is more than a sealed object can hold (" +
                   std::to_string(kMaxSerializedSize) + ")");
  }
  if (bytes.compare(0, kMagic.size(), kMagic) != 0) {
    if (bytes.compare(0, kMagicPrefix.size(), kMagicPrefix) == 0 && bytes.size() >= kMagic.size()) {
      return Corrupt("format version " + Quote(bytes.substr(kMagicPrefix.size(), 1)) +
                     " is not supported by this vtm (it reads version 1)");
    }
    return Corrupt("it does not start with " + std::string(kMagic));
  }
  ByteReader in(bytes);
  VTM_RETURN_IF_ERROR(in.ReadBytes(kMagic.size(), "magic"));

  SealedObject sealed;
  VTM_ASSIGN_OR_RETURN(uint32_t selection_len, in.ReadUint(2, "PCR selection length"));
  if (selection_len > kMaxSelectionText) return Corrupt("PCR selection is " + std::to_string(selection_len) + " bytes");
  VTM_ASSIGN_OR_RETURN(std::string selection_text, in.ReadBytes(selection_len, "PCR selection"));
  auto selection = PcrSelection::Parse(selection_text);
  if (!selection.ok()) return Corrupt(selection.error().message());
  if (selection->ToString() != selection_text) {
    return Corrupt("PCR selection " + Quote(selection_text) + " is not canonical");
  }
  sealed.pcrs_at_seal.selection = *selection;
  const internal::PcrBank* bank = internal::FindPcrBank(selection->bank);

  VTM_ASSIGN_OR_RETURN(uint32_t count, in.ReadUint(1, "PCR value count"));
  if (count != selection->pcrs.size()) {
    return Corrupt("it records " + std::to_string(count) + " PCR values for the " +
                   std::to_string(selection->pcrs.size()) + " PCRs of " + selection_text);
  }
  for (int expected_pcr : selection->pcrs) {
    VTM_ASSIGN_OR_RETURN(uint32_t pcr, in.ReadUint(1, "PCR index"));
    if (static_cast<int>(pcr) != expected_pcr) {
      return Corrupt("PCR value for PCR " + std::to_string(pcr) + " where PCR " + std::to_string(expected_pcr) +
                     " was expected");
    }
    VTM_ASSIGN_OR_RETURN(uint32_t len, in.ReadUint(1, "PCR value length"));
    if (len != bank->digest_size) {
      return Corrupt("PCR " + std::to_string(pcr) + " value is " + std::to_string(len) + " bytes, not the " +
                     std::to_string(bank->digest_size) + " of a " + selection->bank + " digest");
    }
    VTM_ASSIGN_OR_RETURN(sealed.pcrs_at_seal.digests[expected_pcr], in.ReadBytes(len, "PCR value"));
  }

  VTM_ASSIGN_OR_RETURN(uint32_t public_len, in.ReadUint(4, "TPM2B_PUBLIC length"));
  if (public_len > kMaxBlobSize) return Corrupt("TPM2B_PUBLIC is " + std::to_string(public_len) + " bytes");
  VTM_ASSIGN_OR_RETURN(sealed.tpm2b_public, in.ReadBytes(public_len, "TPM2B_PUBLIC"));
  VTM_ASSIGN_OR_RETURN(uint32_t private_len, in.ReadUint(4, "TPM2B_PRIVATE length"));
  if (private_len > kMaxBlobSize) return Corrupt("TPM2B_PRIVATE is " + std::to_string(private_len) + " bytes");
  VTM_ASSIGN_OR_RETURN(sealed.tpm2b_private, in.ReadBytes(private_len, "TPM2B_PRIVATE"));
  if (in.remaining() != 0) return Corrupt(std::to_string(in.remaining()) + " unexpected bytes after the end");

  auto pub = internal::UnmarshalExactly<TPM2B_PUBLIC, Tss2_MU_TPM2B_PUBLIC_Unmarshal>(sealed.tpm2b_public,
                                                                                    "TPM2B_PUBLIC");
  if (!pub.ok()) return Corrupt(pub.error().message());
  if (pub->publicArea.type != TPM2_ALG_KEYEDHASH) {
    return Corrupt("its TPM2B_PUBLIC describes a key, not a sealed data object");
  }
  auto priv = internal::UnmarshalExactly<TPM2B_PRIVATE, Tss2_MU_TPM2B_PRIVATE_Unmarshal>(sealed.tpm2b_private,
                                                                                       "TPM2B_PRIVATE");
  if (!priv.ok()) return Corrupt(priv.error().message());
  return sealed;
}

}  // namespace vtm
