// libvirt's files as vtm reads and writes them: qemu.conf's QEMU user, the vTPM parts of a
// domain's XML (marker, <tpm> backend, patch and rewrite), `virsh list --uuid` output.
#include <gtest/gtest.h>

#include "test_env.h"
#include "vtm/fs.h"
#include "vtm/libvirt.h"

namespace vtm::libvirt {
namespace {

constexpr const char* kUuid = "6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb";

std::string Domain(const std::string& devices, const std::string& metadata = "") {
  return std::string("<domain type='qemu'>\n  <name>web1</name>\n  <uuid>6F1B2E6C-0A1B-4C2D-8E3F-00112233AABB</uuid>\n") +
         "  <memory unit='KiB'>262144</memory>\n" + metadata + "  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n" +
         devices + "  </devices>\n</domain>\n";
}

constexpr const char* kExternal =
    "<tpm model='tpm-crb'><backend type='external'><source type='unix' mode='connect' "
    "path='/run/vtm/vms/6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb/tpm.sock'/></backend></tpm>\n";

TEST(QemuConfTest, FindsTheUserSettingAsLibvirtReadsIt) {
  // Debian ships the setting commented out.
  auto debian = ParseQemuConfUser("# Some comment\n#user = \"libvirt-qemu\"\n#group = \"libvirt-qemu\"\n");
  ASSERT_TRUE(debian.ok());
  EXPECT_FALSE(debian->has_value());
  auto set = ParseQemuConfUser("user_xattr = 1\n  user = \"qemu\"   # who runs QEMU\ngroup = \"kvm\"\nuser='+64055'\n");
  ASSERT_TRUE(set.ok()) << set.error().message();
  EXPECT_EQ(**set, "+64055");  // the last assignment wins
  auto unquoted = ParseQemuConfUser("\nuser = qemu\n");
  ASSERT_FALSE(unquoted.ok());
  EXPECT_NE(unquoted.error().message().find("line 2"), std::string::npos) << unquoted.error().message();
  EXPECT_FALSE(ParseQemuConfUser("user = \"qemu\n").ok());
  EXPECT_FALSE(ParseQemuConfUser("user = \"qemu\" junk\n").ok());
}

TEST(QemuConfTest, DetectionPrefersQemuConfThenLibvirtQemuThenRoot) {
  vtm::testing::TempDir dir;
  const std::string conf = dir.path() + "/qemu.conf";
  auto everyone = [](const std::string&) { return true; };
  auto nobody = [](const std::string&) { return false; };

  auto missing = DetectQemuUser(conf, everyone);
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(missing->user, "libvirt-qemu");
  auto bare = DetectQemuUser(conf, nobody);
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(bare->user, "root");

  ASSERT_TRUE(WriteFileAtomic(conf, "#user = \"libvirt-qemu\"\n", 0644).ok());
  EXPECT_EQ(DetectQemuUser(conf, everyone)->user, "libvirt-qemu");
  ASSERT_TRUE(WriteFileAtomic(conf, "user = \"qemu\"\n", 0644).ok());
  auto configured = DetectQemuUser(conf, everyone);
  ASSERT_TRUE(configured.ok());
  EXPECT_EQ(configured->user, "qemu");
  EXPECT_NE(configured->source.find(conf), std::string::npos);
  ASSERT_TRUE(WriteFileAtomic(conf, "user = qemu\n", 0644).ok());
  auto broken = DetectQemuUser(conf, everyone);
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.error().message().find(conf), std::string::npos);
}

TEST(QemuConfTest, ResolvesNamesAndLibvirtsNumericForm) {
  EXPECT_EQ(ResolveQemuUser("root")->uid, 0u);
  EXPECT_EQ(ResolveQemuUser("+0")->uid, 0u);
  EXPECT_EQ(ResolveQemuUser("+65534")->uid, 65534u);  // nobody, on every Debian system
  EXPECT_EQ(ResolveQemuUser("nobody")->gid, 65534u);
  auto missing = ResolveQemuUser("no-such-qemu-user");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message().find("does not exist"), std::string::npos);
  EXPECT_FALSE(ResolveQemuUser("+").ok());
  EXPECT_FALSE(ResolveQemuUser("+12x").ok());
}

