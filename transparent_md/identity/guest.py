"""Who asked: the guest behind one accepted connection."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Guest:
    """A guest as the datapath saw it on the wire.

    `bridge` and `port` are interface names on the hypervisor; `mac` is lower-case
    colon form ("52:54:00:12:34:56"); `ip` is dotted IPv4, or the compressed IPv6
    address of a guest that asked over IPv6 (link-local or not). The store matches
    instance records against these fields.

    `locked_elsewhere` is set when MAC locks are on and this guest's port does not hold
    its MAC's lock: another port asked with this MAC first and still exists (a guest
    copying a neighbour's MAC). The responder answers it nothing.
    """

    bridge: str
    port: str
    ifindex: int
    mac: str
    ip: str
    locked_elsewhere: bool = False
