// The cryptographic core of sealed migration (ISO/IEC 27070 5.3 Migration Engine, 6.6), used by
// both ends: the destination's import key is checked by the source (it lives, fixed, in the
// TPM of the host AK the source's attestation verifier accepted, and was made for this
// migration), and what the destination needs of a VM is sealed to that key so that only that
// TPM can open it. No TPM work here: the destination's TPM side is vtmd's
// migration_import_key.h. docs/migration.md, "The sealed package and the import key".
//
// Stateless; every function is thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "vtm/error.h"
#include "vtm/secret.h"
#include "vtm/tpm.h"

namespace vtm::migration {

// The qualifying data of the import key's TPM2_Certify: SHA-256 over a domain-separation label,
// the migration ID and the source's nonce, each length-prefixed. A certification made for
// another migration, or replayed from an earlier one, does not carry it.
std::string ImportKeyQualifying(const std::string& migration_id, const std::string& source_nonce);

// The source's check of a destination's import key, before anything is wrapped to it:
// certify is a TPM2_Certify signed by the AK ak_tpm2b_public (the AK the attestation verifier
// accepted for the destination), the certified name is the name of import_tpm2b_public, its
// qualifying data is expected_qualifying, and the key is a restricted decryption key that is
// fixedTPM|fixedParent|sensitiveDataOrigin (it was made in that TPM and can never leave it).
// Errors say what failed: kDataLoss for a signature that does not verify (another AK, altered
// bytes); kInvalidArgument for malformed input or a certification that does not prove the key
// TPM-resident (name of another key, not fixedTPM|sensitiveDataOrigin); kPermissionDenied for
// a key certified for another migration, or not a restricted fixedParent decryption key.
Status VerifyImportKey(const std::string& import_tpm2b_public, const TpmAttestation& certify,
                       const std::string& ak_tpm2b_public, const std::string& expected_qualifying);

// ---- The sealed package ----------------------------------------------------------------------

// What the destination needs of a VM (the plaintext of a package). Move-only (it holds keys).
struct KeyTransfer {
  std::string vm_uuid, name, service;
  uint64_t generation = 0;
  SecretBytes state_key, migration_key;  // swtpm's --key and --migration-key, 32 bytes each
  std::string ek_name, ek_rsa_name, ak_name, ek_public, ak_public;  // the vTPM's identity (public)
  // Cold migration: the vTPM's swtpm state files (already encrypted by swtpm with the state
  // key), by file name (a plain name: no '/', not "." or ".."). Empty for live migration, where
  // QEMU's stream carries the state.
  std::map<std::string, std::string> state_files;
};

// Limits a package must keep (a reader refuses more): a cold package carries a vTPM's state
// files, tens of KiB in practice.
inline constexpr size_t kMaxStateFiles = 64;
inline constexpr size_t kMaxStateFileSize = size_t{16} << 20;
inline constexpr size_t kMaxKeyTransferSize = size_t{64} << 20;

// Who a package is for; sent in clear, authenticated as the AES-GCM associated data, and
// compared by the destination with what it prepared.
struct PackageHeader {
  std::string migration_id;      // chosen by the destination at prepare (1..256 bytes)
  std::string vm_uuid;           // 1..256 bytes
  uint64_t generation = 0;       // the VM's generation (fencing token)
  std::string import_key_name;   // TPM name of the destination's import key
  std::string source_host;       // 1..256 bytes each
  std::string destination_host;
  bool operator==(const PackageHeader&) const = default;
};

// A KeyTransfer sealed to one destination's import key: the transport key (32 random bytes)
// as a TPM2_MakeCredential to the import key for its own name, and AES-256-GCM of the
// KeyTransfer under it with the header as associated data. All public. Format: the protobuf
// vtm.migration.wire.SealedPackage (proto/migration_package.proto), version 1.
struct SealedPackage {
  PackageHeader header;
  TpmCredential credential;
  std::string iv, ciphertext, tag;

  std::string Serialize() const;
  // kInvalidArgument saying what is wrong for bytes that are not one canonical version-1
  // package within the limits (unknown fields, wrong sizes, malformed TPM structures).
  static Result<SealedPackage> Parse(const std::string& bytes);
};

// The source's step: seals payload for the destination whose import key (checked first with
// VerifyImportKey) is import_tpm2b_public. header.import_key_name must be that key's name and
// header.vm_uuid/generation the payload's. kInvalidArgument for anything else.
Result<SealedPackage> SealForDestination(const KeyTransfer& payload, const PackageHeader& header,
                                         const std::string& import_tpm2b_public);

// The destination's step: refuses (kPermissionDenied, naming the field and both values) a
// package whose header is not `expected` (another migration, VM, generation, import key or
// host: a replayed or misdirected package), then recovers the transport key with activate
// (ActivateWithImportKey in vtmd; its errors are passed on), decrypts (kDataLoss if the package
// was altered) and checks that the payload is the header's VM and generation (kDataLoss).
Result<KeyTransfer> OpenSealedPackage(const SealedPackage& package, const PackageHeader& expected,
                                      const std::function<Result<SecretBytes>(const TpmCredential&)>& activate);

// The plaintext layout (for tests and the fuzzer; SealForDestination/OpenSealedPackage use it):
// version byte 1, then fields as tag (1 byte) | length (u32 big-endian) | value, in tag order:
// 1 vm_uuid, 2 name, 3 service, 4 generation (8 bytes, big-endian), 5 state_key (32),
// 6 migration_key (32), 7 ek_name, 8 ek_rsa_name, 9 ak_name, 10 ek_public, 11 ak_public,
// 12 state file count (u32), then one 13 per state file (name length u16 | name | contents) in
// ascending name order, and nothing after. Hand-laid
// rather than protobuf so key bytes are only ever in SecretBytes. kInvalidArgument for a
// payload outside the limits; ParseKeyTransfer: kDataLoss saying what is wrong.
Result<SecretBytes> SerializeKeyTransfer(const KeyTransfer& payload);
Result<KeyTransfer> ParseKeyTransfer(const SecretBytes& plaintext);

}  // namespace vtm::migration
