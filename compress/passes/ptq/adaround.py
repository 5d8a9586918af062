"""AdaRound (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization", 2020).

Rounding every weight to its nearest grid point minimises each weight's own error, not the layer's output
error: errors of neighbouring weights add up in the dot product. AdaRound learns, per weight, whether to
round down or up. The weight is ``s * clamp(floor(w / s) + h(V), qmin, qmax)`` with the rectified sigmoid
``h(V) = clamp(sigmoid(V) * (ζ - γ) + γ, 0, 1)``; ``V`` is trained (Adam) to reproduce the float layer's
output on calibration inputs, while the regulariser ``1 - |2h - 1|^β`` with β annealed from 20 to 2 pushes
every ``h`` to 0 or 1. Layers are done in graph order, each on the inputs the already rounded layers before
it produce, so later layers compensate earlier ones. The grid (scale) is unchanged: only the codes move.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from compress.errors import ConfigError
from compress.passes.calibrate import _progress
from compress.passes.ptq.common import calib_batches, float_mode, recording, require_graph, run, weight_layers
from compress.quant.observers import qparams_from_range

_ZETA, _GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch: h reaches exactly 0 and 1 with finite V


@dataclass(frozen=True)
class AdaRoundConfig:
    """Options of :func:`adaround`.

    Args:
        iterations: optimisation steps per layer (bounded: a few hundred keep a small net under a minute).
        samples: calibration samples whose layer inputs and outputs are kept per layer.
        batch_size: samples per step.
        lr: Adam's learning rate on V.
        reg_weight: weight of the rounding regulariser against the (normalised) reconstruction error.
        warmup: fraction of the steps without the regulariser (free soft rounding first).
    """

    iterations: int = 200
    samples: int = 128
    batch_size: int = 32
    lr: float = 3e-2
    reg_weight: float = 1.0
    warmup: float = 0.2

    def __post_init__(self):
        for name in ("iterations", "samples", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"AdaRound {name} must be ≥ 1, got {getattr(self, name)}")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"AdaRound warmup must be in [0, 1), got {self.warmup}")


def adaround(model: fx.GraphModule, calib, config: AdaRoundConfig | None = None, *,
             float_weights: dict[nn.Module, torch.Tensor] | None = None, progress: bool = False) -> dict:
    """Learn up/down rounding of every int8 conv / linear weight in place (after calibration).

    Args:
        model: a prepared graph after :func:`compress.passes.calibrate`.
        calib: calibration data (a Dataset or batches of inputs).
        config: see :class:`AdaRoundConfig`.
        float_weights: filled with each rounded layer's float weight (the reference later passes need).
        progress: a progress bar over layers.

    Returns:
        ``{"layers": [{"layer", "mse_nearest", "mse_adaround", "flipped"}, ...]}``: each layer's output error
        on the calibration inputs with round-to-nearest and with the learned rounding, and the fraction of
        weights rounded the other way. A layer whose learned rounding is not better keeps round-to-nearest.

    Example:
        >>> from compress.passes import calibrate, prepare
        >>> net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
        >>> data = [torch.randn(64, 16)]
        >>> prepared = calibrate(prepare(net, torch.randn(1, 16)), data, progress=False)
        >>> rows = adaround(prepared, data, AdaRoundConfig(iterations=20))["layers"]
        >>> all(r["mse_adaround"] <= r["mse_nearest"] for r in rows)
        True
    """
    config = config or AdaRoundConfig()
    gm = require_graph(model, "AdaRound")
    originals = {} if float_weights is None else float_weights
    batches = calib_batches(calib, config.samples)
    layers = weight_layers(gm)
    rows = []
    bar, task = _progress(len(layers), "AdaRound", progress)
    with bar:
        for name, layer in layers:
            with float_mode(gm, originals), recording(layer, outputs=True) as ref:
                run(gm, batches)  # the float model's output of this layer: the target
            with recording(layer, inputs=True) as seen:
                run(gm, batches)  # what this layer receives in the int8 model, earlier layers rounded
            x, y = torch.cat(seen["inputs"]), torch.cat(ref["outputs"])
            originals.setdefault(layer, layer.weight.detach().clone())
            rows.append({"layer": name, **_round_layer(layer, x, y, config)})
            bar.advance(task)
    return {"layers": rows}


def _forward(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    return layer._conv_forward(x, weight, layer.bias)


def _grid(layer: nn.Module) -> tuple[torch.Tensor, int, int]:
    """The weight's scale (broadcastable) and code range, as the weight quantizer computes them."""
    spec = layer.weight_quant.spec
    w = layer.weight.detach()
    if spec.axis is None:
        amax = w.abs().max()
        scale, _ = qparams_from_range(-amax, amax, spec)
        return scale, spec.qmin, spec.qmax
    axis = spec.axis % w.dim()
    amax = w.abs().movedim(axis, 0).reshape(w.shape[axis], -1).amax(1)
    scale, _ = qparams_from_range(-amax, amax, spec)
    shape = [1] * w.dim()
    shape[axis] = -1
    return scale.reshape(shape), spec.qmin, spec.qmax


def _round_layer(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, config: AdaRoundConfig) -> dict:
    w = layer.weight.detach()
    scale, qmin, qmax = _grid(layer)
    ratio = w / scale
    floor = torch.floor(ratio)
    nearest = torch.clamp(torch.round(ratio), qmin, qmax)
    rest = (ratio - floor).clamp(1e-4, 1 - 1e-4)
    # V such that h(V) equals the fractional part: the soft weight starts at the float weight.
    v = (-torch.log((_ZETA - _GAMMA) / (rest - _GAMMA) - 1)).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=config.lr)
    with torch.no_grad():
        mse_nearest = float(F.mse_loss(_forward(layer, x, nearest * scale), y))
    norm = max(mse_nearest, 1e-20)
    gen = torch.Generator().manual_seed(0)
    warm = int(config.warmup * config.iterations)
    with torch.enable_grad():
        for step in range(config.iterations):
            idx = torch.randint(0, len(x), (min(config.batch_size, len(x)),), generator=gen)
            h = torch.clamp(torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA, 0, 1)
            soft = torch.clamp(floor + h, qmin, qmax) * scale
            loss = F.mse_loss(_forward(layer, x[idx], soft), y[idx]) / norm
            if step >= warm:
                beta = 20 + (2 - 20) * (step - warm) / max(config.iterations - warm - 1, 1)
                loss = loss + config.reg_weight * (1 - (2 * h - 1).abs().pow(beta)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        codes = torch.clamp(floor + (v >= 0).to(w.dtype), qmin, qmax)
        # The largest weight of each channel keeps its nearest code: it defines the scale, which the weight
        # quantizer re-derives from the stored weight.
        edge = nearest.abs() == qmax
        codes = torch.where(edge, nearest, codes)
        mse_ada = float(F.mse_loss(_forward(layer, x, codes * scale), y))
        keep = mse_ada < mse_nearest
        layer.weight.copy_((codes if keep else nearest) * scale)
    return {"mse_nearest": mse_nearest, "mse_adaround": mse_ada if keep else mse_nearest,
            "flipped": float((codes != nearest).float().mean()) if keep else 0.0}
