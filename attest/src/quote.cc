// TPM2_Quote checks (see quote.h). Quotes, their PCR values and AK publics come from other
// hosts, so every length is checked before use and every failure says which part is wrong.
#include "vtm/quote.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <tss2/tss2_mu.h>

#include <cstring>

#include "vtm/fs.h"
#include "vtm/hex.h"
#include "vtm/tpm_structures.h"

namespace vtm::attest {
namespace {

constexpr uint32_t kMaxPcr = 24;  // PC Client TPMs have 24 PCRs per bank


bool Selected(const TPMS_PCR_SELECTION& s, uint32_t pcr) {
  return pcr / 8 < s.sizeofSelect && (s.pcrSelect[pcr / 8] & (1u << (pcr % 8))) != 0;
}

// Two selections select the same PCRs of the same banks in the same order (sizeofSelect may
// differ: trailing zero bytes select nothing).
bool SameSelection(const TPML_PCR_SELECTION& a, const TPML_PCR_SELECTION& b) {
  if (a.count != b.count) return false;
  for (uint32_t i = 0; i < a.count; ++i) {
    if (a.pcrSelections[i].hash != b.pcrSelections[i].hash) return false;
    for (uint32_t pcr = 0; pcr < 8 * TPM2_PCR_SELECT_MAX; ++pcr) {
      if (Selected(a.pcrSelections[i], pcr) != Selected(b.pcrSelections[i], pcr)) return false;
    }
  }
  return true;
}

void PutLe16(std::string& out, uint16_t v) {
  out += static_cast<char>(v & 0xff);
  out += static_cast<char>(v >> 8);
}
void PutLe32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
}

}  // namespace

const std::string* QuotedPcrs::Find(TPM2_ALG_ID hash_alg, uint32_t pcr) const {
  for (const PcrBank& bank : banks) {
    if (bank.hash_alg != hash_alg) continue;
    auto it = bank.values.find(pcr);
    return it == bank.values.end() ? nullptr : &it->second;
  }
  return nullptr;
}

Result<QuotedPcrs> ParsePcrValues(std::string_view pcr_values) {
  QuotedPcrs out;
  size_t offset = 0;
  const auto* bytes = reinterpret_cast<const uint8_t*>(pcr_values.data());
  if (Tss2_MU_TPML_PCR_SELECTION_Unmarshal(bytes, pcr_values.size(), &offset, &out.selection) != TSS2_RC_SUCCESS) {
    return Error(ErrorCode::kInvalidArgument, "PCR values: no TPML_PCR_SELECTION at the start (truncated or malformed)");
  }
  // The digests, in selection order, from as many TPML_DIGESTs as follow.
  std::vector<std::string> digests;
  while (offset < pcr_values.size()) {
    TPML_DIGEST list{};
    if (Tss2_MU_TPML_DIGEST_Unmarshal(bytes, pcr_values.size(), &offset, &list) != TSS2_RC_SUCCESS) {
      return Error(ErrorCode::kInvalidArgument, "PCR values: a TPML_DIGEST at byte " + std::to_string(offset) +
                                                    " does not unmarshal (truncated or malformed)");
    }
    if (list.count == 0) return Error(ErrorCode::kInvalidArgument, "PCR values: an empty TPML_DIGEST");
    for (uint32_t i = 0; i < list.count; ++i) {
      digests.emplace_back(reinterpret_cast<const char*>(list.digests[i].buffer), list.digests[i].size);
    }
  }
  size_t next = 0;
  for (uint32_t b = 0; b < out.selection.count; ++b) {
    const TPMS_PCR_SELECTION& s = out.selection.pcrSelections[b];
    const EVP_MD* md = DigestForTpmAlg(s.hash);
    if (md == nullptr) return Error(ErrorCode::kInvalidArgument, "PCR values: unsupported bank " + TpmConstantHex(s.hash));
    for (const PcrBank& seen : out.banks) {
      if (seen.hash_alg == s.hash) {
        return Error(ErrorCode::kInvalidArgument, "PCR values: bank " + TpmConstantHex(s.hash) + " is selected twice");
      }
    }
    PcrBank bank;
    bank.hash_alg = s.hash;
    for (uint32_t pcr = 0; pcr < 8u * s.sizeofSelect; ++pcr) {
      if (!Selected(s, pcr)) continue;
      if (next >= digests.size()) {
        return Error(ErrorCode::kInvalidArgument, "PCR values: the selection names more PCRs than the " +
                                                      std::to_string(digests.size()) + " digests given");
      }
      if (digests[next].size() != static_cast<size_t>(EVP_MD_get_size(md))) {
        return Error(ErrorCode::kInvalidArgument, "PCR values: PCR " + std::to_string(pcr) + " of bank " +
                                                      TpmConstantHex(s.hash) + " has a digest of " +
                                                      std::to_string(digests[next].size()) + " bytes");
      }
      bank.values.emplace(pcr, std::move(digests[next++]));
    }
    out.banks.push_back(std::move(bank));
  }
  if (next != digests.size()) {
    return Error(ErrorCode::kInvalidArgument, "PCR values: " + std::to_string(digests.size()) +
                                                  " digests for a selection of " + std::to_string(next) + " PCRs");
  }
  return out;
}

