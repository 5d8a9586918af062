"""Parity between an exported file run in its runtime and the torch simulation: shared by both formats.

:func:`~compress.exporters.onnx.verify_onnx` (onnxruntime) and :func:`~compress.exporters.verify_tflite`
(LiteRT) each run their file; this module runs the torch reference on the same inputs and compares each output
under the numerics contract (DESIGN.md): int8 outputs within 1 LSB of the output quantizer's scale on ≥ 99%
of elements; float outputs within a relative error (max |diff| over max |reference|) of 1e-4.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from compress.errors import ConfigError, DataError, VerificationError

# A difference of exactly one code, computed in float32, can read as 1.0000001 LSB.
_LSB_SLACK = 1e-3


@dataclass(frozen=True)
class VerifyConfig:
    """Pass/fail thresholds and how onnxruntime runs.

    Args:
        min_within_1lsb: fraction of int8 output elements that must be within 1 LSB (contract: 0.99), end to
            end; when the file is verified op by op this figure is information.
        float_rtol: largest allowed max|diff| / max|reference| on float outputs.
        intra_op_threads: onnxruntime threads (1 makes results and timings reproducible).
        max_op_lsb: op by op (:mod:`compress.exporters.verify_ops`): the largest difference, in LSBs, any
            element of an op's int8 output may show when the op is fed the runtime's own inputs.

    Example:
        >>> VerifyConfig(float_rtol=1e-3).min_within_1lsb
        0.99
    """

    min_within_1lsb: float = 0.99
    float_rtol: float = 1e-4
    intra_op_threads: int = 1
    max_op_lsb: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.min_within_1lsb <= 1.0:
            raise ConfigError(f"min_within_1lsb must be in [0, 1], got {self.min_within_1lsb}")
        if not self.float_rtol >= 0:
            raise ConfigError(f"float_rtol must be ≥ 0, got {self.float_rtol}")
        if isinstance(self.intra_op_threads, bool) or not isinstance(self.intra_op_threads, int) \
                or self.intra_op_threads < 1:
            raise ConfigError(f"intra_op_threads must be an integer ≥ 1, got {self.intra_op_threads!r}")
        if not self.max_op_lsb >= 0:
            raise ConfigError(f"max_op_lsb must be ≥ 0, got {self.max_op_lsb}")


@dataclass
class OutputParity:
    """Agreement on one graph output, over all verified batches."""

    name: str
    quantized: bool
    elements: int
    max_abs_diff: float
    max_rel_diff: float
    scale: float | None = None
    max_abs_lsb: float | None = None
    within_1lsb_fraction: float | None = None
    passed: bool = True
    #: Set when an approximated op (a quantized LSTM / GRU) lies upstream: the output is checked with
    #: max_rel_diff ≤ tolerance instead of the 1-LSB rule (OnnxExportInfo.output_tolerances).
    tolerance: float | None = None


@dataclass
class ParityReport:
    """The outcome of a verification (ONNX or TFLite). ``max_abs_lsb`` / ``within_1lsb_fraction`` aggregate the int8
    outputs (None when there are none); ``max_abs_diff`` / ``max_rel_diff`` cover every output.

    With ``layerwise`` (op-by-op parity, :class:`~compress.exporters.verify_ops.LayerwiseParity` as a dict),
    ``passed`` is its verdict and the end-to-end figures are information (``end_to_end_passed``): recurrent,
    argmax-feedback and LayerNorm models amplify 1-LSB rounding differences on the way to the output."""

    path: str
    passed: bool
    batches: int
    outputs: list[OutputParity]
    max_abs_lsb: float | None
    within_1lsb_fraction: float | None
    max_abs_diff: float
    max_rel_diff: float
    thresholds: dict
    problems: list[str] = field(default_factory=list)
    layerwise: dict | None = None
    end_to_end_passed: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if self.max_abs_lsb is not None:
            core = (f"max {self.max_abs_lsb:.2f} LSB, {100 * self.within_1lsb_fraction:.2f}% within 1 LSB "
                    f"(need ≥ {100 * self.thresholds['min_within_1lsb']:.0f}%)")
        else:
            core = f"max rel diff {self.max_rel_diff:.2e} (limit {self.thresholds['float_rtol']:.0e})"
        text = f"{'passed' if self.passed else 'FAILED'}: {core} over {self.batches} batches"
        if self.layerwise is not None and self.layerwise["ops"]:
            first = self.layerwise.get("first_failure")
            text = (f"{'passed' if self.passed else 'FAILED'} op by op ({self.layerwise['ops']} ops"
                    + (f"; first failure: op {first['node']!r}" if first else "") + f"); end to end {core}")
        return text


def as_batch(item) -> tuple[np.ndarray, ...]:
    items = item if isinstance(item, tuple | list) else (item,)
    out = []
    for x in items:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        if not isinstance(x, np.ndarray):
            raise DataError(f"verification inputs must be numpy arrays or tensors, got {type(x).__name__}")
        out.append(np.ascontiguousarray(x))
    return tuple(out)


def single_samples(inputs: Iterable, limit: int):
    """The first ``limit`` samples of ``inputs`` (batches, :func:`as_batch` items) one by one, each a tuple of
    batch-1 arrays: LiteRT files have a fixed batch of 1."""
    n = 0
    for item in inputs:
        batch = as_batch(item)
        for i in range(batch[0].shape[0] if batch[0].ndim else 1):
            if n >= limit:
                return
            n += 1
            yield tuple(x[i:i + 1] for x in batch)


def _flatten(y) -> list[np.ndarray]:
    if isinstance(y, torch.Tensor):
        return [y.detach().cpu().float().numpy()]
    if isinstance(y, tuple | list):
        return [a for item in y for a in _flatten(item)]
    if isinstance(y, dict):
        return [a for item in y.values() for a in _flatten(item)]
    if y is None:
        return []  # e.g. attention weights with need_weights=False; the ONNX graph has no such output
    return [np.asarray(y, dtype=np.float32)]


def parity_report(path, outputs: list[OutputParity], batches: int, problems: list[str], config: VerifyConfig, *,
                  strict: bool, runtime: str, layerwise=None) -> ParityReport:
    """Aggregate per-output parities into a :class:`ParityReport` (shared by the ONNX and TFLite checks);
    ``strict`` turns a failure into :class:`VerificationError` carrying the figures. ``layerwise`` (a
    :class:`~compress.exporters.verify_ops.LayerwiseParity` that checked at least one op) decides ``passed``."""
    quant = [o for o in outputs if o.quantized]
    total_q = sum(o.elements for o in quant)
    end_to_end = all(o.passed for o in outputs)
    op_by_op = layerwise is not None and layerwise.ops > 0
    report = ParityReport(
        path=str(path),
        passed=not problems and (layerwise.passed if op_by_op else end_to_end),
        batches=batches,
        outputs=outputs,
        max_abs_lsb=max((o.max_abs_lsb for o in quant), default=None),
        within_1lsb_fraction=(sum(o.within_1lsb_fraction * o.elements for o in quant) / total_q
                              if total_q else (1.0 if quant else None)),
        max_abs_diff=max((o.max_abs_diff for o in outputs), default=0.0),
        max_rel_diff=max((o.max_rel_diff for o in outputs), default=0.0),
        thresholds={"min_within_1lsb": config.min_within_1lsb, "float_rtol": config.float_rtol},
        problems=problems,
        layerwise=layerwise.to_dict() if layerwise is not None else None,
        end_to_end_passed=end_to_end,
    )
    if strict and not report.passed:
        detail = "; ".join(problems) if problems else (
            f"{layerwise.first_failure.describe()}" if op_by_op and layerwise.failures else report.summary())
        raise VerificationError(f"{path} disagrees with the torch simulation in {runtime} ({detail}); check the "
                                "calibration data and the exported ops, or relax VerifyConfig if the gap is expected")
    return report


def collect_diffs(run: Callable, reference: Callable | nn.Module, inputs: Iterable, names: list[str],
                  what: str) -> tuple[list[list[np.ndarray]], list[float], list[str], int]:
    """Run each batch through the artifact (``run(batch) -> outputs``) and the torch reference; collect the
    absolute differences per output, each output's largest reference magnitude, shape problems, batch count."""
    was_training = reference.training if isinstance(reference, nn.Module) else None
    if isinstance(reference, nn.Module):
        reference.eval()
    diffs: list[list[np.ndarray]] = [[] for _ in names]
    refs_max = [0.0] * len(names)
    problems: list[str] = []
    batches = 0
    try:
        for item in inputs:
            batch = as_batch(item)
            got = run(batch)
            with torch.no_grad():
                want = _flatten(reference(*(torch.from_numpy(x) for x in batch)))
            if len(want) != len(got):
                raise VerificationError(f"the reference returns {len(want)} outputs but the {what} {len(got)}; "
                                        "verify against the model that was exported")
            for i, (g, w) in enumerate(zip(got, want, strict=True)):
                if g.shape != w.shape:
                    problems.append(f"output {names[i]!r}: shape {list(g.shape)} vs reference {list(w.shape)}")
                    continue
                diffs[i].append(np.abs(g.astype(np.float64) - w.astype(np.float64)).ravel())
                if w.size:
                    refs_max[i] = max(refs_max[i], float(np.max(np.abs(w))))
            batches += 1
    finally:
        if was_training:
            reference.train()
    if batches == 0:
        raise DataError("no verification inputs were given; pass at least one batch")
    return diffs, refs_max, problems, batches


