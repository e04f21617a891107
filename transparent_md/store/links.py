"""A port binding names a link: the port's name and its ifindex, resolved when written.

Linux gives each new link of a network namespace the next ifindex and does not hand a
freed one out again until the counter wraps, so a tap deleted and created again under
the same name (libvirt reuses `vnetN`) is another link. The datapath reports the
ifindex of the port that asked (`Guest.ifindex`) and `policy.accepts` compares both,
so a binding written for one link never serves the next link of that name.

The link is looked up where the binding is written, in that process's network
namespace: the admin API in the daemon's, `instance add/update/import/apply/bind` and
the hooks with `--store` in their own (on a hypervisor, the same one). A binding is
never made for a link that may appear later under that name: a port that does not
exist when the binding is written is refused by the verbs that bind (`instance bind`,
`PUT .../binding`: NO_SUCH_LINK), and parks the record written by the others (add,
update, import, apply, PUT, PATCH, the libvirt hook), which say so (PARKED_NO_LINK).
"""

from __future__ import annotations

import dataclasses
import socket

from transparent_md.store.record import Instance, RecordError

NO_SUCH_LINK = (
    "no link named {port!r} in this network namespace: a port binding names the "
    "link that has the name when it is written, never one that may take it later; bind "
    "the record when the VM's port exists (the VM manager's start hook, instance bind)")


PARKED_NO_LINK = (
    "record {id}: no link named {port!r} in this network namespace: parked (served to "
    "nobody) until it is bound to its VM's port (instance bind, the VM manager's start "
    "hook)")


def link_index(name: str) -> int | None:
    """The ifindex of the link called `name` in this network namespace, or None."""
    try:
        return socket.if_nametoindex(name)
    except (OSError, ValueError):
        return None


def bind_link(record: Instance, kept: Instance | None = None, *,
              park_missing: bool = False) -> Instance:
    """`record` with its port binding naming a link.

    A record that names no port, is parked, or names its link already is returned as
    it is. One whose `kept` version (the stored record it replaces) has the same port
    keeps that link: writing the same record again never moves a binding to a link that
    took the name since. Otherwise the port is looked up now; if it is not there, the
    record is parked (`park_missing`) or refused (RecordError).
    """
    if record.port is None or record.parked or record.port_ifindex is not None:
        return record
    if kept is not None and kept.port == record.port and kept.port_ifindex is not None:
        return dataclasses.replace(record, port_ifindex=kept.port_ifindex)
    index = link_index(record.port)
    if index is None:
        if park_missing:
            return dataclasses.replace(record, parked=True)
        raise RecordError(record.instance_id, "port",
                          NO_SUCH_LINK.format(port=record.port))
    return dataclasses.replace(record, port_ifindex=index)


def bind_links(records: list[Instance], kept: dict[str, Instance]
               ) -> tuple[list[Instance], list[str]]:
    """`bind_link` for each record of a file (kept: id -> stored record), parking those
    whose port is missing; returns the records and a warning for each parked one."""
    bound: list[Instance] = []
    warnings: list[str] = []
    for record in records:
        new = bind_link(record, kept.get(record.instance_id), park_missing=True)
        if new.parked and not record.parked:
            warnings.append(parked_warning(record))
        bound.append(new)
    return bound, warnings


def parked_warning(record: Instance) -> str:
    return PARKED_NO_LINK.format(id=record.instance_id, port=record.port)


__all__ = ["NO_SUCH_LINK", "PARKED_NO_LINK", "bind_link", "bind_links", "link_index",
           "parked_warning"]