Result<std::string> MarshalPcrValues(const std::vector<PcrBank>& pcrs) {
  TPML_PCR_SELECTION selection{};
  if (pcrs.size() > TPM2_NUM_PCR_BANKS) return Error(ErrorCode::kInvalidArgument, "too many PCR banks");
  std::vector<const std::string*> ordered;
  for (const PcrBank& bank : pcrs) {
    const EVP_MD* md = DigestForTpmAlg(bank.hash_alg);
    if (md == nullptr) return Error(ErrorCode::kInvalidArgument, "unsupported PCR bank " + TpmConstantHex(bank.hash_alg));
    // ParsePcrValues refuses a bank selected twice: never write one.
    for (uint32_t b = 0; b < selection.count; ++b) {
      if (selection.pcrSelections[b].hash == bank.hash_alg) {
        return Error(ErrorCode::kInvalidArgument, "PCR bank " + TpmConstantHex(bank.hash_alg) + " is given twice");
      }
    }
    TPMS_PCR_SELECTION& s = selection.pcrSelections[selection.count++];
    s.hash = bank.hash_alg;
    s.sizeofSelect = 3;
    for (const auto& [pcr, value] : bank.values) {  // std::map: ascending, as the TPM orders them
      if (pcr >= kMaxPcr) return Error(ErrorCode::kInvalidArgument, "PCR index " + std::to_string(pcr) + " >= 24");
      if (value.size() != static_cast<size_t>(EVP_MD_get_size(md))) {
        return Error(ErrorCode::kInvalidArgument, "PCR " + std::to_string(pcr) + ": digest of the wrong size");
      }
      s.pcrSelect[pcr / 8] |= static_cast<BYTE>(1u << (pcr % 8));
      ordered.push_back(&value);
    }
  }
  std::string out(sizeof(TPML_PCR_SELECTION) + (ordered.size() / 8 + 1) * sizeof(TPML_DIGEST), '\0');
  auto* buf = reinterpret_cast<uint8_t*>(out.data());
  size_t offset = 0;
  if (Tss2_MU_TPML_PCR_SELECTION_Marshal(&selection, buf, out.size(), &offset) != TSS2_RC_SUCCESS) {
    return Error(ErrorCode::kInternal, "marshalling a TPML_PCR_SELECTION failed");
  }
  for (size_t i = 0; i < ordered.size(); i += 8) {
    TPML_DIGEST list{};
    for (size_t j = i; j < ordered.size() && j < i + 8; ++j) {
      TPM2B_DIGEST& d = list.digests[list.count++];
      d.size = static_cast<UINT16>(ordered[j]->size());
      std::memcpy(d.buffer, ordered[j]->data(), ordered[j]->size());
    }
    if (Tss2_MU_TPML_DIGEST_Marshal(&list, buf, out.size(), &offset) != TSS2_RC_SUCCESS) {
      return Error(ErrorCode::kInternal, "marshalling a TPML_DIGEST failed");
    }
  }
  out.resize(offset);
  return out;
}

std::string Tpm2ToolsPcrFile(const QuotedPcrs& pcrs) {
  // struct TPML_PCR_SELECTION { UINT32 count; TPMS_PCR_SELECTION pcrSelections[16]; } with
  // TPMS_PCR_SELECTION { UINT16 hash; UINT8 sizeofSelect; BYTE pcrSelect[4]; } padded to 8.
  std::string out;
  PutLe32(out, pcrs.selection.count);
  for (uint32_t i = 0; i < TPM2_NUM_PCR_BANKS; ++i) {
    const TPMS_PCR_SELECTION& s = pcrs.selection.pcrSelections[i];
    PutLe16(out, i < pcrs.selection.count ? s.hash : 0);
    out += static_cast<char>(i < pcrs.selection.count ? s.sizeofSelect : 0);
    for (int b = 0; b < TPM2_PCR_SELECT_MAX; ++b) out += static_cast<char>(i < pcrs.selection.count ? s.pcrSelect[b] : 0);
    out += '\0';  // padding
  }
  std::vector<const std::string*> ordered;
  for (const PcrBank& bank : pcrs.banks) {
    for (const auto& [pcr, value] : bank.values) ordered.push_back(&value);
  }
  // UINT32 number of TPML_DIGESTs, then each: UINT32 count; TPM2B_DIGEST digests[8] with
  // TPM2B_DIGEST { UINT16 size; BYTE buffer[64]; }.
  const size_t lists = (ordered.size() + 7) / 8;
  PutLe32(out, static_cast<uint32_t>(lists));
  for (size_t l = 0; l < lists; ++l) {
    const size_t n = std::min<size_t>(8, ordered.size() - 8 * l);
    PutLe32(out, static_cast<uint32_t>(n));
    for (size_t j = 0; j < 8; ++j) {
      const std::string* d = j < n ? ordered[8 * l + j] : nullptr;
      PutLe16(out, d != nullptr ? static_cast<uint16_t>(d->size()) : 0);
      std::string buffer(sizeof(TPMU_HA), '\0');
      if (d != nullptr) buffer.replace(0, d->size(), *d);
      out += buffer;
    }
  }
  return out;
}

