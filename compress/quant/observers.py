"""Observers estimate the float range of a tensor from the values they see, and turn it into qparams.

All observers are ``nn.Module`` s that return their input unchanged, so they can sit in a model while a
calibration set flows through it. ``qparams()`` returns ``(scale, zero_point)`` as float32 / int32 tensors
(shape ``[]`` per tensor, ``[C]`` per channel).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compress.errors import ConfigError, DataError
from compress.quant.spec import ObserverKind, QuantSpec

# Smallest scale we emit: keeps x / scale finite for all-zero tensors (a constant-zero channel is common
# after pruning) while staying far above float32 denormals, which some runtimes flush to zero.
_MIN_SCALE = 1e-8


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that map ``[lo, hi]`` onto ``[spec.qmin, spec.qmax]``.

    The range is widened to include 0 so that zero (padding, ReLU output) is exactly representable.

    Example:
        >>> from compress.quant.spec import ACT_INT8
        >>> s, z = qparams_from_range(torch.tensor(0.0), torch.tensor(2.55), ACT_INT8)
        >>> round(float(s), 4), int(z)
        (0.01, -128)
    """
    lo = torch.minimum(lo.detach().float(), torch.zeros_like(lo, dtype=torch.float32))
    hi = torch.maximum(hi.detach().float(), torch.zeros_like(hi, dtype=torch.float32))
    qmin, qmax = spec.qmin, spec.qmax
    if spec.symmetric:
        amax = torch.maximum(-lo, hi)
        if spec.signed:
            scale = amax / qmax
            zero_point = torch.zeros_like(amax, dtype=torch.int32)
        else:
            scale = 2 * amax / (qmax - qmin)
            zero_point = torch.full_like(amax, (qmin + qmax + 1) // 2, dtype=torch.int32)
    else:
        scale = (hi - lo) / (qmax - qmin)
        scale = torch.clamp(scale, min=_MIN_SCALE)
        zero_point = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax).to(torch.int32)
    scale = torch.clamp(scale, min=_MIN_SCALE).to(torch.float32)
    return scale, zero_point


def _reduce_dims(x: torch.Tensor, axis: int | None) -> list[int]:
    if axis is None:
        return list(range(x.dim()))
    axis = axis % x.dim()
    return [d for d in range(x.dim()) if d != axis]


