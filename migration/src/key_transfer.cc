// The plaintext of a sealed package (KeyTransfer), laid out by hand so that key bytes are
// written straight into and read straight out of SecretBytes: no protobuf or std::string
// buffer ever holds them (protobuf's parser copies input tails into its own buffers).
#include <cstring>
#include <string_view>
#include <utility>

#include "vtm/migration_package.h"

namespace vtm::migration {
namespace {

constexpr uint8_t kVersion = 1;
constexpr size_t kKeySize = 32;
constexpr size_t kMaxMetadataField = size_t{64} << 10;
constexpr size_t kMaxStateFileName = 255;

enum Tag : uint8_t {
  kVmUuid = 1,
  kName,
  kService,
  kGeneration,
  kStateKey,
  kMigrationKey,
  kEkName,
  kEkRsaName,
  kAkName,
  kEkPublic,
  kAkPublic,
  kStateFileCount,
  kStateFile,
};

// A plain file name: it becomes a path under the destination's state directory.
bool IsPlainFileName(std::string_view name) {
  return !name.empty() && name.size() <= kMaxStateFileName && name != "." && name != ".." &&
         name.find('/') == std::string_view::npos && name.find('\0') == std::string_view::npos;
}

// Writes fields into a buffer sized beforehand, so the buffer never grows (growing would
// leave unwiped copies of the keys behind).
class Writer {
 public:
  explicit Writer(SecretBytes* out) : out_(out) {}
  void Byte(uint8_t b) { out_->data()[pos_++] = b; }
  void Field(Tag tag, const uint8_t* data, size_t size) {
    Byte(tag);
    for (int i = 3; i >= 0; --i) Byte(static_cast<uint8_t>((size >> (8 * i)) & 0xff));
    if (size != 0) std::memcpy(out_->data() + pos_, data, size);
    pos_ += size;
  }
  void Field(Tag tag, std::string_view s) { Field(tag, reinterpret_cast<const uint8_t*>(s.data()), s.size()); }
  // An unsigned integer of `bytes` bytes, big-endian.
  void Uint(Tag tag, uint64_t value, size_t bytes) {
    uint8_t be[8];
    for (size_t i = 0; i < bytes; ++i) be[i] = static_cast<uint8_t>((value >> (8 * (bytes - 1 - i))) & 0xff);
    Field(tag, be, bytes);
  }
  size_t pos() const { return pos_; }