def output_parity(name: str, diffs: list[np.ndarray], ref_max: float, scale: float | None, config: VerifyConfig,
                  tolerance: float | None = None) -> OutputParity:
    """One output's figures: in LSBs of ``scale`` for int8 outputs, relative for float ones; an explicit
    ``tolerance`` (approximated outputs, e.g. dynamic-quantized LSTMs) replaces the contract's test."""
    d = np.concatenate(diffs) if diffs else np.zeros(0)
    max_abs = float(d.max()) if d.size else 0.0
    # Relative to the output's magnitude: elementwise ratios blow up on values near zero.
    max_rel = max_abs / ref_max if ref_max > 0 else (0.0 if max_abs == 0 else float("inf"))
    if not np.isfinite(d).all():
        max_abs = max_rel = float("inf")
    par = OutputParity(name, scale is not None, int(d.size), max_abs, max_rel)
    if scale is not None:
        par.scale = float(scale)
        lsb = d / par.scale
        par.max_abs_lsb = float(lsb.max()) if d.size else 0.0
        par.within_1lsb_fraction = float(np.mean(lsb <= 1 + _LSB_SLACK)) if d.size else 1.0
        par.passed = par.within_1lsb_fraction >= config.min_within_1lsb
    else:
        par.passed = max_rel <= config.float_rtol
    if tolerance is not None:
        par.tolerance = float(tolerance)
        par.passed = max_rel <= par.tolerance
    return par
