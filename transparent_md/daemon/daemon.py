"""The daemon `transparent-md run` starts: every part up in order, down in reverse.

    store check -> datapath (programs, veth pair, ports, follower, filter guard)
                -> slot releaser -> workers
                -> metrics -> serve in this process until SIGTERM/SIGINT
    stop: workers -> slot releaser -> datapath (filters detached, devices and pins removed)

Each part is its own object; this module only orders them and guarantees the reverse
order on any exit, so a failure half-way leaves nothing attached.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from transparent_md.daemon import status, tokens_file
from transparent_md.daemon.logs import RecentProblems
from transparent_md.daemon.notify import Notifier
from transparent_md.daemon.serving import READY_LINE, ServeHooks, ServeSpec, serve, worker_stats
from transparent_md.daemon.store_source import StoreSource
from transparent_md.daemon.workers import start_workers
from transparent_md.datapath import choice
from transparent_md.datapath.datapath import DatapathConfig
from transparent_md.datapath.ports import GatewayRule
from transparent_md.datapath.slot_release import SlotReleaser
from transparent_md.errors import UserError
from transparent_md.lockfile import DaemonLock
from transparent_md.process import raise_nofile_limit, stop_process
from transparent_md.responder.limits import ResponderLimits
from transparent_md.responder.tokens import DEFAULT_TOKEN_HOP_LIMIT
from transparent_md.store.etcd_url import EtcdTls

log = logging.getLogger("transparent_md")


@dataclass
class DaemonConfig:
    datapath: DatapathConfig
    store_path: str | None = None
    # Fleet store (--store etcd://...): TLS files, and the local cache (--cache; None:
    # store_source.default_cache_path).
    etcd_tls: EtcdTls | None = None
    cache_path: str | None = None
    token_hop_limit: int = DEFAULT_TOKEN_HOP_LIMIT
    workers: int = 1
    metrics: tuple[str, int] | None = None
    recent_problems: RecentProblems | None = None
    responder_limits: ResponderLimits = field(default_factory=ResponderLimits)
    access_log: str | None = None  # `text` or `json` with --access-log, else None
    # The admin API's unix socket (`run --api`), or None for no API.
    api_socket: str | None = None
    # The default path is shared by same-named daemons in other network namespaces: if
    # one of them serves it, this daemon serves no API instead of failing to start.
    api_socket_is_default: bool = False
    # SIGHUP: returns the port settings to apply now (from `run --config`), or None.
    reload_settings: Callable[[], PortSettings] | None = None


@dataclass(frozen=True)
class PortSettings:
    """What a reload can change without a restart."""

    bridges: list[str]
    include_ports: list[str]
    exclude_ports: list[str]
    gateways: list[GatewayRule]


def usable_api_socket(path: str | None, is_default: bool) -> str | None:
    """The admin API socket to bind: None when there is none, or when the default path
    is already served by a same-named daemon in another network namespace (warned)."""
    from transparent_md.api.server import in_use

    if path and is_default and in_use(path):
        log.warning("the admin API's default socket %s is served by another daemon (same "
                    "--name in another network namespace?): this one serves no admin API; "
                    "give it --api PATH", path)
        return None
    return path


class Daemon:
    """Owns the datapath, the serving processes and the metrics endpoint of one run."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.names = config.datapath.names
        self.datapath = choice.planned(config.datapath)  # tc or raw: chosen at start
        self.store_source = StoreSource(config.store_path, self.names, tls=config.etcd_tls,
                                        cache_path=config.cache_path)
        self.lock = DaemonLock(self.names)
        self.releaser: SlotReleaser | None = None
        self.started = time.time()
        self._reload_lock = threading.Lock()
        self._metrics_server = None
        self._api = None
        self._responder = None
        self._status = status.StatusWriter(self.names, self.status)
        self.workers: list[subprocess.Popen] = []
        self._stats_dir = (self.names.stats_dir
                           if config.workers > 1 and config.metrics else None)

    def run(self) -> int:
        """Start everything, serve until a stop signal, then stop everything."""
        if os.geteuid() != 0:
            raise UserError("must run as root: attaching tc programs and creating the "
                            "responder's devices needs CAP_NET_ADMIN and CAP_BPF")
        self.lock.acquire()  # before anything is touched: a second daemon changes nothing
        notifier = Notifier()
        hooks = ServeHooks(
            on_ready=lambda: notifier.ready(self._status_line()),
            on_reload=lambda: self.reload(notifier),
            on_stopping=notifier.stopping,
            on_tick=notifier.watchdog if notifier.watchdog_interval_s else None,
            tick_s=notifier.watchdog_interval_s,
        )
        try:
            spec = self.start()
            serve(spec, ready_line=READY_LINE, on_responder=self._on_responder, hooks=hooks)
        finally:
            notifier.stopping()
            self.stop()
            self.lock.release()
        return 0

    def reload(self, notifier: Notifier) -> None:
        """SIGHUP: re-read the config file (if any) and bridge membership; ports that stay
        are never touched. A bad file is logged and the running configuration kept.

        Runs in a thread of its own: it talks netlink (pyroute2's synchronous API cannot
        run inside the serving loop) and must not hold up guests' requests meanwhile.
        """
        threading.Thread(target=self._reload, args=(notifier,), name="reload",
                         daemon=True).start()

    def _reload(self, notifier: Notifier) -> None:
        with self._reload_lock:
            self._reload_locked(notifier)

    def _reload_locked(self, notifier: Notifier) -> None:
        notifier.reloading()
        try:
            if self.config.reload_settings is None:
                log.info("reload (SIGHUP): re-reading bridge ports")
                self.datapath.resync()
            else:
                settings = self.config.reload_settings()
                log.info("reload (SIGHUP): bridges %s, ports %s, excluded %s, gateways %s",
                         ",".join(settings.bridges), ",".join(settings.include_ports) or "-",
                         ",".join(settings.exclude_ports) or "-",
                         ",".join(f"{g.target}={g.ip}" for g in settings.gateways) or "-")
                self.datapath.reconfigure(settings.bridges, settings.include_ports,
                                          settings.exclude_ports, settings.gateways)
        except UserError as exc:
            log.error("reload refused, still serving with the previous configuration: %s", exc)
        except Exception:
            log.exception("reload failed; still serving with the previous configuration")
        finally:
            self._warn_if_no_port()
            notifier.ready(self._status_line())

    def _attached_ports(self) -> int:
        attacher = self.datapath.attacher
        return len(attacher.attached) if attacher else 0

    def _warn_if_no_port(self) -> None:
        if self._attached_ports() == 0:
            log.warning("no port attached: no port of bridge(s) %s matches (check --bridge, "
                        "--port and --exclude-port); no guest is served until one appears",
                        ",".join(self.datapath.config.bridges) or "-")

    def _records(self) -> int | None:
        responder = self._responder
        return len(responder.state.store.snapshot().bindings) if responder else None

    def degradations(self, records: int | None = None) -> list[str]:
        """Why this working daemon serves nobody, if it does (see daemon.health);
        `records`: the count if the caller has it already."""
        from transparent_md.daemon.health import degradations

        records = self._records() if records is None else records
        store = self.config.store_path
        if store is None:
            from transparent_md.store import DEFAULT_STORE_PATH

            store = DEFAULT_STORE_PATH
        return degradations(self._attached_ports(), list(self.datapath.config.bridges),
                            records, store)

    def _status_line(self) -> str:
        line = (f"serving {self._attached_ports()} ports on "
                f"{','.join(self.config.datapath.bridges)}")
        degraded = self.degradations()
        return f"{line}; degraded: {'; '.join(degraded)}" if degraded else line

    def start(self) -> ServeSpec:
        # Open the store first: a bad store path fails before anything is attached.
        serving_store = self.store_source.start()  # the fleet cache for an etcd store
        from transparent_md.api.server import AdminServer

        self.config.api_socket = usable_api_socket(self.config.api_socket,
                                                   self.config.api_socket_is_default)
        if self.config.api_socket:  # bound now: a path in use fails before anything else
            self._api = AdminServer(self.config.api_socket, self.store_source.open_store,
                                    self.status)
        soft, _ = raise_nofile_limit()
        log.debug("open-file limit %d", soft)
        self.datapath = choice.start(self.config.datapath)
        self._warn_if_no_port()
        self.releaser = SlotReleaser(self.datapath.table_dir, self.names.responder_netns,
                                     self.config.datapath.shadow_prefix)
        self.releaser.start()
        spec = ServeSpec(
            netns_name=self.names.responder_netns, pin_dir=str(self.datapath.table_dir),
            shadow_prefix=self.config.datapath.shadow_prefix,
            store_path=serving_store, token_hop_limit=self.config.token_hop_limit,
            token_secret_hex=tokens_file.load_or_create(self.names.token_secret_file).hex(),
            reuse_port=self.config.workers > 1,
            stats_dir=str(self._stats_dir) if self._stats_dir else None,
            parent_pid=os.getpid(),
            limits=self.config.responder_limits,
            access_log=self.config.access_log, **self.store_source.serving_fields(),
        )
        if self._stats_dir:
            shutil.rmtree(self._stats_dir, ignore_errors=True)
            self._stats_dir.mkdir(parents=True)
        if self.config.workers > 1:
            self.workers = start_workers(spec, self.config.workers - 1)
            log.info("%d responder processes share 169.254.169.254:80", self.config.workers)
        return spec

    def status(self) -> dict:
        """What `transparent-md status` shows (see daemon.status)."""
        return status.collect(self.datapath, self.started, self._status_counts)

    def _status_counts(self) -> dict:
        running = self.datapath.attacher is not None
        counts: dict = {"datapath": self.datapath.stats() if running else {},
                        "identities_in_use": self.datapath.slots_in_use() if running else 0,
                        "datapath_kind": self.datapath.kind,
                        "datapath_reason": self.datapath.reason}
        responder = self._responder
        if responder is not None:
            counts["records"] = self._records()
            counts["open_connections"] = responder.stats.open_connections
        counts.update(self.store_source.status())
        counts["degraded"] = self.degradations(counts.get("records"))
        recent = self.config.recent_problems
        counts["recent_problems"] = list(recent.records) if recent else []
        return counts

    def _on_responder(self, responder) -> None:
        self._responder = responder
        self._status.start()
        self._start_metrics(responder)
        if self._api is not None:
            self._api.start()

    def _start_metrics(self, responder) -> None:
        if not self.config.metrics:
            return
        from transparent_md.daemon.health import HealthCheck, HealthCollector
        from transparent_md.daemon.metrics import start_metrics
        from transparent_md.datapath.metrics import DatapathCollector

        stats_dir = self._stats_dir
        others = (lambda: worker_stats(str(stats_dir))) if stats_dir else None
        health = HealthCheck(self.datapath, self.degradations)
        self._metrics_server = start_metrics(
            self.config.metrics, [responder.collector(others), DatapathCollector(self.datapath),
                                  *self.store_source.collectors(),
                                  HealthCollector(health, lambda: len(
                                      responder.state.store.snapshot().bindings))],
            health)

    def stop(self) -> None:
        if self._api is not None:
            self._api.stop()
            self._api = None
        self._status.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        for proc in self.workers:
            stop_process(proc)
        self.workers = []
        if self._stats_dir:
            shutil.rmtree(self._stats_dir, ignore_errors=True)
        if self.releaser is not None:
            self.releaser.stop()
            self.releaser = None
        self.store_source.stop()
        started = self.datapath.attacher is not None
        self.datapath.stop()
        if started:
            log.info("stopped; filters detached, responder side removed")
