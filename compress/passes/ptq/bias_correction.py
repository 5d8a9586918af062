"""Empirical bias correction (Nagel et al., 2019, section 4.2; AIMET's empirical variant).

Rounding weights and activations shifts the mean of a layer's output: ``E[W_q x_q] != E[W x]``. A shift in
the mean is a systematic error each later layer amplifies (depthwise layers with few weights per channel
suffer most). On calibration data, for each layer in graph order, the per-channel mean output of the
quantized model is compared with the float function's, and the difference is added to the bias (layers
without one get one). Later layers are measured after the earlier ones are corrected, so one correction
does not count twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

from compress.errors import ConfigError
from compress.passes.calibrate import _progress
from compress.passes.ptq.common import calib_batches, float_mode, output_means, require_graph, weight_layers


@dataclass(frozen=True)
class BiasCorrectionConfig:
    """Options of :func:`correct_bias`.

    Args:
        samples: calibration samples the means are taken over (each layer runs the model once on them).
    """

    samples: int = 128

    def __post_init__(self):
        if self.samples < 1:
            raise ConfigError(f"bias correction samples must be ≥ 1, got {self.samples}")


def correct_bias(model: fx.GraphModule, calib, config: BiasCorrectionConfig | None = None, *,
                 float_weights: dict[nn.Module, torch.Tensor] | None = None, progress: bool = False) -> dict:
    """Add to each int8 conv / linear bias the mean output shift quantization caused (after calibration).

    Args:
        model: a prepared graph after :func:`compress.passes.calibrate`.
        calib: calibration data (a Dataset or batches of inputs).
        config: see :class:`BiasCorrectionConfig`.
        float_weights: the float weights of layers an earlier pass (AdaRound) has rounded: the reference.
        progress: a progress bar over layers.

    Returns:
        ``{"layers": [{"layer", "mean_abs_shift", "max_abs_shift"}, ...]}``: the shift removed per layer.

    Example:
        >>> from compress.passes import calibrate, prepare
        >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
        >>> data = [torch.randn(32, 8)]
        >>> prepared = calibrate(prepare(net, torch.randn(1, 8)), data, progress=False)
        >>> [r["layer"] for r in correct_bias(prepared, data)["layers"]]
        ['0', '2']
    """
    config = config or BiasCorrectionConfig()
    gm = require_graph(model, "bias correction")
    layers = weight_layers(gm)
    batches = calib_batches(calib, config.samples)
    with float_mode(gm, float_weights):  # one float run records every layer's reference mean
        targets = output_means(gm, layers, batches)
    rows = []
    bar, task = _progress(len(layers), "bias correction", progress)
    with bar:
        for name, layer in layers:
            shift = targets[name] - output_means(gm, [(name, layer)], batches)[name]
            with torch.no_grad():
                if layer.bias is None:
                    layer.bias = nn.Parameter(torch.zeros_like(shift))
                layer.bias.add_(shift.to(layer.bias.dtype))
            rows.append({"layer": name, "mean_abs_shift": float(shift.abs().mean()),
                         "max_abs_shift": float(shift.abs().max())})
            bar.advance(task)
    return {"layers": rows}
