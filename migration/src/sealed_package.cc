// The sealed package: SealForDestination (source), OpenSealedPackage (destination), and its
// protobuf form, read strictly (version 1, canonical encoding, every size checked).
#include <tss2/tss2_mu.h>

#include <string_view>
#include <utility>

#include "internal.h"
#include "migration_package.pb.h"
#include "vtm/aes_gcm.h"
#include "vtm/credential.h"
#include "vtm/hex.h"
#include "vtm/migration_package.h"
#include "vtm/tpm_structures.h"

namespace vtm::migration {
namespace {

constexpr uint32_t kPackageVersion = 1;
// Never change: it separates a package header from any other authenticated bytes.
constexpr char kHeaderLabel[] = "vtm migration package v1";
constexpr size_t kMaxHeaderField = 256;
constexpr size_t kTransportKeySize = 32;
// The ciphertext is as long as the plaintext; the rest of a package is well under 64 KiB.
constexpr size_t kMaxPackageSize = kMaxKeyTransferSize + (size_t{64} << 10);

// The header's canonical bytes: the AES-GCM associated data.
std::string HeaderAad(const PackageHeader& h) {
  std::string out = internal::Labelled(kHeaderLabel);
  internal::AppendLengthPrefixed(out, h.migration_id);
  internal::AppendLengthPrefixed(out, h.vm_uuid);
  internal::AppendU64(out, h.generation);
  internal::AppendLengthPrefixed(out, h.import_key_name);
  internal::AppendLengthPrefixed(out, h.source_host);
  internal::AppendLengthPrefixed(out, h.destination_host);
  return out;
}

Status CheckHeader(const PackageHeader& h, const char* context) {
  auto bad = [&](const std::string& what) {
    return Error(ErrorCode::kInvalidArgument, std::string(context) + ": the header's " + what);
  };
  const std::pair<const std::string*, const char*> fields[] = {{&h.migration_id, "migration ID"},
                                                               {&h.vm_uuid, "VM UUID"},
                                                               {&h.source_host, "source host"},
                                                               {&h.destination_host, "destination host"}};
  for (const auto& [value, name] : fields) {
    if (value->empty() || value->size() > kMaxHeaderField) return bad(std::string(name) + " must have 1 to 256 bytes");
  }
  // A TPM name: nameAlg (2 bytes) and a SHA-1 to SHA-512 digest.
  if (h.import_key_name.size() < 2 + 20 || h.import_key_name.size() > 2 + 64) {
    return bad("import key name is not a TPM name");
  }
  return OkStatus();
}

Status CheckCiphertextShape(const SealedPackage& p, const char* context) {
  auto bad = [&](const std::string& what) { return Error(ErrorCode::kInvalidArgument, std::string(context) + ": " + what); };
  if (p.iv.size() != kAesGcmIvSize) return bad("the IV must have 12 bytes, not " + std::to_string(p.iv.size()));
  if (p.tag.size() != kAesGcmTagSize) return bad("the tag must have 16 bytes, not " + std::to_string(p.tag.size()));
  if (p.ciphertext.empty() || p.ciphertext.size() > kMaxKeyTransferSize) return bad("the ciphertext is empty or over 64 MiB");
  auto id = ParseTpmStructure<TPM2B_ID_OBJECT, Tss2_MU_TPM2B_ID_OBJECT_Unmarshal>(p.credential.id_object,
                                                                                  "the credential's TPM2B_ID_OBJECT");
  if (!id.ok()) return std::move(id).error().Context(context);
  auto secret = ParseTpmStructure<TPM2B_ENCRYPTED_SECRET, Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal>(
      p.credential.encrypted_secret, "the credential's TPM2B_ENCRYPTED_SECRET");
  if (!secret.ok()) return std::move(secret).error().Context(context);
  return OkStatus();
}

// An outside value for a message: printable ASCII kept, anything else as '?'.
std::string Printable(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c < 0x20 || c > 0x7e) c = '?';
  }
  return out;
}

