"""tc clsact attachment that owns exactly one filter per hook and touches no other.

Our filters sit at a fixed priority with a fixed handle. Attaching uses `replace`, so a
restart after a crash takes over its own old filter instead of adding a second one;
detaching deletes that priority/handle only, so foreign filters on the port survive.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

INGRESS_PARENT = 0xFFFFFFF2
TCA_BPF_ID = 11  # linux/pkt_cls.h: the attached program's id
NLA_HEADER_LEN = 4  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
# "tmd" in spirit: any value no other tool is likely to pick.
DEFAULT_HANDLE = 0x7D0
DEFAULT_PRIORITY = 10


@dataclass(frozen=True)
class FilterPosition:
    """Where our filter lives on every hook: priority and handle."""

    priority: int = DEFAULT_PRIORITY
    handle: int = DEFAULT_HANDLE


def ensure_clsact(ipr: IPRoute, ifindex: int) -> None:
    try:
        ipr.tc("add", "clsact", index=ifindex)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def attach(
    ipr: IPRoute, ifindex: int, prog_fd: int, prog_name: str, position: FilterPosition,
    parent: int = INGRESS_PARENT,
) -> None:
    """Attach (or take over) our direct-action filter on one hook."""
    ensure_clsact(ipr, ifindex)
    ipr.tc(
        "replace-filter", "bpf", index=ifindex, handle=position.handle, prio=position.priority,
        fd=prog_fd, name=prog_name, parent=parent, classid=1, direct_action=True,
    )


def detach(ipr: IPRoute, ifindex: int, position: FilterPosition,
           parent: int = INGRESS_PARENT) -> bool:
    """Delete our filter; False when it (or the device) is already gone."""
    try:
        ipr.tc("del-filter", "bpf", index=ifindex, handle=position.handle, prio=position.priority,
               parent=parent)
    except NetlinkError as exc:
        if exc.code in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            return False
        raise
    return True


def our_filter_ids(ipr: IPRoute, ifindex: int, position: FilterPosition,
                   parent: int = INGRESS_PARENT) -> list[int]:
    """BPF program ids of the bpf filters at our priority/handle on one hook (normally one).

    Empty when the filter is gone (deleted by hand, or the device is gone).
    """
    try:
        filters = ipr.get_filters(index=ifindex, parent=parent)
    except NetlinkError as exc:
        if exc.code in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            return []
        raise
    ids = []
    for msg in filters:
        # tcmsg.info packs (priority << 16 | protocol); the handle is the filter's own.
        if (msg.get_attr("TCA_KIND") == "bpf" and msg["handle"] == position.handle
                and msg["info"] >> 16 == position.priority):
            ids.append(_bpf_prog_id(msg.get_attr("TCA_OPTIONS")))
    return ids


def _bpf_prog_id(options) -> int:
    """TCA_BPF_ID from a bpf filter's options; 0 if absent.

    pyroute2 0.9 does not decode TCA_BPF_ID (it shows as UNKNOWN), so the attribute is
    read from the raw netlink buffer: a 4-byte header (length, type), then the u32.
    """
    if options is None:
        return 0
    for attr in options["attrs"]:
        raw = attr[1]
        data = getattr(raw, "data", None)
        if data is None:
            continue
        length, kind = struct.unpack_from("=HH", data, raw.offset)
        if kind == TCA_BPF_ID and length >= NLA_HEADER_LEN + 4:
            return struct.unpack_from("=I", data, raw.offset + NLA_HEADER_LEN)[0]
    return 0
