// DER encoding and strict decoding helpers for vtm_ca (see der.h). The reader treats its input
// as hostile: it is reached from certificate extensions supplied by other hosts.
#include "der.h"

#include <openssl/asn1.h>
#include <openssl/crypto.h>
#include <openssl/objects.h>

namespace vtm::ca::der {

std::string Tlv(uint8_t tag, std::string_view content) {
  std::string out(1, static_cast<char>(tag));
  const size_t n = content.size();
  if (n < 0x80) {
    out += static_cast<char>(n);
  } else {
    std::string len;
    for (size_t v = n; v != 0; v >>= 8) len.insert(len.begin(), static_cast<char>(v & 0xff));
    out += static_cast<char>(0x80 | len.size());
    out += len;
  }
  out.append(content);
  return out;
}

std::string Integer(uint64_t value) {
  std::string bytes;
  do {
    bytes.insert(bytes.begin(), static_cast<char>(value & 0xff));
    value >>= 8;
  } while (value != 0);
  // A set top bit would read as negative: prefix a zero byte.
  if (static_cast<uint8_t>(bytes[0]) & 0x80) bytes.insert(bytes.begin(), '\0');
  return Tlv(kInteger, bytes);
}

Result<std::string> Oid(const char* dotted) {
  // OpenSSL's text-to-OID conversion handles arcs beyond 64 bits (2.25.<uuid>).
  ASN1_OBJECT* obj = OBJ_txt2obj(dotted, /*no_name=*/1);
  if (obj == nullptr) return Error(ErrorCode::kInternal, std::string("malformed OID constant ") + dotted);
  unsigned char* buf = nullptr;
  const int len = i2d_ASN1_OBJECT(obj, &buf);
  ASN1_OBJECT_free(obj);
  if (len <= 0) return Error(ErrorCode::kInternal, std::string("cannot encode OID ") + dotted);
  std::string out(reinterpret_cast<char*>(buf), static_cast<size_t>(len));
  OPENSSL_free(buf);
  return out;
}

Result<std::string_view> Reader::Read(uint8_t tag, const char* what) {
  auto bad = [what](const std::string& why) {
    return Error(ErrorCode::kInvalidArgument, std::string(what) + ": " + why);
  };
  if (rest_.size() < 2) return bad("truncated (missing tag or length)");
  if (static_cast<uint8_t>(rest_[0]) != tag) return bad("unexpected ASN.1 tag");
  const uint8_t first = static_cast<uint8_t>(rest_[1]);
  size_t header = 2;
  size_t len = 0;
  if (first < 0x80) {
    len = first;
  } else {
    const size_t n = first & 0x7f;
    if (n == 0) return bad("indefinite length is not DER");
    if (n > 4) return bad("length field too large");
    if (rest_.size() < 2 + n) return bad("truncated length");
    if (rest_[2] == 0) return bad("non-minimal length encoding");
    for (size_t i = 0; i < n; ++i) len = (len << 8) | static_cast<uint8_t>(rest_[2 + i]);
    if (len < 0x80) return bad("non-minimal length encoding");
    header += n;
  }
  if (len > rest_.size() - header) return bad("length exceeds the available data");
  std::string_view content = rest_.substr(header, len);
  rest_.remove_prefix(header + len);
  return content;
}

Result<uint64_t> Reader::ReadSmallInteger(const char* what) {
  VTM_ASSIGN_OR_RETURN(std::string_view v, Read(kInteger, what));
  if (v.empty()) return Error(ErrorCode::kInvalidArgument, std::string(what) + ": empty INTEGER");
  if (static_cast<uint8_t>(v[0]) & 0x80) {
    return Error(ErrorCode::kInvalidArgument, std::string(what) + ": negative INTEGER");
  }
  if (v.size() > 1 && v[0] == 0 && !(static_cast<uint8_t>(v[1]) & 0x80)) {
    return Error(ErrorCode::kInvalidArgument, std::string(what) + ": non-minimal INTEGER");
  }
  if (v.size() > 8) return Error(ErrorCode::kInvalidArgument, std::string(what) + ": INTEGER too large");
  uint64_t out = 0;
  for (char c : v) out = (out << 8) | static_cast<uint8_t>(c);
  return out;
}

}  // namespace vtm::ca::der