TEST(DomainXmlTest, ReadsMarkerAndExternalBackends) {
  auto plain = ReadDomain(Domain(""));
  ASSERT_TRUE(plain.ok()) << plain.error().message();
  EXPECT_EQ(plain->uuid, kUuid);  // lower-cased
  EXPECT_EQ(plain->name, "web1");
  EXPECT_FALSE(plain->marked);
  EXPECT_TRUE(plain->sockets.empty());
  EXPECT_FALSE(OptsIn(*plain, "/run/vtm"));

  auto by_path = ReadDomain(Domain(kExternal));
  ASSERT_TRUE(by_path.ok());
  ASSERT_EQ(by_path->sockets.size(), 1u);
  EXPECT_TRUE(OptsIn(*by_path, "/run/vtm"));
  EXPECT_TRUE(OptsIn(*by_path, "/run/vtm/"));
  EXPECT_FALSE(OptsIn(*by_path, "/srv/other"));

  auto escaping = ReadDomain(Domain(
      "<tpm model='tpm-crb'><backend type='external'><source type='unix' path='/run/vtm/vms/../../x.sock'/></backend></tpm>"));
  ASSERT_TRUE(escaping.ok());
  EXPECT_FALSE(OptsIn(*escaping, "/run/vtm"));

  // libvirt's own swtpm backend is not ours.
  auto emulator = ReadDomain(Domain("<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>"));
  ASSERT_TRUE(emulator.ok());
  EXPECT_TRUE(emulator->sockets.empty());

  auto marked = ReadDomain(Domain("", "  <metadata><other:x xmlns:other='urn:other'/><vtm:vtpm xmlns:vtm='https://vtm.example/ns/1' "
                                      "create='no' service='shop'/></metadata>\n"));
  ASSERT_TRUE(marked.ok()) << marked.error().message();
  EXPECT_TRUE(marked->marked);
  EXPECT_FALSE(marked->create);
  EXPECT_EQ(marked->service, "shop");
  EXPECT_TRUE(OptsIn(*marked, "/run/vtm"));
  // The element name alone, in another namespace, is not the marker.
  auto foreign = ReadDomain(Domain("", "<metadata><x:vtpm xmlns:x='urn:not-vtm'/></metadata>"));
  ASSERT_TRUE(foreign.ok());
  EXPECT_FALSE(foreign->marked);
}

TEST(DomainXmlTest, BadDocumentsGiveErrorsThatSayWhy) {
  auto broken = ReadDomain("<domain><name>x</name>");
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.error().message().find("not well-formed"), std::string::npos) << broken.error().message();
  auto other = ReadDomain("<network><uuid>6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb</uuid></network>");
  ASSERT_FALSE(other.ok());
  EXPECT_NE(other.error().message().find("not a libvirt domain"), std::string::npos);
  auto no_uuid = ReadDomain("<domain><name>x</name></domain>");
  ASSERT_FALSE(no_uuid.ok());
  EXPECT_NE(no_uuid.error().message().find("<uuid>"), std::string::npos);
  auto bad_uuid = ReadDomain("<domain><uuid>../../etc</uuid></domain>");
  ASSERT_FALSE(bad_uuid.ok());
  auto bad_create = ReadDomain(Domain("", "<metadata><vtm:vtpm xmlns:vtm='https://vtm.example/ns/1' create='maybe'/></metadata>"));
  ASSERT_FALSE(bad_create.ok());
  EXPECT_NE(bad_create.error().message().find("'yes' or 'no'"), std::string::npos);
}

TEST(DomainXmlTest, EntitiesAreNeitherExpandedNorFetched) {
  // An external entity must not pull a host file into the name, nor a billion laughs blow up.
  auto xxe = ReadDomain("<?xml version='1.0'?><!DOCTYPE domain [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>"
                        "<domain><name>&x;</name><uuid>6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb</uuid></domain>");
  if (xxe.ok()) {
    EXPECT_EQ(xxe->name.find("root:"), std::string::npos);
  }
  const std::string laughs = "<?xml version='1.0'?><!DOCTYPE domain [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;'>"
           "<!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;'><!ENTITY d '&c;&c;&c;&c;&c;&c;&c;&c;'>"
           "<!ENTITY e '&d;&d;&d;&d;&d;&d;&d;&d;'><!ENTITY f '&e;&e;&e;&e;&e;&e;&e;&e;'>"
           "<!ENTITY g '&f;&f;&f;&f;&f;&f;&f;&f;'><!ENTITY h '&g;&g;&g;&g;&g;&g;&g;&g;'>]>"
           "<domain><name>&h;</name><uuid>6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb</uuid></domain>";
  auto bomb = ReadDomain(laughs);
  if (bomb.ok()) {
    EXPECT_LT(bomb->name.size(), 1000u);
  }
}