 private:
  SecretBytes* out_;
  size_t pos_ = 0;
};

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool done() const { return pos_ == size_; }
  uint8_t PeekTag() const { return data_[pos_]; }
  // The value of the next field, which must carry tag; *value points into the plaintext.
  Status Field(Tag tag, const char* what, size_t max, const uint8_t** value, size_t* size) {
    if (size_ - pos_ < 5) return Bad(std::string("truncated before ") + what);
    if (data_[pos_] != tag) {
      return Bad(std::string("expected ") + what + " (tag " + std::to_string(tag) + "), found tag " +
                 std::to_string(data_[pos_]));
    }
    size_t n = 0;
    for (int i = 1; i <= 4; ++i) n = (n << 8) | data_[pos_ + i];
    pos_ += 5;
    if (n > size_ - pos_) return Bad(std::string(what) + " is truncated");
    if (n > max) return Bad(std::string(what) + " is longer than " + std::to_string(max) + " bytes");
    *value = data_ + pos_;
    *size = n;
    pos_ += n;
    return OkStatus();
  }
  Status Uint(Tag tag, const char* what, size_t bytes, uint64_t* out) {
    const uint8_t* v = nullptr;
    size_t n = 0;
    VTM_RETURN_IF_ERROR(Field(tag, what, bytes, &v, &n));
    if (n != bytes) return Bad(std::string(what) + " has " + std::to_string(n) + " bytes, not " + std::to_string(bytes));
    *out = 0;
    for (size_t i = 0; i < n; ++i) *out = (*out << 8) | v[i];
    return OkStatus();
  }
  Status String(Tag tag, const char* what, std::string* out) {
    const uint8_t* v = nullptr;
    size_t n = 0;
    VTM_RETURN_IF_ERROR(Field(tag, what, kMaxMetadataField, &v, &n));
    out->assign(reinterpret_cast<const char*>(v), n);
    return OkStatus();
  }
  Status Key(Tag tag, const char* what, SecretBytes* out) {
    const uint8_t* v = nullptr;
    size_t n = 0;
    VTM_RETURN_IF_ERROR(Field(tag, what, kKeySize, &v, &n));
    if (n != kKeySize) return Bad(std::string(what) + " has " + std::to_string(n) + " bytes, not 32");
    *out = SecretBytes(v, n);
    return OkStatus();
  }
  static Error Bad(const std::string& what) {
    return Error(ErrorCode::kDataLoss, "the package's key transfer is malformed: " + what);
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace

Result<SecretBytes> SerializeKeyTransfer(const KeyTransfer& p) {
  auto invalid = [](const std::string& what) { return Error(ErrorCode::kInvalidArgument, "the key transfer: " + what); };
  if (p.vm_uuid.empty()) return invalid("no VM UUID");
  if (p.state_key.size() != kKeySize || p.migration_key.size() != kKeySize) {
    return invalid("the state key and the migration key must have 32 bytes each");
  }
  const std::string* metadata[] = {&p.vm_uuid, &p.name,     &p.service,   &p.ek_name,
                                   &p.ek_rsa_name, &p.ak_name, &p.ek_public, &p.ak_public};
  size_t total = 1 + 5 + 8 + 2 * (5 + kKeySize) + 5 + 4;
  for (const std::string* field : metadata) {
    if (field->size() > kMaxMetadataField) return invalid("a metadata field is longer than 64 KiB");
    total += 5 + field->size();
  }
  if (p.state_files.size() > kMaxStateFiles) return invalid("more than 64 state files");
  for (const auto& [file, contents] : p.state_files) {
    if (!IsPlainFileName(file)) return invalid("state file name '" + file + "' is not a plain file name");
    if (contents.size() > kMaxStateFileSize) return invalid("state file " + file + " is larger than 16 MiB");
    total += 5 + 2 + file.size() + contents.size();
  }
  if (total > kMaxKeyTransferSize) return invalid("larger than 64 MiB");

  SecretBytes out(total);
  Writer w(&out);
  w.Byte(kVersion);
  w.Field(kVmUuid, p.vm_uuid);
  w.Field(kName, p.name);
  w.Field(kService, p.service);
  w.Uint(kGeneration, p.generation, 8);
  w.Field(kStateKey, p.state_key.data(), p.state_key.size());
  w.Field(kMigrationKey, p.migration_key.data(), p.migration_key.size());
  w.Field(kEkName, p.ek_name);
  w.Field(kEkRsaName, p.ek_rsa_name);
  w.Field(kAkName, p.ak_name);
  w.Field(kEkPublic, p.ek_public);
  w.Field(kAkPublic, p.ak_public);
  w.Uint(kStateFileCount, p.state_files.size(), 4);
  for (const auto& [file, contents] : p.state_files) {  // std::map: ascending names
    std::string entry;
    entry.push_back(static_cast<char>((file.size() >> 8) & 0xff));
    entry.push_back(static_cast<char>(file.size() & 0xff));
    entry += file;
    entry += contents;
    w.Field(kStateFile, entry);
  }
  if (w.pos() != total) return Error(ErrorCode::kInternal, "the key transfer's size was miscounted");
  return out;
}

Result<KeyTransfer> ParseKeyTransfer(const SecretBytes& plaintext) {
  if (plaintext.empty()) return Reader::Bad("empty");
  if (plaintext.size() > kMaxKeyTransferSize) return Reader::Bad("larger than 64 MiB");
  if (plaintext.data()[0] != kVersion) {
    return Reader::Bad("version " + std::to_string(plaintext.data()[0]) + " (this vtm reads version 1)");
  }
  Reader r(plaintext.data() + 1, plaintext.size() - 1);
  KeyTransfer p;
  VTM_RETURN_IF_ERROR(r.String(kVmUuid, "the VM UUID", &p.vm_uuid));
  if (p.vm_uuid.empty()) return Reader::Bad("the VM UUID is empty");
  VTM_RETURN_IF_ERROR(r.String(kName, "the VM name", &p.name));
  VTM_RETURN_IF_ERROR(r.String(kService, "the service", &p.service));
  VTM_RETURN_IF_ERROR(r.Uint(kGeneration, "the generation", 8, &p.generation));
  VTM_RETURN_IF_ERROR(r.Key(kStateKey, "the state key", &p.state_key));
  VTM_RETURN_IF_ERROR(r.Key(kMigrationKey, "the migration key", &p.migration_key));
  VTM_RETURN_IF_ERROR(r.String(kEkName, "the EK name", &p.ek_name));
  VTM_RETURN_IF_ERROR(r.String(kEkRsaName, "the RSA EK name", &p.ek_rsa_name));
  VTM_RETURN_IF_ERROR(r.String(kAkName, "the AK name", &p.ak_name));
  VTM_RETURN_IF_ERROR(r.String(kEkPublic, "the EK public area", &p.ek_public));
  VTM_RETURN_IF_ERROR(r.String(kAkPublic, "the AK public area", &p.ak_public));
  // The count first, so a plaintext cut between two files is refused rather than read short.
  uint64_t count = 0;
  VTM_RETURN_IF_ERROR(r.Uint(kStateFileCount, "the state file count", 4, &count));
  if (count > kMaxStateFiles) return Reader::Bad("more than 64 state files");
  std::string previous;
  for (uint64_t i = 0; i < count; ++i) {
    const uint8_t* v = nullptr;
    size_t n = 0;
    VTM_RETURN_IF_ERROR(r.Field(kStateFile, "a state file", 2 + kMaxStateFileName + kMaxStateFileSize, &v, &n));
    if (n < 2) return Reader::Bad("a state file entry has no name length");
    const size_t name_size = (size_t{v[0]} << 8) | v[1];
    if (name_size > n - 2) return Reader::Bad("a state file name is truncated");
    std::string file(reinterpret_cast<const char*>(v + 2), name_size);
    if (!IsPlainFileName(file)) return Reader::Bad("a state file name is not a plain file name");
    if (i > 0 && file <= previous) return Reader::Bad("state file " + file + " is out of order or repeated");
    if (n - 2 - name_size > kMaxStateFileSize) return Reader::Bad("state file " + file + " is larger than 16 MiB");
    previous = file;
    p.state_files.emplace(std::move(file), std::string(reinterpret_cast<const char*>(v + 2 + name_size), n - 2 - name_size));
  }
  if (!r.done()) return Reader::Bad("bytes follow the last state file");
  return p;
}

}  // namespace vtm::migration
