"""libvirt's qemu hook: records and port bindings from the domain XML libvirtd passes.

libvirtd runs `/etc/libvirt/hooks/qemu DOMAIN OPERATION SUBOP EXTRA` with the domain's
XML on stdin. For each `<interface>` on a bridge we serve (type 'bridge', or type
'network' through the bridge libvirt names in the live XML or an operator's mapping)
the hook writes one record: MAC, bridge, port (`<target dev>`, libvirt's `vnetN`),
the OpenStack uuid from `<uuid>`, the hostname from the domain's name, and the record
fields found in `<metadata>` under METADATA_NS (YAML or JSON, the import format).

Ids: the first served interface's record is the domain's id (`instance_id` from the
metadata, else the domain name); later interfaces get `<id>-nic<N>` (N = 1, 2, ...),
so the guest is answered on every NIC. Fields the hook does not set are kept from the
stored record (the hook merge-patches), so an orchestrator's user-data survives
restarts. A record is served only between the start that binds it to its tap and the
stop: `prepare` writes it parked, a start whose tap is missing or unnamed parks it,
and the stop parks it (or removes it, or leaves it bound to the gone link: `--on-stop`).
"""

from __future__ import annotations

import fnmatch
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from transparent_md.integrations.untrusted_xml import UntrustedXmlError, parse_untrusted
from transparent_md.store.record import DEEP_JSON_PROBLEM

# The namespace of our element in a domain's <metadata>; libvirt keeps one element per
# namespace URI (`virsh metadata DOMAIN URI --key tmd --set ...`).
METADATA_NS = "urn:transparent-md:metadata:1"
# A domain XML is a few KiB; large metadata (user-data) stays well under this.
MAX_XML_BYTES = 4 * 1024 * 1024
# Operations that (re)establish a running guest: bind. `reconnect`: libvirtd restarted.
START_OPERATIONS = frozenset({"prepare", "start", "started", "reconnect"})
# Of those, the ones before libvirt has made this start's taps: write the record parked.
BEFORE_TAPS = frozenset({"prepare"})
# Operations after which the guest's taps are gone: park (or remove, or keep).
STOP_OPERATIONS = frozenset({"stopped", "release"})
# unbind: park the records (kept, served to nobody); remove: delete them; keep: write
# nothing (the binding names the stopped VM's link, which never comes back: nobody).
ON_STOP_CHOICES = ("unbind", "remove", "keep")
# The suffix of records of a domain's second and later served interfaces.
NIC_SUFFIX = "-nic{index}"
# Fields the domain XML decides; metadata cannot move a record to another NIC.
XML_FIELDS = ("mac", "bridge", "port")
# Fields the hook decides from the operation: metadata cannot bind or un-park a record.
BINDING_FIELDS = ("port_ifindex", "parked")
# A domain name used as the hostname only if it is one (libvirt allows '_' and more).
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


class DomainError(ValueError):
    """The domain XML or its metadata cannot be used; the message is one line."""


@dataclass(frozen=True)
class Nic:
    mac: str
    bridge: str
    port: str | None  # None until libvirt has created the tap