def _check_finite(x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise DataError(
            "calibration produced NaN or inf activations; check the input data for NaN/inf and the model "
            "for overflow (e.g. remove NaNs with np.nan_to_num before saving the .npz)"
        )


class Observer(nn.Module):
    """Base class: records statistics in ``forward`` and returns the input unchanged."""

    def __init__(self, spec: QuantSpec):
        super().__init__()
        self.spec = spec
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    @property
    def has_data(self) -> bool:
        return bool(torch.isfinite(self.min_val).all())

    def _batch_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach()
        _check_finite(x)
        dims = _reduce_dims(x, self.spec.axis)
        return torch.amin(x, dim=dims).float(), torch.amax(x, dim=dims).float()

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min_val, self.max_val

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.has_data:
            raise DataError(
                "an observer saw no data; run calibration with at least one batch that reaches every layer"
            )
        lo, hi = self.range()
        return qparams_from_range(lo, hi, self.spec)

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, range=({float(self.min_val.min()):.4g}, {float(self.max_val.max()):.4g})"


class MinMaxObserver(Observer):
    """Running min and max over everything seen (per channel when the spec is per-channel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self._batch_range(x)
        if not self.has_data:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)
        return x


class MovingAverageMinMaxObserver(Observer):
    """Exponential moving average of per-batch min/max; robust to one outlier batch, standard for QAT."""

    def __init__(self, spec: QuantSpec, momentum: float = 0.01):
        super().__init__(spec)
        if not 0.0 < momentum <= 1.0:
            raise ConfigError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self._batch_range(x)
        if not self.has_data:
            self.min_val, self.max_val = lo, hi
        else:
            m = self.momentum
            self.min_val = self.min_val + m * (lo - self.min_val)
            self.max_val = self.max_val + m * (hi - self.max_val)
        return x


class HistogramObserver(Observer):
    """Keeps a fixed-size histogram over a growing range; subclasses pick the range from it.

    When a batch falls outside the current range, the range is widened and the old counts are re-binned at
    their bin centres, so memory stays constant however long calibration runs.
    """

    def __init__(self, spec: QuantSpec, bins: int = 2048):
        super().__init__(spec)
        if spec.per_channel:
            raise ConfigError("histogram observers are per-tensor; use minmax for per-channel tensors")
        self.bins = bins
        self.register_buffer("histogram", torch.zeros(bins, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self._batch_range(x)
        values = x.detach().flatten().double().cpu().numpy()
        if not self.has_data:
            new_lo, new_hi = float(lo), float(hi)
        else:
            new_lo, new_hi = min(float(lo), float(self.min_val)), max(float(hi), float(self.max_val))
        if new_hi <= new_lo:
            new_hi = new_lo + 1e-6
        edges = np.linspace(new_lo, new_hi, self.bins + 1)
        counts, _ = np.histogram(values, bins=edges)
        if self.has_data:
            old_edges = np.linspace(float(self.min_val), float(self.max_val), self.bins + 1)
            centres = (old_edges[:-1] + old_edges[1:]) / 2
            old, _ = np.histogram(centres, bins=edges, weights=self.histogram.cpu().numpy())
            counts = counts + old
        self.histogram = torch.from_numpy(counts.astype(np.float64)).to(self.histogram.device)
        self.min_val = torch.tensor(new_lo, device=self.min_val.device)
        self.max_val = torch.tensor(new_hi, device=self.max_val.device)
        return x

    def _edges(self) -> np.ndarray:
        return np.linspace(float(self.min_val), float(self.max_val), self.bins + 1)


class PercentileObserver(HistogramObserver):
    """Clips the range at the given percentiles, ignoring rare outliers (a few huge activations would
    otherwise waste most of the 256 codes)."""

    def __init__(self, spec: QuantSpec, percentile: float = 99.99, bins: int = 2048):
        super().__init__(spec, bins)
        if not 50.0 < percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _as_tensors(_percentile_range(self.histogram.cpu().numpy(), self._edges(), self.percentile))


class MSEObserver(HistogramObserver):
    """Picks the clipping range that minimises the expected squared quantization error over the histogram."""

    def __init__(self, spec: QuantSpec, bins: int = 2048, candidates: int = 64):
        super().__init__(spec, bins)
        self.candidates = candidates

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _as_tensors(_mse_range(self.histogram.cpu().numpy(), self._edges(), self.min_val, self.max_val,
                                      self.spec, self.candidates))


class AutoObserver(HistogramObserver):
    """Chooses per tensor between the minmax, percentile and MSE ranges of one histogram.

    On its own it picks the candidate with the lowest expected squared quantization error of the tensor
    (minmax whenever it is within 1 % of the best: on a bounded, uniform-ish tensor clipping buys nothing);
    :func:`compress.passes.ptq.select_ranges` then re-chooses by the error each candidate causes at the
    model's output. ``choose(kind)`` fixes the choice.

    Example:
        >>> from compress.quant.spec import ACT_INT8
        >>> obs = AutoObserver(ACT_INT8)
        >>> _ = obs(torch.rand(10000))
        >>> obs.best()
        'minmax'
    """

    KINDS = ("minmax", "percentile", "mse")
    _TIE = 0.01

    def __init__(self, spec: QuantSpec, percentile: float = 99.99, bins: int = 2048, candidates: int = 64):
        super().__init__(spec, bins)
        self.percentile = percentile
        self.candidates = candidates
        self.choice: str | None = None

    def candidate_ranges(self) -> dict[str, tuple[float, float]]:
        counts, edges = self.histogram.cpu().numpy(), self._edges()
        return {"minmax": (float(self.min_val), float(self.max_val)),
                "percentile": _percentile_range(counts, edges, self.percentile),
                "mse": _mse_range(counts, edges, self.min_val, self.max_val, self.spec, self.candidates)}

    def errors(self) -> dict[str, float]:
        """Expected squared quantization error of the observed tensor under each candidate range."""
        counts, edges = self.histogram.cpu().numpy(), self._edges()
        centres = (edges[:-1] + edges[1:]) / 2
        return {k: _histogram_error(counts, centres, lo, hi, self.spec) for k, (lo, hi) in self.candidate_ranges().items()}

    def best(self) -> str:
        errors = self.errors()
        low = min(errors.values())
        return next(k for k in self.KINDS if errors[k] <= low * (1 + self._TIE) + 1e-30)

    def choose(self, kind: str) -> None:
        if kind not in self.KINDS:
            raise ConfigError(f"unknown range {kind!r}; choose one of: {', '.join(self.KINDS)}")
        self.choice = kind

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _as_tensors(self.candidate_ranges()[self.choice or self.best()])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", choice={self.choice or 'local'}"


def _as_tensors(r: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(r[0], dtype=torch.float32), torch.tensor(r[1], dtype=torch.float32)


def _percentile_range(counts: np.ndarray, edges: np.ndarray, percentile: float) -> tuple[float, float]:
    bins = len(counts)
    cdf = np.cumsum(counts) / max(counts.sum(), 1.0)
    tail = (100.0 - percentile) / 100.0
    lo_idx = int(np.searchsorted(cdf, tail, side="left"))
    hi_idx = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
    return float(edges[min(lo_idx, bins - 1)]), float(edges[min(hi_idx + 1, bins)])


def _histogram_error(counts: np.ndarray, centres: np.ndarray, lo: float, hi: float, spec: QuantSpec) -> float:
    """Sum over the histogram of the squared error of quantizing each bin centre on the grid of [lo, hi]."""
    scale, zp = qparams_from_range(torch.tensor(lo), torch.tensor(hi), spec)
    s, z = float(scale), int(zp)
    q = np.clip(np.round(centres / s) + z, spec.qmin, spec.qmax)
    return float(np.sum(counts * ((q - z) * s - centres) ** 2))


def _mse_range(counts: np.ndarray, edges: np.ndarray, min_val, max_val, spec: QuantSpec,
               candidates: int) -> tuple[float, float]:
    """The shrunk range ``alpha * [min, max]`` (alpha in 0.2..1) with the least histogram error."""
    centres = (edges[:-1] + edges[1:]) / 2
    lo0, hi0 = min(float(min_val), 0.0), max(float(max_val), 0.0)
    best, best_err = (lo0, hi0), np.inf
    for alpha in np.linspace(0.2, 1.0, candidates):
        err = _histogram_error(counts, centres, lo0 * alpha, hi0 * alpha, spec)
        if err < best_err:
            best, best_err = (lo0 * alpha, hi0 * alpha), err
    return best


class FixedQParamsObserver(Observer):
    """Always the same qparams: for ops whose output range is known a priori (softmax, sigmoid: [0, 1);
    tanh: [-1, 1)). Int8 kernels are written for these grids (TFLite requires them; onnxruntime's
    QLinearSoftmax produced wrong values on other output scales here)."""

    def __init__(self, spec: QuantSpec, scale: float, zero_point: int):
        super().__init__(spec)
        self.register_buffer("fixed_scale", torch.tensor(float(scale)))
        self.register_buffer("fixed_zero_point", torch.tensor(int(zero_point), dtype=torch.int32))

    @property
    def has_data(self) -> bool:
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_finite(x.detach())
        return x

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fixed_scale.clone(), self.fixed_zero_point.clone()

    @classmethod
    def unit_interval(cls, spec: QuantSpec) -> FixedQParamsObserver:
        """[0, 1) in 2**bits steps: softmax and sigmoid outputs."""
        return cls(spec, 1.0 / 2**spec.bits, spec.qmin if spec.signed else 0)

    @classmethod
    def symmetric_unit(cls, spec: QuantSpec) -> FixedQParamsObserver:
        """[-1, 1) in 2**bits steps: tanh outputs."""
        return cls(spec, 2.0 / 2**spec.bits, 0 if spec.signed else 2 ** (spec.bits - 1))


def make_observer(kind: ObserverKind | str, spec: QuantSpec) -> Observer:
    """Build an observer by kind.

    Example:
        >>> from compress.quant.spec import ACT_INT8
        >>> type(make_observer("percentile", ACT_INT8)).__name__
        'PercentileObserver'
    """
    try:
        kind = ObserverKind(kind)
    except ValueError:
        choices = ", ".join(k.value for k in ObserverKind)
        raise ConfigError(f"unknown observer {kind!r}; choose one of: {choices}") from None
    if kind is ObserverKind.MINMAX:
        return MinMaxObserver(spec)
    if kind is ObserverKind.MOVING_AVERAGE:
        return MovingAverageMinMaxObserver(spec)
    if kind is ObserverKind.PERCENTILE:
        return PercentileObserver(spec)
    if kind is ObserverKind.AUTO:
        return AutoObserver(spec)
    return MSEObserver(spec)