TEST(DomainXmlTest, PatchPointsTheTpmAtTheVtpmAndKeepsEverythingElse) {
  TpmSettings s;
  s.socket = "/run/vtm/vms/6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb/tpm.sock";
  s.service = "shop";
  s.partition = "/machine/vtm6f1b2e6c0a1b4c2d8e3f00112233aabb";
  const std::string before =
      Domain("    <tpm model='tpm-tis'><backend type='emulator' version='2.0'/></tpm>\n    <disk type='file'/>\n",
             "  <metadata><other:x xmlns:other='urn:other'>keep</other:x></metadata>\n");
  auto patched = PatchDomain(before, s);
  ASSERT_TRUE(patched.ok()) << patched.error().message();
  auto d = ReadDomain(*patched);
  ASSERT_TRUE(d.ok()) << *patched;
  EXPECT_TRUE(d->marked);
  EXPECT_TRUE(d->create);
  EXPECT_EQ(d->service, "shop");
  ASSERT_EQ(d->sockets.size(), 1u) << *patched;
  EXPECT_EQ(d->sockets[0], s.socket);
  EXPECT_EQ(d->partition, s.partition);
  EXPECT_EQ(patched->find("type=\"emulator\""), std::string::npos) << *patched;
  EXPECT_NE(patched->find("tpm-crb"), std::string::npos);
  EXPECT_NE(patched->find("<disk type=\"file\"/>"), std::string::npos) << *patched;
  EXPECT_NE(patched->find("keep"), std::string::npos) << *patched;
  EXPECT_NE(patched->find("262144"), std::string::npos);
  // Patching again changes nothing more.
  auto again = PatchDomain(*patched, s);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *patched);
  // Without <metadata> or <devices> they are added.
  auto bare = PatchDomain("<domain><uuid>6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb</uuid></domain>", s);
  ASSERT_TRUE(bare.ok());
  EXPECT_TRUE(ReadDomain(*bare)->marked);
  EXPECT_EQ(ReadDomain(*bare)->sockets.size(), 1u);
  // A partition the operator set is replaced: the vTPM recognizes its QEMU only by its own.
  auto moved = PatchDomain(
      "<domain><uuid>6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb</uuid><resource><partition>/machine/"
      "other</partition></resource></domain>",
      s);
  ASSERT_TRUE(moved.ok());
  EXPECT_EQ(ReadDomain(*moved)->partition, s.partition);
  EXPECT_EQ(moved->find("/machine/other"), std::string::npos) << *moved;

  s.model = "tpm-spapr";
  EXPECT_FALSE(PatchDomain(before, s).ok());
  s.model = "tpm-crb";
  s.service = "a b";
  EXPECT_FALSE(PatchDomain(before, s).ok());
  // The printed snippets are what PatchDomain inserts.
  s.service = "shop";
  EXPECT_NE(TpmElement(s).find(s.socket), std::string::npos);
  EXPECT_NE(MetadataElement(s).find(kMetadataNamespace), std::string::npos);
  auto from_snippets = ReadDomain("<domain><uuid>" + std::string(kUuid) + "</uuid><metadata>" + MetadataElement(s) +
                                  "</metadata><devices>" + TpmElement(s) + "</devices></domain>");
  ASSERT_TRUE(from_snippets.ok()) << from_snippets.error().message();
  EXPECT_TRUE(from_snippets->marked);
  EXPECT_EQ(from_snippets->sockets, std::vector<std::string>{s.socket});
}

TEST(DomainXmlTest, RewriteChangesOnlyWhatDiffers) {
  const std::string xml = Domain(kExternal);
  auto same = RewriteTpmSocket(xml, "/run/vtm/vms/6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb/tpm.sock");
  ASSERT_TRUE(same.ok());
  EXPECT_FALSE(same->has_value());
  auto moved = RewriteTpmSocket(xml, "/srv/vtm-b/vms/6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb/tpm.sock");
  ASSERT_TRUE(moved.ok());
  ASSERT_TRUE(moved->has_value());
  auto d = ReadDomain(**moved);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->sockets, std::vector<std::string>{"/srv/vtm-b/vms/6f1b2e6c-0a1b-4c2d-8e3f-00112233aabb/tpm.sock"});
  EXPECT_NE((*moved)->find("/usr/bin/qemu-system-x86_64"), std::string::npos);
}

TEST(DomainUuidListTest, AcceptsVirshOutputAndRefusesAnythingElse) {
  auto list = ParseDomainUuidList("6F1B2E6C-0A1B-4C2D-8E3F-00112233AABB\n\n00000000-0000-4000-8000-000000000001\n\n");
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 2u);
  EXPECT_TRUE(list->count(kUuid));
  auto empty = ParseDomainUuidList("\n");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
  auto error = ParseDomainUuidList("error: failed to connect to the hypervisor\n");
  ASSERT_FALSE(error.ok());
  EXPECT_NE(error.error().message().find("line 1"), std::string::npos);
}

}  // namespace
}  // namespace vtm::libvirt
