"""Percentiles of latency samples (nearest-rank: no interpolation to invent values)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already-sorted samples; 0.0 for none."""
    if not sorted_samples:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_samples)))
    return sorted_samples[rank - 1]
