// The host EK, EK certificate and AK: loading, creation with credential activation, quotes.
#include "host_attestation_key.h"

#include <openssl/crypto.h>

#include <utility>

#include "vtm/fs.h"
#include "vtm/log.h"

namespace vtm {
namespace {

constexpr uint32_t kEkCertEccIndex = 0x01C0000A;
constexpr uint32_t kEkCertRsaIndex = 0x01C00002;

}  // namespace

std::string EncodeTwoParts(const std::string& first, const std::string& second) {
  std::string out;
  for (const std::string* part : {&first, &second}) {
    uint32_t n = static_cast<uint32_t>(part->size());
    for (int i = 3; i >= 0; --i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
    out += *part;
  }
  return out;
}

Result<std::pair<std::string, std::string>> DecodeTwoParts(const std::string& s, const std::string& path) {
  std::pair<std::string, std::string> parts;
  size_t off = 0;
  for (std::string* part : {&parts.first, &parts.second}) {
    if (s.size() - off < 4) return Error(ErrorCode::kDataLoss, path + " is truncated");
    uint32_t n = 0;
    for (int i = 0; i < 4; ++i) n = (n << 8) | static_cast<uint8_t>(s[off + i]);
    off += 4;
    if (n > s.size() - off) return Error(ErrorCode::kDataLoss, path + " is truncated");
    *part = s.substr(off, n);
    off += n;
  }
  if (off != s.size()) return Error(ErrorCode::kDataLoss, path + " has trailing bytes");
  return parts;
}

Result<TpmKeyBlob> ReadKeyBlob(const std::string& path) {
  VTM_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  return BlobFromString(bytes, path);
}

Result<TpmKeyBlob> BlobFromString(const std::string& s, const std::string& path) {
  VTM_ASSIGN_OR_RETURN(auto parts, DecodeTwoParts(s, path));
  return TpmKeyBlob{std::move(parts.first), std::move(parts.second)};
}

std::string BoundKeyPath(const std::string& dir, const std::string& name) { return dir + "/" + name + "-bound.blob"; }
std::string LegacyKeyPath(const std::string& dir, const std::string& name) { return dir + "/" + name + ".blob"; }

Result<TpmKey> LoadOrCreateKeyFile(Tpm& tpm, const TpmKey& srk, KeyRole role, const std::string& dir,
                                   const std::string& name, const SecretBytes& auth, bool* created) {
  *created = false;
  const std::string bound = BoundKeyPath(dir, name), legacy = LegacyKeyPath(dir, name);
  if (!PathExists(bound) && PathExists(legacy)) {
    // Written by a vtm whose host keys had no auth value: bind this one now. Its public area,
    // and so its name and every certificate of it, stay the same.
    VTM_ASSIGN_OR_RETURN(TpmKeyBlob old_blob, ReadKeyBlob(legacy));
    std::string new_private;
    {
      auto key = tpm.LoadKey(srk, old_blob);
      if (!key.ok()) return std::move(key).error().Context("loading " + legacy + " into the host TPM");
      auto changed = tpm.ChangeKeyAuth(*key, srk, auth);
      if (!changed.ok()) return std::move(changed).error().Context("binding " + legacy + " to the master key");
      new_private = std::move(changed).value();
    }
    VTM_RETURN_IF_ERROR(WriteFileAtomic(bound, EncodeTwoParts(old_blob.tpm2b_public, new_private), 0600));
    LOG_INFO << "bound the host key " << name << " to the master key: its auth value now derives from it ("
             << legacy << " -> " << bound << ")";
  } else if (!PathExists(bound)) {
    VTM_ASSIGN_OR_RETURN(TpmKeyBlob created_blob, tpm.CreateKey(srk, role, auth));
    VTM_RETURN_IF_ERROR(
        WriteFileAtomic(bound, EncodeTwoParts(created_blob.tpm2b_public, created_blob.tpm2b_private), 0600));
    *created = true;
  }
  // An upgrade cut short leaves the unbound copy behind: it must not stay usable.
  if (PathExists(legacy)) VTM_RETURN_IF_ERROR(RemoveTree(legacy));
  VTM_ASSIGN_OR_RETURN(TpmKeyBlob blob, ReadKeyBlob(bound));
  auto key = tpm.LoadKey(srk, blob);
  if (!key.ok()) return std::move(key).error().Context("loading " + bound + " into the host TPM");
  VTM_RETURN_IF_ERROR(tpm.SetKeyAuth(*key, auth));
  return key;
}

Result<std::unique_ptr<HostAttestationKey>> HostAttestationKey::LoadOrCreate(HostTpmExecutor& executor,
                                                                             const std::string& dir,
                                                                             const SecretBytes& key_auth) {
  std::unique_ptr<HostAttestationKey> id(new HostAttestationKey(executor));
  VTM_RETURN_IF_ERROR(MakeDir(dir, 0700));
  const std::string ak_path = BoundKeyPath(dir, "ak");
  // TPMs have as few as three transient object slots and no resource manager stands between
  // a TCTI and swtpm, so every object is loaded only for as long as it is needed: the AK stays
  // loaded, everything else is flushed at the end of its scope.
  Status loaded = executor.Run([&](Tpm& tpm) -> Status {
    {
      VTM_ASSIGN_OR_RETURN(TpmKey ek, tpm.CreateEk(KeyAlg::kEccP256));
      VTM_ASSIGN_OR_RETURN(id->ek_public_, tpm.ReadPublic(ek));
    }
    // The host EK's manufacturer certificate (ECC first, where most tools look).
    auto cert = tpm.ReadNv(kEkCertEccIndex);
    if (!cert.ok()) cert = tpm.ReadNv(kEkCertRsaIndex);
    if (cert.ok()) {
      id->ek_cert_der_ = *cert;
    } else {
      LOG_WARNING << "the host TPM has no EK certificate at 0x01C0000A or 0x01C00002; verifiers cannot tie "
                     "this host's AK to a TPM manufacturer";
    }
    bool created = false;
    {
      VTM_ASSIGN_OR_RETURN(TpmKey srk, tpm.CreateSrk());
      VTM_ASSIGN_OR_RETURN(id->ak_, LoadOrCreateKeyFile(tpm, srk, KeyRole::kAttestation, dir, "ak", key_auth, &created));
    }
    VTM_ASSIGN_OR_RETURN(id->ak_public_, tpm.ReadPublic(id->ak_));
    if (!created) return OkStatus();
    // Prove, once, that the new AK sits in the TPM of this EK: only that TPM can activate a
    // credential made for the AK's name with the EK's public key.
    VTM_ASSIGN_OR_RETURN(SecretBytes challenge, RandomSecret(32));
    std::string secret(reinterpret_cast<const char*>(challenge.data()), challenge.size());
    TpmCredential cred;
    {
      VTM_ASSIGN_OR_RETURN(TpmKey ek_pub, tpm.LoadExternalPublic(id->ek_public_.tpm2b_public));
      VTM_ASSIGN_OR_RETURN(cred, tpm.MakeCredential(ek_pub, secret, id->ak_public_.name));
    }
    VTM_ASSIGN_OR_RETURN(TpmKey ek, tpm.CreateEk(KeyAlg::kEccP256));
    VTM_ASSIGN_OR_RETURN(SecretBytes got, tpm.ActivateCredential(id->ak_, ek, cred));
    if (got.size() != challenge.size() || CRYPTO_memcmp(got.data(), challenge.data(), got.size()) != 0) {
      (void)RemoveTree(ak_path);
      return Error(ErrorCode::kTpm, "host AK failed credential activation with the host EK");
    }
    LOG_INFO << "created host AK, bound to the host EK by credential activation";
    return OkStatus();
  });
  if (!loaded.ok()) return std::move(loaded).error();
  return id;
}

HostAttestationKey::~HostAttestationKey() { tpm_.DropKey(ak_); }

Result<std::pair<TpmAttestation, PcrValues>> HostAttestationKey::Quote(const PcrSelection& selection,
                                                                        const std::string& qualifying) {
  return tpm_.Run([&](Tpm& tpm) -> Result<std::pair<TpmAttestation, PcrValues>> {
    VTM_ASSIGN_OR_RETURN(TpmAttestation att, tpm.Quote(ak_, selection, qualifying));
    VTM_ASSIGN_OR_RETURN(PcrValues values, tpm.ReadPcrs(selection));
    return std::make_pair(std::move(att), std::move(values));
  });
}

Result<TpmAttestation> HostAttestationKey::CertifyInJob(Tpm& tpm, const TpmKey& object,
                                                        const std::string& qualifying) const {
  return tpm.Certify(object, ak_, qualifying);
}

Result<SecretBytes> HostAttestationKey::ActivateCredential(const TpmCredential& credential) {
  return tpm_.Run([&](Tpm& tpm) -> Result<SecretBytes> {
    VTM_ASSIGN_OR_RETURN(TpmKey ek, tpm.CreateEk(KeyAlg::kEccP256));
    return tpm.ActivateCredential(ak_, ek, credential);
  });
}

Result<TpmCredential> MakeCredentialOnHostTpm(HostTpmExecutor& executor, const std::string& ek_tpm2b_public,
                                              const std::string& secret, const std::string& object_name) {
  return executor.Run([&](Tpm& tpm) -> Result<TpmCredential> {
    VTM_ASSIGN_OR_RETURN(TpmKey ek, tpm.LoadExternalPublic(ek_tpm2b_public));
    return tpm.MakeCredential(ek, secret, object_name);
  });
}

}  // namespace vtm