Result<std::string> PcrValuesFromTpm2ToolsFile(std::string_view file) {
  // Layout as written by Tpm2ToolsPcrFile above (and tpm2-tools' pcr serializer).
  constexpr size_t kSelectionSize = 4 + TPM2_NUM_PCR_BANKS * 8;
  constexpr size_t kDigestListSize = 4 + 8 * (2 + sizeof(TPMU_HA));
  auto le = [&](size_t at, int bytes) {
    uint32_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(file[at + static_cast<size_t>(i)]);
    return v;
  };
  const Error bad(ErrorCode::kInvalidArgument, "not a tpm2-tools PCR file (tpm2_quote -o): ");
  if (file.size() < kSelectionSize + 4) return Error(bad.code(), bad.message() + "too short");
  const uint32_t banks = le(0, 4);
  if (banks == 0 || banks > TPM2_NUM_PCR_BANKS) return Error(bad.code(), bad.message() + "bank count out of range");
  std::vector<PcrBank> out;
  size_t wanted = 0;
  for (uint32_t b = 0; b < banks; ++b) {
    const size_t at = 4 + 8 * b;
    const uint8_t size_of_select = static_cast<uint8_t>(file[at + 2]);
    if (size_of_select > TPM2_PCR_SELECT_MAX) return Error(bad.code(), bad.message() + "selection too large");
    PcrBank bank;
    bank.hash_alg = static_cast<TPM2_ALG_ID>(le(at, 2));
    for (uint32_t pcr = 0; pcr < 8u * size_of_select; ++pcr) {
      if ((static_cast<uint8_t>(file[at + 3 + pcr / 8]) >> (pcr % 8)) & 1) bank.values[pcr] = "";
    }
    wanted += bank.values.size();
    out.push_back(std::move(bank));
  }
  const uint32_t lists = le(kSelectionSize, 4);
  if (lists != (wanted + 7) / 8 || file.size() != kSelectionSize + 4 + lists * kDigestListSize) {
    return Error(bad.code(), bad.message() + "its digest lists do not match its selection");
  }
  size_t list = 0, in_list = 0;
  for (PcrBank& bank : out) {
    for (auto& [pcr, value] : bank.values) {
      const size_t at = kSelectionSize + 4 + list * kDigestListSize;
      if (in_list == 0 && le(at, 4) != std::min<size_t>(8, wanted - 8 * list)) {
        return Error(bad.code(), bad.message() + "a digest list has the wrong count");
      }
      const size_t d = at + 4 + in_list * (2 + sizeof(TPMU_HA));
      const uint32_t size = le(d, 2);
      if (size > sizeof(TPMU_HA)) return Error(bad.code(), bad.message() + "a digest is too large");
      value.assign(file.substr(d + 2, size));
      if (++in_list == 8) {
        in_list = 0;
        ++list;
      }
    }
  }
  // MarshalPcrValues checks each digest's size against its bank, and that no bank repeats.
  auto marshalled = MarshalPcrValues(out);
  if (!marshalled.ok()) return Error(bad.code(), bad.message() + marshalled.error().message());
  return marshalled;
}

Result<Quote> ReadTpm2ToolsQuote(const std::string& message_path, const std::string& signature_path,
                                 const std::string& pcrs_path) {
  Quote q;
  auto read = [](const std::string& path, const char* what) -> Result<std::string> {
    auto bytes = ReadFile(path);
    if (!bytes.ok()) return std::move(bytes).error().Context(std::string("reading the quote's ") + what);
    return bytes;
  };
  VTM_ASSIGN_OR_RETURN(*q.mutable_attest(), read(message_path, "message (tpm2_quote -m)"));
  VTM_ASSIGN_OR_RETURN(*q.mutable_signature(), read(signature_path, "signature (tpm2_quote -s)"));
  VTM_ASSIGN_OR_RETURN(std::string pcr_file, read(pcrs_path, "PCR values (tpm2_quote -o)"));
  auto values = PcrValuesFromTpm2ToolsFile(pcr_file);
  if (!values.ok()) return std::move(values).error().Context(pcrs_path);
  q.set_pcr_values(std::move(values).value());
  return q;
}

