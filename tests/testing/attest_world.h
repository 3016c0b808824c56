// A world for attestation tests and benchmarks: an swtpm as the host TPM (EK certified by a
// test manufacturer CA, AK, a host CA key certified by the AK), a second swtpm as one VM's
// vTPM (EK and AK certified by that host CA, plus a second AK), firmware/IMA/vtmd measurement
// logs really extended into the host PCRs and a firmware log into the vTPM's, and evidence
// built as vtmd would batch it. Header-only: only targets linking vtm_attest, vtm_ca and
// vtm_host_tpm include it. Not thread-safe.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "event_log_builder.h"
#include "test_env.h"
#include "vtm/event_log.h"
#include "vtm/hex.h"
#include "vtm/host_tpm.h"
#include "vtm/merkle.h"
#include "vtm/quote.h"
#include "vtm/tpm.h"
#include "vtm/tpm_structures.h"
#include "vtm/verifier.h"
#include "vtm/x509.h"

namespace vtm::attest::testing {

using vtm::testing::Sha1;
using vtm::testing::Sha256;

inline constexpr uint32_t kMeasurePcr = 15;
inline constexpr char kVm[] = "6b1c1d52-3c8e-4a59-9d7e-0f5a3b2c1d00";

template <typename T>
T Must(Result<T> r) {
  EXPECT_TRUE(r.ok()) << r.error().ToString();
  if (!r.ok()) std::abort();
  return std::move(r).value();
}

// A Signer whose key is a TPM signing key (the host CA key in the host TPM).
class TpmKeySigner : public ca::Signer {
 public:
  TpmKeySigner(Tpm& tpm, const TpmKey& key, std::string spki) : tpm_(tpm), key_(key), spki_(std::move(spki)) {}
  Result<std::string> SignDigest(const std::string& digest) override { return tpm_.SignDigest(key_, digest); }
  const std::string& PublicKeySpki() const override { return spki_; }

 private:
  Tpm& tpm_;
  const TpmKey& key_;
  std::string spki_;
};

// One simulated TPM with an EK (public only), an SRK and loaded keys.
struct SimTpm {
  std::unique_ptr<SimulatedHostTpm> sim;
  std::unique_ptr<Tpm> tpm;
  TpmKeyPublic ek;

