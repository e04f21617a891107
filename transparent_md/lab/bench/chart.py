"""A PNG of requests/s and server CPU per request, side by side, per server and mode."""

from __future__ import annotations

from pathlib import Path

from transparent_md.lab.bench import targets as tg
from transparent_md.lab.bench.measure import MODES, Measurement

# Wide enough for seven server labels under each group of bars.
FIGSIZE_IN = (15, 4.8)
BAR_WIDTH = 0.38


def draw(loads: list[Measurement], path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a hypervisor
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(m.target.label for m in loads))
    by = {(m.target.label, m.mode): m for m in loads}
    fig, (rps_ax, cpu_ax) = plt.subplots(1, 2, figsize=FIGSIZE_IN)
    xs = range(len(labels))
    for i, mode in enumerate(MODES):
        offset = [x + (i - 0.5) * BAR_WIDTH for x in xs]
        rps = [by[(lb, mode)].load.rps if (lb, mode) in by else 0 for lb in labels]
        cpu = [by[(lb, mode)].cpu_us_per_request if (lb, mode) in by else 0 for lb in labels]
        rps_ax.bar(offset, rps, BAR_WIDTH, label=mode)
        cpu_ax.bar(offset, cpu, BAR_WIDTH, label=mode)
    cpu_ax.axhline(tg.CPU_US_KEEPALIVE, linestyle="--", color="C0", linewidth=1,
                   label=f"target keep-alive {tg.CPU_US_KEEPALIVE:g} us")
    cpu_ax.axhline(tg.CPU_US_NEW_CONNECTION, linestyle="--", color="C1", linewidth=1,
                   label=f"target new connection {tg.CPU_US_NEW_CONNECTION:g} us")
    for ax, ylabel in ((rps_ax, "requests/s"), (cpu_ax, "server CPU us per request")):
        ax.set_xticks(list(xs))
        ax.set_xticklabels([lb.replace(", ", "\n").replace(" (", "\n(") for lb in labels],
                           fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
