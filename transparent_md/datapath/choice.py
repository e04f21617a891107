"""`run --datapath tc|raw|auto`: which datapath runs, and why.

`auto` runs tc when a program can be compiled and attached here, else raw: it tries
the tc datapath and, when that fails because no BPF program can be had (no bcc, no
kernel headers, no bpf(2), no BPF filesystem, a kernel or policy that refuses the
attach), rolls it back and starts the raw-socket datapath with the reason. Any other
error (a missing bridge, a port served by another daemon) fails the start as it would
with either datapath.
"""

from __future__ import annotations

import logging

from transparent_md.datapath.datapath import Datapath, DatapathConfig, TcUnavailable

log = logging.getLogger(__name__)

DATAPATHS = ("tc", "raw", "auto")
DEFAULT_DATAPATH = "auto"
DATAPATH_HELP = ("how guests' frames are caught: 'tc' (eBPF programs on the ports; needs "
                 "bcc, LLVM and kernel headers), 'raw' (packet sockets and an nftables "
                 "bridge table; no BPF at all, more CPU per request), or 'auto' (tc when a "
                 f"program can be compiled and attached here, else raw; default "
                 f"{DEFAULT_DATAPATH})")


def _raw(config: DatapathConfig) -> Datapath:
    from transparent_md.datapath.raw.datapath import RawDatapath

    return RawDatapath(config)


def planned(config: DatapathConfig) -> Datapath:
    """The datapath object before start (the daemon's status until then)."""
    return _raw(config) if config.datapath == "raw" else Datapath(config)


def start(config: DatapathConfig) -> Datapath:
    """Start the datapath `config.datapath` asks for; returns it running."""
    if config.datapath == "raw":
        datapath = _raw(config)
        datapath.reason = "--datapath raw"
    elif config.datapath == "tc":
        datapath = Datapath(config)
        datapath.reason = "--datapath tc"
    else:
        datapath = Datapath(config)
        try:
            datapath.start()
        except TcUnavailable as exc:
            datapath = _raw(config)
            datapath.reason = f"auto: no tc program here ({exc})"
        else:
            datapath.reason = "auto: tc programs compiled and attached"
            _announce(datapath)
            return datapath
    datapath.start()
    _announce(datapath)
    return datapath


def _announce(datapath: Datapath) -> None:
    log.info("datapath %s (%s)", datapath.kind, datapath.reason)
