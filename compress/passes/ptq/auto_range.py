"""Per-tensor range selection: each activation quantizer's minmax / percentile / MSE range, chosen by the
error it causes at the model's output.

One global observer choice is wrong somewhere: clipping (percentile, MSE) helps a heavy-tailed tensor whose
few large values carry little, and hurts one whose extremes matter (a classifier's logits, a softmax input).
Every quantizer calibrated with ``observer="auto"`` keeps a histogram (:class:`AutoObserver`); here, in graph
order, each candidate range is tried with every other quantizer as chosen so far and the one giving the
model output closest to the float function is kept (ties go to minmax, then percentile).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from compress.errors import ConfigError
from compress.passes.calibrate import _progress
from compress.passes.ptq.common import calib_batches, float_mode, require_graph
from compress.quant.fake import Quantizer, QuantState
from compress.quant.observers import AutoObserver


@dataclass(frozen=True)
class AutoRangeConfig:
    """Options of :func:`select_ranges`.

    Args:
        samples: calibration samples the output error is measured on (each distinct candidate runs the model
            once on them: 3 runs per quantizer at most).
        tie: relative margin within which a candidate counts as no better than an earlier one.
    """

    samples: int = 32
    tie: float = 0.01

    def __post_init__(self):
        if self.samples < 1:
            raise ConfigError(f"auto range samples must be ≥ 1, got {self.samples}")


def select_ranges(model: fx.GraphModule, calib, config: AutoRangeConfig | None = None, *,
                  progress: bool = False) -> dict:
    """Choose each auto-observed quantizer's range by the model-output error it causes (after calibration).

    Returns:
        ``{"chosen": {kind: count}, "quantizers": [{"quantizer", "choice", "output_mse": {kind: error}}]}``.

    Example:
        >>> from torch import nn
        >>> from compress.passes import calibrate, prepare
        >>> from compress.quant.config import QuantConfig
        >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
        >>> data = [torch.randn(64, 8)]
        >>> m = calibrate(prepare(net, torch.randn(1, 8), QuantConfig(observer="auto")), data, progress=False)
        >>> sorted(select_ranges(m, data)["chosen"]) <= ["minmax", "mse", "percentile"]
        True
    """
    config = config or AutoRangeConfig()
    gm = require_graph(model, "automatic range selection")
    modules = dict(gm.named_modules())
    auto = [(n.target, modules[n.target]) for n in gm.graph.nodes if n.op == "call_module"
            and isinstance(modules[n.target], Quantizer) and isinstance(modules[n.target].observer, AutoObserver)
            and modules[n.target].state is QuantState.QUANTIZING]
    if not auto:
        return {"chosen": {}, "quantizers": []}
    batches = calib_batches(calib, config.samples)
    with float_mode(gm), torch.no_grad():
        reference = [_flat(gm(*b)) for b in batches]
    rows, chosen = [], {}
    bar, task = _progress(len(auto), "choosing ranges", progress)
    with bar:
        for name, q in auto:
            errors: dict[str, float] = {}
            tried: list[tuple[tuple[float, float], str]] = []
            for kind, r in q.observer.candidate_ranges().items():
                same = next((k for seen, k in tried if _close(r, seen)), None)
                if same is not None:  # (nearly) an earlier candidate's range: its error, without a model run
                    errors[kind] = errors[same]
                    continue
                tried.append((r, kind))
                _use(q, kind)
                errors[kind] = _output_error(gm, batches, reference)
            low = min(errors.values())
            best = next(k for k in AutoObserver.KINDS if errors[k] <= low * (1 + config.tie) + 1e-30)
            _use(q, best)
            chosen[best] = chosen.get(best, 0) + 1
            rows.append({"quantizer": name, "choice": best, "output_mse": errors})
            bar.advance(task)
    return {"chosen": chosen, "quantizers": rows}


def _close(a: tuple[float, float], b: tuple[float, float], rel: float = 0.01) -> bool:
    return abs(a[0] - b[0]) + abs(a[1] - b[1]) <= rel * max(b[1] - b[0], 1e-30)


def _use(q: Quantizer, kind: str) -> None:
    q.observer.choose(kind)
    q.start_quantizing()  # re-reads the observer's range into scale / zero point


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out.detach().float()]
    if isinstance(out, tuple | list):
        return [t for o in out for t in _flat(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flat(o)]
    return []


def _output_error(gm: fx.GraphModule, batches, reference) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for b, ref in zip(batches, reference, strict=True):
            for o, r in zip(_flat(gm(*b)), ref, strict=True):
                total += float(((o - r) ** 2).sum())
                count += r.numel()
    return total / max(count, 1)
