"""A PNG of requests/s and server CPU per request, side by side, per server and mode.

Horizontal bars: each server's whole name on one line at the left, so the labels never
run into each other however many servers a run loads.
"""

from __future__ import annotations

from pathlib import Path

from transparent_md.lab.bench import targets as tg
from transparent_md.lab.bench.measure import MODES, Measurement

FIGSIZE_IN = (14, 5.2)
BAR_HEIGHT = 0.38


def draw(loads: list[Measurement], path: str | Path, title: str,
         targets: bool = True) -> None:
    """The PNG; `targets` False (a `--quick` run) draws no target lines."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a hypervisor
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(m.target.label for m in loads))
    by = {(m.target.label, m.mode): m for m in loads}
    fig, (rps_ax, cpu_ax) = plt.subplots(1, 2, figsize=FIGSIZE_IN, sharey=True)
    ys = range(len(labels))
    for i, mode in enumerate(MODES):
        offset = [y + (i - 0.5) * BAR_HEIGHT for y in ys]
        rps = [by[(lb, mode)].load.rps if (lb, mode) in by else 0 for lb in labels]
        cpu = [by[(lb, mode)].cpu_us_per_request if (lb, mode) in by else 0 for lb in labels]
        rps_ax.barh(offset, rps, BAR_HEIGHT, label=mode)
        cpu_ax.barh(offset, cpu, BAR_HEIGHT, label=mode)
    if targets:
        cpu_ax.axvline(tg.CPU_US_KEEPALIVE, linestyle="--", color="C0", linewidth=1,
                       label=f"target keep-alive {tg.CPU_US_KEEPALIVE:g} us")
        cpu_ax.axvline(tg.CPU_US_NEW_CONNECTION, linestyle="--", color="C1", linewidth=1,
                       label=f"target new connection {tg.CPU_US_NEW_CONNECTION:g} us")
    rps_ax.set_yticks(list(ys))
    rps_ax.set_yticklabels(labels, fontsize=9)
    rps_ax.invert_yaxis()  # the first server on top, as in the report's table
    for ax, xlabel in ((rps_ax, "requests/s"), (cpu_ax, "server CPU us per request")):
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
