"""Options of the pruning pass: one frozen :class:`PruneConfig`, its small typed parts, and the schedules.

Exactly one mode is chosen per config — ``sparsity`` (unstructured magnitude masks), ``nm`` (N:M
semi-structured masks), ``channels`` (structured channel removal, the same fraction everywhere) or ``latency``
(structured removal, a fraction per group chosen against measured latency) — as the CLI's mutually exclusive
``--sparsity`` / ``--nm`` / ``--channels`` / ``--latency-target`` flags are.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum

from compress.errors import ConfigError

CONFIG_VERSION = 1


class Mode(str, Enum):
    UNSTRUCTURED = "unstructured"
    NM = "nm"
    CHANNELS = "channels"
    LATENCY = "latency"  # structured: per-group fractions chosen to meet a measured latency


STRUCTURED = (Mode.CHANNELS, Mode.LATENCY)


class Scope(str, Enum):
    """Where magnitudes are compared: within each tensor (``layer``) or across all of them (``global``)."""

    LAYER = "layer"
    GLOBAL = "global"


class Criterion(str, Enum):
    """How channel importance is scored (structured mode)."""

    L1 = "l1"  # sum |w| of the channel's producer rows
    L2 = "l2"  # sqrt(sum w²) of the same rows
    BN = "bn"  # |gamma| of the BatchNorms on the channel (network slimming); L1 for groups without BN
    # first-order Taylor (Molchanov et al. 2019): |sum of w·dL/dw over the channel's tensors|, accumulated
    # over labelled batches; it estimates the loss change of removing the channel, so it needs data
    TAYLOR = "taylor"


class ScheduleKind(str, Enum):
    ONE_SHOT = "one_shot"  # the final sparsity at once
    LINEAR = "linear"  # sparsity grows linearly from initial to final
    POLYNOMIAL = "polynomial"  # Zhu & Gupta 2017: s_t = s_f + (s_i - s_f) (1 - t/T)^power (power 3: cubic)


@dataclass(frozen=True)
class Schedule:
    """How sparsity grows over training steps (unstructured and N:M masks are recomputed every ``frequency``).

    Args:
        kind: one-shot, linear or polynomial decay of the remaining density.
        begin_step, end_step: the ramp (steps of the fine-tuning loop); the final sparsity holds after it.
        frequency: recompute masks every this many steps (Zhu & Gupta use 100-1000 on ImageNet).
        initial_sparsity: sparsity at ``begin_step``.
        power: the polynomial's exponent (3 = the paper's cubic schedule).

    Example:
        >>> s = Schedule(ScheduleKind.POLYNOMIAL, begin_step=0, end_step=100)
        >>> [round(s.sparsity_at(t, 0.8), 3) for t in (0, 50, 100, 200)]
        [0.0, 0.7, 0.8, 0.8]
    """

    kind: ScheduleKind = ScheduleKind.ONE_SHOT
    begin_step: int = 0
    end_step: int = 0
    frequency: int = 10
    initial_sparsity: float = 0.0
    power: float = 3.0

    def __post_init__(self):
        object.__setattr__(self, "kind", _enum(ScheduleKind, self.kind, "schedule"))
        if self.end_step < self.begin_step or self.begin_step < 0:
            raise ConfigError(f"schedule needs 0 ≤ begin_step ≤ end_step, got {self.begin_step}..{self.end_step}")
        if self.frequency < 1:
            raise ConfigError(f"schedule frequency must be ≥ 1 step, got {self.frequency}")
        if not 0.0 <= self.initial_sparsity < 1.0:
            raise ConfigError(f"initial_sparsity must be in [0, 1), got {self.initial_sparsity}")

    def sparsity_at(self, step: int, final: float) -> float:
        """The target sparsity after ``step`` training steps, for a final sparsity ``final``."""
        if self.kind is ScheduleKind.ONE_SHOT or step >= self.end_step or self.end_step == self.begin_step:
            return final if self.kind is ScheduleKind.ONE_SHOT or step >= self.begin_step else self.initial_sparsity
        if step <= self.begin_step:
            return self.initial_sparsity
        progress = (step - self.begin_step) / (self.end_step - self.begin_step)
        if self.kind is ScheduleKind.LINEAR:
            return self.initial_sparsity + (final - self.initial_sparsity) * progress
        return final + (self.initial_sparsity - final) * (1.0 - progress) ** self.power


@dataclass(frozen=True)
class NM:
    """N:M semi-structured sparsity: in every group of M consecutive input weights at least N are zero.

    Example:
        >>> NM.parse("2:4")
        NM(n=2, m=4)
    """

    n: int = 2
    m: int = 4

    def __post_init__(self):
        if not (0 < self.n < self.m):
            raise ConfigError(f"N:M sparsity needs 0 < N < M, got {self.n}:{self.m} (e.g. 2:4 or 4:8)")

    @classmethod
    def parse(cls, text: str) -> NM:
        try:
            n, m = (int(part) for part in text.split(":"))
        except ValueError:
            raise ConfigError(f"--nm takes N:M such as 2:4 or 4:8, got {text!r}") from None
        return cls(n, m)

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class LatencyTarget:
    """Latency-driven structured pruning: what to reach and how the per-group latency table is measured.

    Args:
        fraction: the target as a fraction of the unpruned model's measured latency (0.5 = twice as fast).
        ms: the target in milliseconds (batch 1) instead.
        steps: the fractions of each group's channels the table measures removing; the search picks one per
            group (or none).
        tolerance: a plan whose measured latency is within ± this fraction of the target is a hit; otherwise
            the search re-plans from every plan measured so far.
        max_rounds: measure-and-correct rounds; up to twice as many while the miss exceeds 1.5 × ``tolerance``.

    Example:
        >>> LatencyTarget(fraction=0.5).steps
        (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
    """

    fraction: float | None = None
    ms: float | None = None
    steps: tuple[float, ...] = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
    tolerance: float = 0.05
    max_rounds: int = 4

    def __post_init__(self):
        if (self.fraction is None) == (self.ms is None):
            raise ConfigError("a latency target is either fraction=0.5 (of the unpruned latency) or ms=4.0, "
                              "not both or neither")
        if self.fraction is not None and not (isinstance(self.fraction, int | float) and 0.0 < self.fraction < 1.0):
            raise ConfigError(f"latency target fraction must be in (0, 1), got {self.fraction!r} (0.5 = half the "
                              "unpruned latency)")
        if self.ms is not None and not (isinstance(self.ms, int | float) and self.ms > 0 and math.isfinite(self.ms)):
            raise ConfigError(f"latency target must be a positive number of milliseconds, got {self.ms!r}")
        steps = tuple(sorted({float(r) for r in self.steps}))
        if not steps or not all(0.0 < r < 1.0 for r in steps):
            raise ConfigError(f"latency steps must be fractions in (0, 1), got {self.steps!r}")
        object.__setattr__(self, "steps", steps)
        if not 0.0 <= self.tolerance < 1.0 or self.max_rounds < 1:
            raise ConfigError(f"latency tolerance must be in [0, 1) and max_rounds ≥ 1, got {self.tolerance}, "
                              f"{self.max_rounds}")

    def target_ms(self, base_ms: float) -> float:
        return self.ms if self.ms is not None else self.fraction * base_ms


def _enum(cls, value, what: str):
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(v.value for v in cls)
        raise ConfigError(f"unknown {what} {value!r}; choose from {choices}") from None


def _fraction(name: str, value: float, *, closed_top: bool = False) -> None:
    ok = 0.0 <= value <= 1.0 if closed_top else 0.0 <= value < 1.0
    if not (isinstance(value, int | float) and ok and not math.isnan(value)):
        top = "1]" if closed_top else "1)"
        raise ConfigError(f"{name} must be a fraction in [0, {top}, got {value!r} (0.5 removes half)")


@dataclass(frozen=True)
class PruneConfig:
    """Options of :func:`compress.passes.prune.prune`.

    Args:
        sparsity: unstructured mode — the fraction of weights set to zero (masks; finalize bakes them in).
        nm: N:M mode — e.g. ``NM(2, 4)``, along each weight's input-channel axis.
        channels: structured mode — the fraction of channels removed from every prunable group.
        latency: latency mode — a :class:`LatencyTarget`; per-group fractions are chosen against a measured
            latency table (``prune(..., measure=...)`` says in which runtime; torch on 1 thread by default).
        scope: unstructured mode — compare magnitudes per tensor (``layer``) or across all tensors (``global``).
        schedule: unstructured / N:M — how sparsity grows during fine-tuning (one-shot by default).
        criterion: structured modes — channel importance (``l1``, ``l2``, ``bn``, ``taylor``; taylor needs
            ``prune(..., data=labelled batches)``).
        round_to: structured mode — kept channel counts are rounded up to a multiple of this (runtimes are
            faster on aligned widths), never above the original width.
        max_sparsity: no tensor (unstructured) or group (structured) loses more than this fraction.
        skip: module paths (``layer1.0.conv1``) or prefixes (``layer4``) never pruned; in structured mode a
            group with a skipped producer is kept whole.
        min_numel: unstructured / N:M — tensors with fewer elements are left dense (biases-sized tables).
        taylor_batches: ``taylor`` — labelled batches whose gradients are accumulated.

    Example:
        >>> PruneConfig(channels=0.5, round_to=8).mode.value
        'channels'
    """

    sparsity: float | None = None
    nm: NM | None = None
    channels: float | None = None
    latency: LatencyTarget | None = None
    scope: Scope = Scope.LAYER
    schedule: Schedule = field(default_factory=Schedule)
    criterion: Criterion = Criterion.L1
    round_to: int = 1
    max_sparsity: float = 1.0
    skip: tuple[str, ...] = ()
    min_numel: int = 0
    taylor_batches: int = 8

    def __post_init__(self):
        given = [name for name in ("sparsity", "nm", "channels", "latency") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ConfigError("choose one pruning mode: sparsity=0.8 (unstructured), nm=NM(2, 4), channels=0.5 "
                              "(structured) or latency=LatencyTarget(fraction=0.5)"
                              f"{'; got ' + ', '.join(given) if given else ''}")
        if self.sparsity is not None:
            _fraction("sparsity", self.sparsity)
        if self.channels is not None:
            _fraction("channels", self.channels)
        if isinstance(self.nm, str):
            object.__setattr__(self, "nm", NM.parse(self.nm))
        _fraction("max_sparsity", self.max_sparsity, closed_top=True)
        object.__setattr__(self, "scope", _enum(Scope, self.scope, "scope"))
        object.__setattr__(self, "criterion", _enum(Criterion, self.criterion, "criterion"))
        if not isinstance(self.taylor_batches, int) or self.taylor_batches < 1:
            raise ConfigError(f"taylor_batches must be an integer ≥ 1, got {self.taylor_batches!r}")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"round_to must be an integer ≥ 1, got {self.round_to!r}")
        if isinstance(self.skip, str):
            raise ConfigError(f"skip takes a tuple of module paths, got the string {self.skip!r}; "
                              f"write skip=({self.skip!r},)")
        object.__setattr__(self, "skip", tuple(self.skip))

    @property
    def mode(self) -> Mode:
        if self.sparsity is not None:
            return Mode.UNSTRUCTURED
        if self.latency is not None:
            return Mode.LATENCY
        return Mode.NM if self.nm is not None else Mode.CHANNELS

    def skipped(self, path: str) -> bool:
        """Whether module ``path`` is in ``skip`` (exactly, or below a listed prefix)."""
        return any(path == s or path.startswith(s + ".") for s in self.skip)

    def to_dict(self) -> dict:
        """JSON-ready, with a version field (plan.json and report.json carry it)."""
        d = dataclasses.asdict(self)
        d["nm"] = None if self.nm is None else str(self.nm)
        d["scope"], d["criterion"] = self.scope.value, self.criterion.value
        d["schedule"]["kind"] = self.schedule.kind.value
        d["skip"] = list(self.skip)
        if self.latency is not None:
            d["latency"]["steps"] = list(self.latency.steps)
        return {"version": CONFIG_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict) -> PruneConfig:
        d = {k: v for k, v in d.items() if k != "version"}
        if d.get("schedule") is not None:
            d["schedule"] = Schedule(**d["schedule"])
        if d.get("nm") is not None:
            d["nm"] = NM.parse(d["nm"])
        if d.get("latency") is not None:
            d["latency"] = LatencyTarget(**d["latency"])
        return cls(**d)
