// A libvirt domain's XML as far as its vTPM goes: read the marker and the TPM backends, write
// the <tpm> device and the marker, rewrite socket paths for incoming migrations and restores.
#include <libxml/parser.h>
#include <libxml/tree.h>

#include <cstring>
#include <memory>
#include <mutex>

#include "manager.h"
#include "vtm/libvirt.h"

namespace vtm::libvirt {
namespace {

struct DocFree {
  void operator()(xmlDoc* d) const { xmlFreeDoc(d); }
};
using Doc = std::unique_ptr<xmlDoc, DocFree>;

const xmlChar* X(const char* s) { return reinterpret_cast<const xmlChar*>(s); }

bool Named(const xmlNode* n, const char* name) {
  return n != nullptr && n->type == XML_ELEMENT_NODE && std::strcmp(reinterpret_cast<const char*>(n->name), name) == 0;
}

// An element of libvirt's own schema (no namespace), as opposed to metadata of others.
bool IsLibvirt(const xmlNode* n, const char* name) { return Named(n, name) && n->ns == nullptr; }

std::vector<xmlNode*> Children(xmlNode* parent, const char* name) {
  std::vector<xmlNode*> out;
  for (xmlNode* c = parent == nullptr ? nullptr : parent->children; c != nullptr; c = c->next) {
    if (IsLibvirt(c, name)) out.push_back(c);
  }
  return out;
}

xmlNode* Child(xmlNode* parent, const char* name) {
  auto all = Children(parent, name);
  return all.empty() ? nullptr : all.front();
}

std::string Attr(xmlNode* n, const char* name) {
  xmlChar* v = xmlGetNoNsProp(n, X(name));
  if (v == nullptr) return "";
  std::string out(reinterpret_cast<const char*>(v));
  xmlFree(v);
  return out;
}

// The element's own text; entity references are skipped, never expanded.
std::string Text(xmlNode* n) {
  std::string out;
  for (xmlNode* c = n == nullptr ? nullptr : n->children; c != nullptr; c = c->next) {
    if ((c->type == XML_TEXT_NODE || c->type == XML_CDATA_SECTION_NODE) && c->content != nullptr) {
      out += reinterpret_cast<const char*>(c->content);
    }
  }
  out.erase(0, out.find_first_not_of(" \t\r\n"));
  out.erase(out.find_last_not_of(" \t\r\n") + 1);
  return out;
}

xmlNode* Marker(xmlNode* domain) {
  for (xmlNode* c = Child(domain, "metadata") ? Child(domain, "metadata")->children : nullptr; c != nullptr;
       c = c->next) {
    if (Named(c, kMetadataElement) && c->ns != nullptr && c->ns->href != nullptr &&
        std::strcmp(reinterpret_cast<const char*>(c->ns->href), kMetadataNamespace) == 0) {
      return c;
    }
  }
  return nullptr;
}

// The <source> of each <tpm><backend type='external'> with a unix socket.
std::vector<xmlNode*> ExternalSources(xmlNode* domain) {
  std::vector<xmlNode*> out;
  for (xmlNode* tpm : Children(Child(domain, "devices"), "tpm")) {
    for (xmlNode* backend : Children(tpm, "backend")) {
      if (Attr(backend, "type") != "external") continue;
      for (xmlNode* source : Children(backend, "source")) {
        if (Attr(source, "type") == "unix") out.push_back(source);
      }
    }
  }
  return out;
}

struct Parsed {
  Doc doc;
  xmlNode* domain = nullptr;
};

Result<Parsed> Parse(const std::string& xml) {
  static std::once_flag init;
  std::call_once(init, [] { xmlInitParser(); });
  if (xml.size() > size_t{16} * 1024 * 1024) return Error(ErrorCode::kInvalidArgument, "domain XML is over 16 MiB");
  xmlParserCtxt* ctxt = xmlNewParserCtxt();
  if (ctxt == nullptr) return Error(ErrorCode::kInternal, "libxml2 could not allocate a parser");
  // No network, no DTD, no entity substitution: a domain document needs none of them.
  Doc doc(xmlCtxtReadMemory(ctxt, xml.data(), static_cast<int>(xml.size()), "domain.xml", nullptr,
                            XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING));
  std::string why;
  if (!doc) {
    const xmlError* e = xmlCtxtGetLastError(ctxt);
    why = e != nullptr && e->message != nullptr ? e->message : "unknown error";
    while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
    why += e != nullptr ? " (line " + std::to_string(e->line) + ")" : "";
  }
  xmlFreeParserCtxt(ctxt);
  if (!doc) return Error(ErrorCode::kInvalidArgument, "the domain XML is not well-formed: " + why);
  xmlNode* root = xmlDocGetRootElement(doc.get());
  if (!IsLibvirt(root, "domain")) {
    return Error(ErrorCode::kInvalidArgument, "the XML is not a libvirt domain (its root element is not <domain>)");
  }
  return Parsed{std::move(doc), root};
}

Result<std::string> Serialize(const Parsed& p) {
  xmlBuffer* buf = xmlBufferCreate();
  if (buf == nullptr) return Error(ErrorCode::kInternal, "libxml2 could not allocate a buffer");
  std::string out;
  if (xmlNodeDump(buf, p.doc.get(), p.domain, 0, 0) >= 0) {
    out.assign(reinterpret_cast<const char*>(xmlBufferContent(buf)), static_cast<size_t>(xmlBufferLength(buf)));
  }
  xmlBufferFree(buf);
  if (out.empty()) return Error(ErrorCode::kInternal, "writing the domain XML failed");
  return out + "\n";
}

}  // namespace

Result<DomainVtpm> ReadDomain(const std::string& xml) {
  VTM_ASSIGN_OR_RETURN(Parsed p, Parse(xml));
  DomainVtpm d;
  d.name = Text(Child(p.domain, "name"));
  xmlNode* uuid = Child(p.domain, "uuid");
  if (uuid == nullptr) return Error(ErrorCode::kInvalidArgument, "the domain XML has no <uuid>");
  auto normalized = NormalizeUuid(Text(uuid));
  if (!normalized.ok()) return std::move(normalized).error().Context("the domain's <uuid>");
  d.uuid = *normalized;
  if (xmlNode* m = Marker(p.domain)) {
    d.marked = true;
    std::string create = Attr(m, "create");
    if (!create.empty() && create != "yes" && create != "no") {
      return Error(ErrorCode::kInvalidArgument, "<vtm:vtpm create='" + create + "'> must be 'yes' or 'no'");
    }
    d.create = create != "no";
    d.service = Attr(m, "service");
  }
  for (xmlNode* s : ExternalSources(p.domain)) d.sockets.push_back(Attr(s, "path"));
  d.partition = Text(Child(Child(p.domain, "resource"), "partition"));
  return d;
}

bool OptsIn(const DomainVtpm& domain, const std::string& run_dir) {
  if (domain.marked) return true;
  const std::string prefix = run_dir + (run_dir.ends_with('/') ? "" : "/") + "vms/";
  for (const auto& s : domain.sockets) {
    // A path with ".." could name a socket outside the run dir while looking like ours.
    if (s.starts_with(prefix) && s.find("/..") == std::string::npos) return true;
  }
  return false;
}

std::string TpmElement(const TpmSettings& s) {
  return "<tpm model='" + s.model + "'>\n  <backend type='external'>\n    <source type='unix' mode='connect' path='" +
         s.socket + "'/>\n  </backend>\n</tpm>\n";
}

std::string MetadataElement(const TpmSettings& s) {
  return "<" + std::string(kMetadataPrefix) + ":" + kMetadataElement + " xmlns:" + kMetadataPrefix + "='" +
         kMetadataNamespace + "' create='" + (s.create ? "yes" : "no") + "'" +
         (s.service.empty() ? "" : " service='" + s.service + "'") + "/>\n";
}

Result<std::string> PatchDomain(const std::string& xml, const TpmSettings& s) {
  if (s.model != "tpm-crb" && s.model != "tpm-tis") {
    return Error(ErrorCode::kInvalidArgument, "the TPM model must be tpm-crb or tpm-tis, not '" + s.model + "'");
  }
  if (s.socket.empty() || s.socket[0] != '/') {
    return Error(ErrorCode::kInvalidArgument, "the vTPM socket must be an absolute path");
  }
  if (!s.service.empty() && !ValidateVmName(s.service).ok()) {
    return Error(ErrorCode::kInvalidArgument, "service name '" + s.service + "' must be 1-64 letters, digits, '.', '_' or '-'");
  }
  VTM_ASSIGN_OR_RETURN(Parsed p, Parse(xml));
  xmlNode* devices = Child(p.domain, "devices");
  if (devices == nullptr) devices = xmlNewChild(p.domain, nullptr, X("devices"), nullptr);
  for (xmlNode* old : Children(devices, "tpm")) {
    xmlUnlinkNode(old);
    xmlFreeNode(old);
  }
  xmlNode* tpm = xmlNewChild(devices, nullptr, X("tpm"), nullptr);
  xmlNewProp(tpm, X("model"), X(s.model.c_str()));
  xmlNode* backend = xmlNewChild(tpm, nullptr, X("backend"), nullptr);
  xmlNewProp(backend, X("type"), X("external"));
  xmlNode* source = xmlNewChild(backend, nullptr, X("source"), nullptr);
  xmlNewProp(source, X("type"), X("unix"));
  xmlNewProp(source, X("mode"), X("connect"));
  xmlNewProp(source, X("path"), X(s.socket.c_str()));

  xmlNode* metadata = Child(p.domain, "metadata");
  if (metadata == nullptr) metadata = xmlNewChild(p.domain, nullptr, X("metadata"), nullptr);
  xmlNode* marker = Marker(p.domain);
  if (marker == nullptr) {
    marker = xmlNewChild(metadata, nullptr, X(kMetadataElement), nullptr);
    xmlSetNs(marker, xmlNewNs(marker, X(kMetadataNamespace), X(kMetadataPrefix)));
  }
  xmlSetProp(marker, X("create"), X(s.create ? "yes" : "no"));
  if (!s.service.empty()) xmlSetProp(marker, X("service"), X(s.service.c_str()));

  if (!s.partition.empty()) {
    xmlNode* resource = Child(p.domain, "resource");
    if (resource == nullptr) resource = xmlNewChild(p.domain, nullptr, X("resource"), nullptr);
    for (xmlNode* old : Children(resource, "partition")) {
      xmlUnlinkNode(old);
      xmlFreeNode(old);
    }
    xmlNewTextChild(resource, nullptr, X("partition"), X(s.partition.c_str()));
  }
  return Serialize(p);
}

Result<std::optional<std::string>> RewriteTpmSocket(const std::string& xml, const std::string& socket) {
  VTM_ASSIGN_OR_RETURN(Parsed p, Parse(xml));
  bool changed = false;
  for (xmlNode* source : ExternalSources(p.domain)) {
    if (Attr(source, "path") == socket) continue;
    xmlSetProp(source, X("path"), X(socket.c_str()));
    changed = true;
  }
  if (!changed) return std::optional<std::string>();
  VTM_ASSIGN_OR_RETURN(std::string out, Serialize(p));
  return std::optional<std::string>(std::move(out));
}

Result<std::set<std::string>> ParseDomainUuidList(const std::string& text) {
  std::set<std::string> out;
  size_t start = 0;
  int n = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    start = end + 1;
    ++n;
    line.erase(0, line.find_first_not_of(" \t\r"));
    line.erase(line.find_last_not_of(" \t\r") + 1);
    if (line.empty()) continue;
    auto uuid = NormalizeUuid(line);
    if (!uuid.ok()) {
      return Error(ErrorCode::kInvalidArgument, "line " + std::to_string(n) + " is not a domain UUID ('" +
                                                    line.substr(0, 64) + "'); give the output of `virsh list --all --uuid`");
    }
    out.insert(*uuid);
  }
  return out;
}

}  // namespace vtm::libvirt