@dataclass
class Domain:
    name: str
    uuid: str | None
    nics: list[Nic] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # why interfaces were left out

    @property
    def instance_id(self) -> str:
        given = self.metadata.get("instance_id") or self.metadata.get("instance-id")
        return str(given) if given else self.name

    def record_ids(self) -> list[str]:
        base = self.instance_id
        return [base if i == 0 else base + NIC_SUFFIX.format(index=i)
                for i in range(len(self.nics))]

    def patches(self, *, bind: bool,
                link_exists: Callable[[str], bool] = lambda _name: False,
                ) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Record id -> merge patch: metadata, then what the XML says (which wins), and
        one line for each record parked where a binding was asked for.

        `bind` (a start): a NIC whose tap exists (`link_exists`) is bound to it (the
        writer looks the link up) and served; one whose XML names no tap, or a tap
        that is not there, is parked. Without `bind` (prepare) every record is parked:
        the tap of this start does not exist yet, and an older one is not this VM's.
        """
        fields = {k: v for k, v in self.metadata.items()
                  if k not in ("instance_id", "instance-id", *XML_FIELDS, *BINDING_FIELDS)}
        patches = {}
        parked: list[str] = []
        for index, (record_id, nic) in enumerate(zip(self.record_ids(), self.nics,
                                                     strict=True)):
            patch: dict[str, Any] = dict(fields)
            if _HOSTNAME.match(self.name):
                patch.setdefault("hostname", self.name)
            if self.uuid:
                openstack = dict(patch.get("openstack") or {})
                openstack.setdefault("uuid", self.uuid)
                patch["openstack"] = openstack
            patch.update({"mac": nic.mac, "bridge": nic.bridge})
            if bind and nic.port is not None and link_exists(nic.port):
                patch.update({"port": nic.port, "parked": None})  # None: merge-patch removal
            else:
                patch["parked"] = True  # the port and link it had stay, and serve nobody
                if bind:
                    why = (f"its tap {nic.port} does not exist" if nic.port else
                           "the domain XML names no <target dev> for it")
                    parked.append(f"interface {index} ({nic.mac}): {why}: record "
                                  f"{record_id} parked (served to nobody) until a start "
                                  "binds it to its tap")
            patches[record_id] = patch
        return patches, parked


def parse_domain(xml_text: str | bytes, *, bridges: tuple[str, ...] = (),
                 networks: dict[str, str] | None = None) -> Domain:
    """The served NICs and metadata of a domain XML.

    `bridges`: globs of bridges to take (empty: every bridge). `networks`: libvirt
    network name -> bridge, for `type='network'` interfaces whose XML names none.
    """
    if isinstance(xml_text, str):
        xml_text = xml_text.encode()
    if len(xml_text) > MAX_XML_BYTES:
        raise DomainError(f"domain XML larger than {MAX_XML_BYTES} bytes")
    try:
        root = parse_untrusted(xml_text)
    except UntrustedXmlError as exc:
        raise DomainError(f"domain XML {exc}") from None
    if root.tag != "domain":
        raise DomainError(f"expected a <domain> document, got <{root.tag}>")
    name = (root.findtext("name") or "").strip()
    if not name:
        raise DomainError("domain XML has no <name>")
    domain = Domain(name=name, uuid=(root.findtext("uuid") or "").strip() or None)
    domain.metadata = _metadata(root)
    for index, iface in enumerate(root.findall("./devices/interface")):
        nic = _nic(iface, index, networks or {}, domain.skipped)
        if nic is None:
            continue
        if bridges and not any(fnmatch.fnmatchcase(nic.bridge, g) for g in bridges):
            domain.skipped.append(f"interface {index} ({nic.mac}): bridge {nic.bridge} is "
                                  "not one of --bridge")
            continue
        domain.nics.append(nic)
    return domain


def _nic(iface: ET.Element, index: int, networks: dict[str, str],
         skipped: list[str]) -> Nic | None:
    kind = iface.get("type")
    mac = iface.find("mac")
    source = iface.find("source")
    target = iface.find("target")
    if mac is None or not mac.get("address"):
        skipped.append(f"interface {index}: no <mac address> (libvirt adds one when it "
                       "defines the domain)")
        return None
    bridge = None
    if kind == "bridge" and source is not None:
        bridge = source.get("bridge")
    elif kind == "network" and source is not None:
        network = source.get("network")
        bridge = source.get("bridge") or networks.get(network or "")
        if not bridge:
            skipped.append(f"interface {index} ({mac.get('address')}): network "
                           f"{network!r} names no bridge; map it with --network "
                           f"{network}=BRIDGE")
            return None
    else:
        skipped.append(f"interface {index} ({mac.get('address')}): type {kind!r} is not on "
                       "a bridge")
        return None
    if not bridge:
        skipped.append(f"interface {index}: no <source bridge>")
        return None
    port = target.get("dev") if target is not None else None
    return Nic(mac=mac.get("address", "").lower(), bridge=bridge, port=port or None)


def _metadata(root: ET.Element) -> dict[str, Any]:
    element = None
    holder = root.find("metadata")
    if holder is not None:
        element = next((child for child in holder
                        if child.tag.startswith("{" + METADATA_NS + "}")), None)
    if element is None:
        return {}
    text = "".join(element.itertext())  # unstripped: a YAML block keeps its last newline
    if not text.strip():
        return {}
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise DomainError("metadata: YAML anchors and aliases are refused")
        value = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise DomainError("metadata under " + METADATA_NS + " is neither YAML nor JSON: "
                          + " ".join(str(exc).split())) from None
    except RecursionError:
        raise DomainError(f"metadata under {METADATA_NS}: {DEEP_JSON_PROBLEM}") from None
    if not isinstance(value, dict):
        raise DomainError(f"metadata under {METADATA_NS} must be a mapping of record "
                          "fields (the import format)")
    return value


__all__ = ["BEFORE_TAPS", "Domain", "DomainError", "METADATA_NS", "Nic", "ON_STOP_CHOICES",
           "START_OPERATIONS", "STOP_OPERATIONS", "parse_domain"]