  void Start(const std::string& dir) {
    sim = Must(SimulatedHostTpm::Start(dir));
    tpm = Must(Tpm::OpenTcti(sim->tcti()));
    TpmKey key = Must(tpm->CreateEk(KeyAlg::kEccP256));
    ek = Must(tpm->ReadPublic(key));
  }
  TpmKey Load(KeyRole role, TpmKeyPublic* pub) {
    TpmKey srk = Must(tpm->CreateSrk());
    TpmKeyBlob blob = Must(tpm->CreateKey(srk, role, SecretBytes()));
    TpmKey key = Must(tpm->LoadKey(srk, blob));
    *pub = Must(tpm->ReadPublic(key));
    return key;
  }
  void Extend(uint32_t pcr, const std::string& data) {
    ASSERT_TRUE(tpm->ExtendPcr("sha256", static_cast<int>(pcr), Sha256(data)).ok());
    ASSERT_TRUE(tpm->ExtendPcr("sha1", static_cast<int>(pcr), Sha1(data)).ok());
  }
  Quote MakeQuote(const TpmKey& ak, const std::string& selection, const std::string& extra) {
    PcrSelection sel = Must(PcrSelection::Parse(selection));
    TpmAttestation a = Must(tpm->Quote(ak, sel, extra));
    PcrValues values = Must(tpm->ReadPcrs(sel));
    PcrBank bank{TPM2_ALG_SHA256, {}};
    for (const auto& [pcr, digest] : values.digests) bank.values[static_cast<uint32_t>(pcr)] = digest;
    Quote q;
    q.set_attest(a.attest);
    q.set_signature(a.signature);
    q.set_pcr_values(Must(MarshalPcrValues({bank})));
    return q;
  }
};

struct AttestWorld {
  // Builds the host, the vTPM, their certificates and logs under dir.
  void Build(const std::string& dir) {
    dir_ = dir;
    now_ = std::time(nullptr);
    // A TPM manufacturer's CA.
    manufacturer_ = Must(ca::SoftwareSigner::Generate());
    ca::CaCertRequest mreq;
    mreq.common_name = "test TPM manufacturer CA";
    manufacturer_cert_ = Must(ca::CreateSelfSignedCaCertificate(*manufacturer_, mreq));

    // The host: EK certificate, AK, CA key certified by the AK, CA certificate.
    host_.Start(dir_ + "/host-tpm");
    ca::EkCertRequest ekreq;
    ekreq.ek_spki_der = host_.ek.spki_der;
    ekreq.tpm_manufacturer = "id:53575450";
    ekreq.tpm_model = "swtpm";
    ekreq.tpm_version = "id:20191023";
    ekreq.serial = 7;
    host_ek_cert_ = Must(ca::IssueEkCertificate(*manufacturer_, manufacturer_cert_, ekreq));
    host_ak_ = host_.Load(KeyRole::kAttestation, &host_ak_pub_);
    host_ca_key_ = host_.Load(KeyRole::kSigning, &host_ca_pub_);
    TpmAttestation certify = Must(host_.tpm->Certify(host_ca_key_, host_ak_, ""));
    host_ca_signer_ = std::make_unique<TpmKeySigner>(*host_.tpm, host_ca_key_, host_ca_pub_.spki_der);
    ca::CaCertRequest careq;
    careq.common_name = "vtm host CA test-host";
    careq.evidence = {host_ca_pub_.tpm2b_public, certify.attest, certify.signature, host_ak_pub_.tpm2b_public};
    host_ca_cert_ = Must(ca::CreateSelfSignedCaCertificate(*host_ca_signer_, careq));

    // The vTPM of one VM: EK and AK with certificates from the host CA, and a second AK (for
    // "a quote from another vTPM").
    vtpm_.Start(dir_ + "/vtpm");
    vtpm_ak_ = vtpm_.Load(KeyRole::kAttestation, &vtpm_ak_pub_);
    other_ak_ = vtpm_.Load(KeyRole::kAttestation, &other_ak_pub_);
    vtpm_ek_cert_ = IssueVtpmEkCert(*host_ca_signer_, host_ca_cert_);
    vtpm_ak_cert_ = IssueVtpmAkCert(*host_ca_signer_, host_ca_cert_);

    // Host PCRs: firmware (0-7), IMA (10), vtmd's measurement log (15).
    for (const auto& e : vtm::testing::TypicalFirmwareEvents()) host_.Extend(e.pcr, e.data);
    uefi_log_ = vtm::testing::BuildCryptoAgileLog(vtm::testing::TypicalFirmwareEvents());
    ima_log_ = vtm::testing::BuildImaNgLog({{"/usr/sbin/vtmd", "vtmd"}, {"/usr/bin/swtpm", "swtpm"}});
    auto ima = Must(ParseImaLog(ima_log_));
    for (const ImaEntry& e : ima) {
      ASSERT_TRUE(host_.tpm->ExtendPcr("sha1", 10, e.template_hash).ok());
      ASSERT_TRUE(host_.tpm->ExtendPcr("sha256", 10, Sha256(e.template_data)).ok());
    }
    mlog_.set_version(1);
    mlog_.set_pcr(kMeasurePcr);
    mlog_.set_boot_id("boot-1");
    VtmdStart start;
    start.set_vtmd_sha256(Sha256("vtmd binary"));
    start.set_boot_id("boot-1");
    InstanceLaunch launch;
    launch.set_vm_uuid(kVm);
    launch.set_swtpm_sha256(Sha256("swtpm binary"));
    launch.set_vtm_instance_sha256(Sha256("vtm-instance binary"));
    launch.set_ek_name(vtpm_.ek.name);
    launch.set_ak_name(vtpm_ak_pub_.name);
    InstanceLaunch other_vm;
    other_vm.set_vm_uuid("00000000-0000-0000-0000-000000000001");
    const std::vector<std::pair<MeasurementType, std::string>> entries = {
        {MEASUREMENT_TYPE_VTMD_START, start.SerializeAsString()},
        {MEASUREMENT_TYPE_INSTANCE_LAUNCH, other_vm.SerializeAsString()},
        {MEASUREMENT_TYPE_INSTANCE_LAUNCH, launch.SerializeAsString()}};
    for (size_t i = 0; i < entries.size(); ++i) {
      MeasurementEvent* e = mlog_.add_events();
      e->set_sequence(i);
      e->set_pcr(kMeasurePcr);
      e->set_type(entries[i].first);
      e->set_digest(Sha256(entries[i].second));
      if (i != 1) e->set_event_data(entries[i].second);  // another tenant's entry: digest only
      ASSERT_TRUE(host_.tpm->ExtendPcr("sha256", kMeasurePcr, e->digest()).ok());
    }
    // Guest PCRs: its firmware log.
    for (const auto& e : vtm::testing::TypicalFirmwareEvents()) vtpm_.Extend(e.pcr, e.data);
    guest_log_ = vtm::testing::BuildCryptoAgileLog(vtm::testing::TypicalFirmwareEvents());

    nonce_ = Must(IssueNonce(now_));
    policy_ = BasePolicy();
  }

  // unprovisioned: as vtmd's issue_ek_cert request issues it (swtpm_setup's certificate tool).
  std::string IssueVtpmEkCert(ca::Signer& signer, const std::string& issuer, bool unprovisioned = false) {
    ca::EkCertRequest req;
    req.unprovisioned_key = unprovisioned;
    req.ek_spki_der = vtpm_.ek.spki_der;
    req.tpm_manufacturer = "id:00001014";
    req.tpm_model = "swtpm";
    req.tpm_version = "id:20191023";
    req.serial = 11;
    return Must(ca::IssueEkCertificate(signer, issuer, req));
  }
  std::string IssueVtpmAkCert(ca::Signer& signer, const std::string& issuer) {
    ca::IdentityCertRequest req;
    req.spki_der = vtpm_ak_pub_.spki_der;
    req.vm_uuid = kVm;
    req.attestation_key = true;
    req.serial = 12;
    return Must(ca::IssueIdentityCertificate(signer, issuer, req));
  }