// The first field in which got differs from want, as a refusal that names both values.
Status CompareHeader(const PackageHeader& got, const PackageHeader& want) {
  auto refuse = [](const std::string& what) {
    return Error(ErrorCode::kPermissionDenied, "refusing the migration package: " + what);
  };
  if (got.migration_id != want.migration_id) {
    return refuse("it is for migration " + Printable(got.migration_id) + ", this destination prepared migration " +
                  want.migration_id + " (a replayed or misdirected package)");
  }
  if (got.vm_uuid != want.vm_uuid) {
    return refuse("it carries VM " + Printable(got.vm_uuid) + ", migration " + want.migration_id + " is for VM " + want.vm_uuid);
  }
  if (got.generation != want.generation) {
    return refuse("it is of generation " + std::to_string(got.generation) + " of VM " + want.vm_uuid +
                  ", this destination expects generation " + std::to_string(want.generation) +
                  " (a stale or replayed package)");
  }
  if (got.import_key_name != want.import_key_name) {
    return refuse("it is sealed to import key " + HexEncode(got.import_key_name) + ", this destination prepared " +
                  HexEncode(want.import_key_name) + " for migration " + want.migration_id);
  }
  if (got.destination_host != want.destination_host) {
    return refuse("it is addressed to host " + Printable(got.destination_host) + ", this is host " + want.destination_host);
  }
  if (got.source_host != want.source_host) {
    return refuse("it comes from host " + Printable(got.source_host) + ", migration " + want.migration_id +
                  " was prepared for source host " + want.source_host);
  }
  return OkStatus();
}

}  // namespace

std::string SealedPackage::Serialize() const {
  wire::SealedPackage m;
  m.set_version(kPackageVersion);
  wire::PackageHeader* h = m.mutable_header();
  h->set_migration_id(header.migration_id);
  h->set_vm_uuid(header.vm_uuid);
  h->set_generation(header.generation);
  h->set_import_key_name(header.import_key_name);
  h->set_source_host(header.source_host);
  h->set_destination_host(header.destination_host);
  m.set_credential_id_object(credential.id_object);
  m.set_credential_encrypted_secret(credential.encrypted_secret);
  m.set_iv(iv);
  m.set_ciphertext(ciphertext);
  m.set_tag(tag);
  return m.SerializeAsString();
}

Result<SealedPackage> SealedPackage::Parse(const std::string& bytes) {
  constexpr const char* kContext = "the migration package";
  auto bad = [&](const std::string& what) { return Error(ErrorCode::kInvalidArgument, std::string(kContext) + " " + what); };
  if (bytes.empty()) return bad("is empty");
  if (bytes.size() > kMaxPackageSize) return bad("is larger than 64 MiB");
  wire::SealedPackage m;
  if (!m.ParseFromString(bytes)) return bad("is not a SealedPackage message (truncated or corrupt)");
  if (m.version() != kPackageVersion) {
    return bad("has version " + std::to_string(m.version()) + " (this vtm reads version 1; upgrade it)");
  }
  // Canonical: no unknown fields, nothing encoded twice or out of order. Re-encoding what was
  // read gives the input back, so any change to the bytes changes what is read.
  m.DiscardUnknownFields();
  if (m.SerializeAsString() != bytes) return bad("is not in canonical form (unknown, repeated or reordered fields)");
  SealedPackage p;
  const wire::PackageHeader& h = m.header();
  p.header = PackageHeader{h.migration_id(), h.vm_uuid(),     h.generation(),
                           h.import_key_name(), h.source_host(), h.destination_host()};
  p.credential = TpmCredential{m.credential_id_object(), m.credential_encrypted_secret()};
  p.iv = m.iv();
  p.ciphertext = m.ciphertext();
  p.tag = m.tag();
  VTM_RETURN_IF_ERROR(CheckHeader(p.header, kContext));
  VTM_RETURN_IF_ERROR(CheckCiphertextShape(p, kContext));
  return p;
}