Result<std::string> PcrDigestOf(const QuotedPcrs& pcrs, TPM2_ALG_ID hash_alg) {
  std::string concatenated;
  for (const PcrBank& bank : pcrs.banks) {
    for (const auto& [pcr, value] : bank.values) concatenated += value;
  }
  return TpmDigest(hash_alg, concatenated);
}

Result<ParsedQuote> ParseQuote(const Quote& quote) {
  ParsedQuote p;
  VTM_ASSIGN_OR_RETURN(SignedAttest signed_attest,
                       ParseSignedAttest(quote.attest(), quote.signature(), TPM2_ST_ATTEST_QUOTE, "quote"));
  p.attest = signed_attest.attest;
  p.signature = signed_attest.signature;
  auto pcrs = ParsePcrValues(quote.pcr_values());
  if (!pcrs.ok()) return std::move(pcrs).error().Context("quote");
  p.pcrs = std::move(*pcrs);
  if (!SameSelection(p.pcrs.selection, p.attest.attested.quote.pcrSelect)) {
    return Error(ErrorCode::kInvalidArgument, "quote: the PCR values are not for the PCRs the quote selected");
  }
  p.extra_data.assign(reinterpret_cast<const char*>(p.attest.extraData.buffer), p.attest.extraData.size);
  return p;
}

Status CheckQuoteSignature(const Quote& quote, const ParsedQuote& parsed, std::string_view ak_tpm2b_public) {
  auto ak = ParseTpm2bPublic(ak_tpm2b_public, "the AK's TPM2B_PUBLIC");
  if (!ak.ok()) return std::move(ak).error();
  const TPMA_OBJECT attrs = ak->publicArea.objectAttributes;
  if ((attrs & TPMA_OBJECT_RESTRICTED) == 0 || (attrs & TPMA_OBJECT_SIGN_ENCRYPT) == 0) {
    return Error(ErrorCode::kFailedPrecondition,
                 "the AK is not a restricted signing key, so a quote by it proves nothing");
  }
  auto ok = VerifyTpmSignature(ak->publicArea, parsed.signature, quote.attest());
  if (!ok.ok()) return std::move(ok).error().Context("checking the quote's signature");
  if (!*ok) {
    return Error(ErrorCode::kDataLoss,
                 "the quote's signature does not verify with this AK (altered, or signed by another key)");
  }
  return OkStatus();
}

Status CheckQuoteExtraData(const ParsedQuote& parsed, std::string_view expected) {
  if (parsed.extra_data.size() != expected.size() ||
      CRYPTO_memcmp(parsed.extra_data.data(), expected.data(), expected.size()) != 0) {
    return Error(ErrorCode::kFailedPrecondition, "the quote's extraData is " + HexEncode(parsed.extra_data) +
                                                     ", expected " + HexEncode(expected));
  }
  return OkStatus();
}

Status CheckQuotePcrDigest(const ParsedQuote& parsed) {
  TPMI_ALG_HASH hash = 0;
  switch (parsed.signature.sigAlg) {
    case TPM2_ALG_ECDSA:
      hash = parsed.signature.signature.ecdsa.hash;
      break;
    case TPM2_ALG_RSASSA:
      hash = parsed.signature.signature.rsassa.hash;
      break;
    case TPM2_ALG_RSAPSS:
      hash = parsed.signature.signature.rsapss.hash;
      break;
    default:
      return Error(ErrorCode::kInvalidArgument, "unsupported signature scheme " + TpmConstantHex(parsed.signature.sigAlg));
  }
  VTM_ASSIGN_OR_RETURN(std::string expected, PcrDigestOf(parsed.pcrs, hash));
  const TPM2B_DIGEST& got = parsed.attest.attested.quote.pcrDigest;
  if (got.size != expected.size() || std::memcmp(got.buffer, expected.data(), expected.size()) != 0) {
    return Error(ErrorCode::kFailedPrecondition,
                 "the quote's pcrDigest is not the digest of the PCR values given with it (values altered)");
  }
  return OkStatus();
}

Result<ParsedQuote> VerifyQuote(const Quote& quote, std::string_view ak_tpm2b_public, std::string_view extra_data) {
  VTM_ASSIGN_OR_RETURN(ParsedQuote parsed, ParseQuote(quote));
  VTM_RETURN_IF_ERROR(CheckQuoteSignature(quote, parsed, ak_tpm2b_public));
  VTM_RETURN_IF_ERROR(CheckQuoteExtraData(parsed, extra_data));
  VTM_RETURN_IF_ERROR(CheckQuotePcrDigest(parsed));
  return parsed;
}

}  // namespace vtm::attest