  AttestationPolicy BasePolicy() {
    AttestationPolicy p;
    p.set_version(1);
    p.add_host_ek_ca_pem(ca::DerToPem(manufacturer_cert_));
    p.add_activated_host_ak_names(HexEncode(host_ak_pub_.name));
    p.set_accept_simulated_host_tpm(true);
    p.set_measurement_pcr(kMeasurePcr);
    p.add_allowed_vtmd_sha256(HexEncode(Sha256("vtmd binary")));
    p.add_allowed_swtpm_sha256(HexEncode(Sha256("swtpm binary")));
    p.add_allowed_vtm_instance_sha256(HexEncode(Sha256("vtm-instance binary")));
    PcrValues host0 = Must(host_.tpm->ReadPcrs(Must(PcrSelection::Parse("sha256:0"))));
    PcrReference* h = p.add_host_pcrs();
    h->set_pcr(0);
    h->add_values(HexEncode(host0.digests[0]));
    PcrValues guest0 = Must(vtpm_.tpm->ReadPcrs(Must(PcrSelection::Parse("sha256:0"))));
    PcrReference* g = p.add_guest_pcrs();
    g->set_pcr(0);
    g->add_values(HexEncode(guest0.digests[0]));
    return p;
  }

  HostIdentity Identity() {
    HostIdentity id;
    id.set_ek_certificate(host_ek_cert_);
    id.set_ek_public(host_.ek.tpm2b_public);
    id.set_ak_public(host_ak_pub_.tpm2b_public);
    id.set_ca_certificate(host_ca_cert_);
    id.set_host_name("test-host");
    id.set_simulated_host_tpm(true);
    return id;
  }

  // Deep evidence as vtmd would batch it: three requests, this one at index 1.
  DeepEvidence MakeDeep(const TpmKey& guest_signer = TpmKey()) {
    DeepEvidence d;
    d.set_version(1);
    const TpmKey& signer = guest_signer.valid() ? guest_signer : vtpm_ak_;
    *d.mutable_guest_quote() = vtpm_.MakeQuote(signer, "sha256:0,1,2,3,4,5,6,7,10", nonce_);
    d.set_guest_event_log(guest_log_);
    VtpmIdentity* v = d.mutable_vtpm();
    v->set_vm_uuid(kVm);
    v->set_ek_certificate(vtpm_ek_cert_);
    v->set_ak_certificate(vtpm_ak_cert_);
    v->set_ak_public(vtpm_ak_pub_.tpm2b_public);
    v->set_ek_public(vtpm_.ek.tpm2b_public);
    const std::string leaf =
        DeepLeaf(nonce_, kVm, vtpm_.ek.name, vtpm_ak_pub_.name, d.guest_quote().attest());
    FillHost(d.mutable_host(), {HostLeaf("someone"), leaf, HostLeaf("someone else")}, 1);
    return d;
  }

  HostEvidence MakeHost() {
    HostEvidence h;
    FillHost(&h, {HostLeaf(nonce_), HostLeaf("x")}, 0);
    return h;
  }

  void FillHost(HostEvidence* h, const std::vector<std::string>& leaves, uint64_t index) {
    MerkleTree tree = Must(MerkleTree::Build(leaves));
    h->set_version(1);
    h->set_nonce(nonce_);
    *h->mutable_host_quote() =
        host_.MakeQuote(host_ak_, "sha256:0,1,2,3,4,5,6,7,10," + std::to_string(kMeasurePcr), tree.Root());
    *h->mutable_proof() = Must(tree.Proof(index));
    h->set_uefi_event_log(uefi_log_);
    h->set_ima_log(ima_log_);
    *h->mutable_measurement_log() = mlog_;
    *h->mutable_host() = Identity();
  }

  std::string dir_;
  std::time_t now_ = 0;
  std::unique_ptr<ca::SoftwareSigner> manufacturer_;
  std::string manufacturer_cert_;
  SimTpm host_, vtpm_;
  TpmKey host_ak_, host_ca_key_, vtpm_ak_, other_ak_;
  TpmKeyPublic host_ak_pub_, host_ca_pub_, vtpm_ak_pub_, other_ak_pub_;
  std::unique_ptr<TpmKeySigner> host_ca_signer_;
  std::string host_ek_cert_, host_ca_cert_, vtpm_ek_cert_, vtpm_ak_cert_;
  std::string uefi_log_, ima_log_, guest_log_;
  MeasurementLog mlog_;
  std::string nonce_;
  AttestationPolicy policy_;
};

}  // namespace vtm::attest::testing