Result<SealedPackage> SealForDestination(const KeyTransfer& payload, const PackageHeader& header,
                                         const std::string& import_tpm2b_public) {
  constexpr const char* kContext = "sealing the migration package";
  VTM_RETURN_IF_ERROR(CheckHeader(header, kContext));
  if (payload.vm_uuid != header.vm_uuid || payload.generation != header.generation) {
    return Error(ErrorCode::kInvalidArgument, std::string(kContext) + ": the payload is VM " + payload.vm_uuid +
                                                  " generation " + std::to_string(payload.generation) +
                                                  ", the header says VM " + header.vm_uuid + " generation " +
                                                  std::to_string(header.generation));
  }
  auto key = ParseTpm2bPublic(import_tpm2b_public, "the import key's TPM2B_PUBLIC");
  if (!key.ok()) return std::move(key).error().Context(kContext);
  if (auto fit = internal::CheckImportKeyAttributes(key->publicArea); !fit.ok()) {
    return std::move(fit).error().Context(kContext);
  }
  VTM_ASSIGN_OR_RETURN(std::string name, TpmNameOfPublic(import_tpm2b_public));
  if (name != header.import_key_name) {
    return Error(ErrorCode::kInvalidArgument, std::string(kContext) + ": the header names import key " +
                                                  HexEncode(header.import_key_name) + ", the key given is " +
                                                  HexEncode(name));
  }
  auto plaintext = SerializeKeyTransfer(payload);
  if (!plaintext.ok()) return std::move(plaintext).error().Context(kContext);
  VTM_ASSIGN_OR_RETURN(SecretBytes transport, RandomSecret(kTransportKeySize));
  // The credential binds the transport key to the import key's own name: only the TPM that
  // holds that key (fixedTPM) can recover it, with TPM2_ActivateCredential.
  auto made = attest::MakeCredential(
      import_tpm2b_public, std::string_view(reinterpret_cast<const char*>(transport.data()), transport.size()), name);
  if (!made.ok()) return std::move(made).error().Context(kContext);
  SealedPackage out;
  out.header = header;
  out.credential = TpmCredential{std::move(made->id_object), std::move(made->encrypted_secret)};
  auto sealed = AesGcmSeal(transport, plaintext->data(), plaintext->size(), HeaderAad(header));
  if (!sealed.ok()) return std::move(sealed).error().Context(kContext);
  out.iv = std::move(sealed->iv);
  out.ciphertext = std::move(sealed->ciphertext);
  out.tag = std::move(sealed->tag);
  return out;
}

Result<KeyTransfer> OpenSealedPackage(const SealedPackage& package, const PackageHeader& expected,
                                      const std::function<Result<SecretBytes>(const TpmCredential&)>& activate) {
  VTM_RETURN_IF_ERROR(CheckHeader(expected, "the migration this destination prepared"));
  VTM_RETURN_IF_ERROR(CompareHeader(package.header, expected));
  VTM_RETURN_IF_ERROR(CheckCiphertextShape(package, "the migration package"));
  auto transport = activate(package.credential);
  if (!transport.ok()) return std::move(transport).error().Context("opening migration package " + expected.migration_id);
  if (transport->size() != kTransportKeySize) {
    return Error(ErrorCode::kDataLoss, "migration package " + expected.migration_id + ": the transport key has " +
                                           std::to_string(transport->size()) + " bytes, not 32");
  }
  auto plaintext = AesGcmOpen(*transport, package.iv, package.ciphertext, package.tag, HeaderAad(package.header));
  if (!plaintext.ok()) {
    return Error(ErrorCode::kDataLoss, "migration package " + expected.migration_id +
                                           " fails authentication: its ciphertext, IV or tag was altered on the way, "
                                           "or it was sealed under another transport key; nothing was imported, ask "
                                           "the source to send it again");
  }
  auto payload = ParseKeyTransfer(*plaintext);
  if (!payload.ok()) return std::move(payload).error().Context("migration package " + expected.migration_id);
  if (payload->vm_uuid != package.header.vm_uuid || payload->generation != package.header.generation) {
    return Error(ErrorCode::kDataLoss, "migration package " + expected.migration_id + " carries VM " +
                                           payload->vm_uuid + " generation " + std::to_string(payload->generation) +
                                           " under a header for VM " + package.header.vm_uuid + " generation " +
                                           std::to_string(package.header.generation) + "; the source is faulty");
  }
  return payload;
}

}  // namespace vtm::migration
