"""Latency statistics and paired ratios, computed with numpy from raw per-run timings.

Why paired ratios: on a shared or throttling machine the speed of the whole machine drifts between rounds.
Two contenders measured back to back in the same round see nearly the same drift, so the ratio of their
medians *within* a round is far steadier than the ratio of medians pooled over all rounds. The spread of those
per-round ratios is the honest noise estimate printed beside every ratio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from compress.errors import ConfigError


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one contender's per-run latencies. All times are in seconds.

    Args:
        median, p90, p99, mean, std, min: statistics of the per-run latencies (std with ddof=0).
        runs: number of timed runs.
        throughput: items per second, ``batch / mean``.

    Example:
        >>> s = LatencyStats.from_seconds([0.010, 0.012, 0.011])
        >>> round(s.median * 1000, 3), s.runs
        (11.0, 3)
    """

    median: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    runs: int
    throughput: float

    @classmethod
    def from_seconds(cls, samples: Sequence[float], batch: int = 1) -> LatencyStats:
        """Compute the statistics from per-run latencies in seconds.

        Args:
            samples: one latency per timed run, in seconds (finite, ≥ 0, at least one).
            batch: items processed per run, for the throughput.

        Returns:
            The :class:`LatencyStats`.

        Example:
            >>> LatencyStats.from_seconds([1.0, 3.0], batch=2).throughput
            1.0
        """
        arr = np.asarray(list(samples), dtype=np.float64)
        if arr.size == 0:
            raise ConfigError("no latency samples to summarise; measure with runs >= 1")
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ConfigError("latency samples must be finite and >= 0; check the timer source")
        if batch < 1:
            raise ConfigError(f"batch must be >= 1, got {batch}")
        mean = float(arr.mean())
        return cls(
            median=float(np.median(arr)),
            p90=float(np.percentile(arr, 90)),
            p99=float(np.percentile(arr, 99)),
            mean=mean,
            std=float(arr.std()),
            min=float(arr.min()),
            runs=int(arr.size),
            throughput=batch / mean if mean > 0 else math.inf,
        )

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (seconds)."""
        return asdict(self)

    def to_ms_dict(self) -> dict:
        """The time fields in milliseconds (``runs`` and ``throughput`` unchanged), for tables."""
        d = self.to_dict()
        for key in ("median", "p90", "p99", "mean", "std", "min"):
            d[key] = d[key] * 1e3
        return d


@dataclass(frozen=True)
class PairedRatio:
    """The ratio of two contenders' latencies, computed round by round.

    Args:
        ratio: median over rounds of ``numerator_median / denominator_median`` within the same round.
        noise: half the range of the per-round ratios (0 with a single round: no spread can be estimated,
            see ``rounds``).
        low, high: smallest and largest per-round ratio.
        rounds: number of paired rounds.
        per_round: the per-round ratios, in round order.

    Example:
        >>> r = paired_ratio([2.0, 4.0, 2.2], [4.0, 8.0, 4.0])
        >>> r.ratio, r.rounds
        (0.5, 3)
    """

    ratio: float
    noise: float
    low: float
    high: float
    rounds: int
    per_round: tuple[float, ...]

    @property
    def speedup(self) -> float:
        """``1 / ratio``: how many times faster the numerator is than the denominator."""
        return 1.0 / self.ratio if self.ratio > 0 else math.inf

    def to_dict(self) -> dict:
        d = asdict(self)
        d["per_round"] = list(self.per_round)
        d["speedup"] = self.speedup
        return d

    def __str__(self) -> str:
        return f"{self.ratio:.3f} ± {self.noise:.3f}"


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> PairedRatio:
    """Pair two contenders' per-round medians and summarise their ratio.

    Args:
        numerator: per-round median latency of contender A (round i measured next to ``denominator[i]``).
        denominator: per-round median latency of contender B.

    Returns:
        A :class:`PairedRatio` of A/B with the spread across rounds as its noise.

    Example:
        >>> str(paired_ratio([1.0, 1.1], [2.0, 2.0]))
        '0.525 ± 0.025'
    """
    a = np.asarray(list(numerator), dtype=np.float64)
    b = np.asarray(list(denominator), dtype=np.float64)
    if a.size == 0 or a.size != b.size:
        raise ConfigError(
            f"paired ratios need the same number (>= 1) of rounds on both sides, got {a.size} and {b.size}"
        )
    if np.any(b <= 0) or not np.all(np.isfinite(a)) or not np.all(np.isfinite(b)):
        raise ConfigError("per-round medians must be finite and the denominator > 0; check the measurements")
    ratios = a / b
    return PairedRatio(
        ratio=float(np.median(ratios)),
        noise=float((ratios.max() - ratios.min()) / 2.0),
        low=float(ratios.min()),
        high=float(ratios.max()),
        rounds=int(ratios.size),
        per_round=tuple(float(r) for r in ratios),
    )
