// A minimal DER writer and a strict, bounds-checked DER reader for the few structures this
// library assembles or parses itself: the signed envelope of a certificate/CSR/CRL, the
// certify-evidence extension and the TCG subjectDirectoryAttributes. Internal to vtm_ca.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "vtm/error.h"

namespace vtm::ca::der {

inline constexpr uint8_t kInteger = 0x02;
inline constexpr uint8_t kBitString = 0x03;
inline constexpr uint8_t kOctetString = 0x04;
inline constexpr uint8_t kOid = 0x06;
inline constexpr uint8_t kUtf8String = 0x0c;
inline constexpr uint8_t kSequence = 0x30;
inline constexpr uint8_t kSet = 0x31;

// tag || DER length || content.
std::string Tlv(uint8_t tag, std::string_view content);
// A non-negative INTEGER in minimal two's-complement form.
std::string Integer(uint64_t value);
// An OBJECT IDENTIFIER TLV from dotted text ("2.23.133.2.16"); kInternal if malformed (our
// OIDs are constants, so a failure is a bug, not bad input).
Result<std::string> Oid(const char* dotted);

// Reads consecutive TLVs from a buffer it does not own. Only definite, minimally encoded
// lengths are accepted (DER); every length is checked against the bytes that remain.
class Reader {
 public:
  explicit Reader(std::string_view data) : rest_(data) {}
  // The content of the next TLV, which must carry `tag`. `what` names the field in errors.
  Result<std::string_view> Read(uint8_t tag, const char* what);
  // A small non-negative INTEGER (fits 63 bits), minimally encoded.
  Result<uint64_t> ReadSmallInteger(const char* what);
  bool empty() const { return rest_.empty(); }
  size_t remaining() const { return rest_.size(); }

 private:
  std::string_view rest_;
};

}  // namespace vtm::ca::der
