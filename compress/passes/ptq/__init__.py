"""Advanced post-training quantization: each technique a config dataclass and one function on the graph.

Before calibration (they change the float weights the ranges are then observed on):

* :func:`suppress_outliers` (``outliers``) — find LayerNorm / GELU outlier channels, migrate the LayerNorm ones
  into the reading linears (exact). Runs by itself on a static / dynamic model whose LayerNorm or GELU
  outputs have outlier channels (``PTQConfig.auto_outliers``); report.json's ``ptq.outliers`` lists them.
* :func:`cross_layer_equalize` (``cle``) — equalize per-channel weight ranges of consecutive layers.
* :func:`smooth_quant` (``smoothquant``) — move transformer activation outliers into the linears' weights.

After calibration (the grid is known):

* :func:`select_ranges` — per-tensor minmax / percentile / MSE, for quantizers calibrated with ``observer="auto"``.
* :func:`adaround` (``adaround``) — learned up/down rounding of conv / linear weights.
* :func:`correct_bias` (``bias-correction``) — remove the mean output shift quantization causes.

:func:`apply_before_calibration` / :func:`apply_after_calibration` run the techniques a :class:`PTQConfig`
names, in that order, and return what each changed (``report.json``'s ``ptq`` section).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from torch import fx

from compress.errors import ConfigError
from compress.passes.ptq.adaround import AdaRoundConfig, adaround
from compress.passes.ptq.auto_range import AutoRangeConfig, select_ranges
from compress.passes.ptq.bias_correction import BiasCorrectionConfig, correct_bias
from compress.passes.ptq.common import weight_layers
from compress.passes.ptq.equalize import CLEConfig, cross_layer_equalize
from compress.passes.ptq.outliers import OutlierConfig, render_outliers, suppress_outliers
from compress.passes.ptq.smoothquant import SmoothQuantConfig, smooth_quant
from compress.quant.config import QuantMode


class Technique(str, Enum):
    """The techniques ``compress quantize --ptq`` names (comma-separated)."""

    CLE = "cle"
    SMOOTHQUANT = "smoothquant"
    OUTLIERS = "outliers"
    ADAROUND = "adaround"
    BIAS_CORRECTION = "bias-correction"


@dataclass(frozen=True)
class PTQConfig:
    """Which advanced PTQ techniques run, and each one's options.

    Example:
        >>> PTQConfig.parse("cle, bias-correction").techniques
        (<Technique.CLE: 'cle'>, <Technique.BIAS_CORRECTION: 'bias-correction'>)
    """

    techniques: tuple[Technique, ...] = ()
    cle: CLEConfig = field(default_factory=CLEConfig)
    smoothquant: SmoothQuantConfig = field(default_factory=SmoothQuantConfig)
    adaround: AdaRoundConfig = field(default_factory=AdaRoundConfig)
    bias_correction: BiasCorrectionConfig = field(default_factory=BiasCorrectionConfig)
    auto_range: AutoRangeConfig = field(default_factory=AutoRangeConfig)
    outliers: OutlierConfig = field(default_factory=OutlierConfig)
    # The outlier migration is exact and a no-op without outliers, so it runs unasked on models whose
    # activations are quantized (static / dynamic layers); naming ``outliers`` also reports clean models.
    auto_outliers: bool = True

    def __post_init__(self):
        names = (self.techniques,) if isinstance(self.techniques, str) else tuple(self.techniques)
        try:
            object.__setattr__(self, "techniques", tuple(dict.fromkeys(Technique(t) for t in names)))
        except ValueError:
            raise ConfigError(f"unknown PTQ technique in {', '.join(map(str, names))}; choose from: "
                              f"{', '.join(t.value for t in Technique)} (e.g. --ptq cle,bias-correction)") from None

    @classmethod
    def parse(cls, text: str | tuple | list) -> PTQConfig:
        """``"cle,adaround"`` (or a sequence of names) → a config running those techniques."""
        names = text.split(",") if isinstance(text, str) else list(text)
        return cls(tuple(n.strip().lower() for n in names if str(n).strip()))

    def __contains__(self, technique: Technique | str) -> bool:
        return Technique(technique) in self.techniques


def apply_before_calibration(prepared: fx.GraphModule, calib, config: PTQConfig) -> dict:
    """Outlier migration, CLE, then SmoothQuant (those ``config`` names; outliers also unasked, see
    :attr:`PTQConfig.auto_outliers`) on a prepared graph that has not been calibrated.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from compress.passes import prepare
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
        >>> prepared = prepare(net, torch.randn(1, 3, 8, 8))
        >>> apply_before_calibration(prepared, [torch.randn(4, 3, 8, 8)], PTQConfig.parse("cle"))["cle"]["pairs"]
        [['0', '2']]
    """
    done: dict = {}
    asked = Technique.OUTLIERS in config
    if asked or (config.auto_outliers and Technique.SMOOTHQUANT not in config and _quantizes_activations(prepared)):
        found = suppress_outliers(prepared, calib, config.outliers)
        if asked or found["sites"]:
            done["outliers"] = found | {"auto": not asked}
    if Technique.CLE in config:
        done["cle"] = cross_layer_equalize(prepared, config.cle)
    if Technique.SMOOTHQUANT in config:
        done["smoothquant"] = smooth_quant(prepared, calib, config.smoothquant)
    return done


def _quantizes_activations(prepared: fx.GraphModule) -> bool:
    """Whether some layer of a prepared graph quantizes its input (static or dynamic): weight-only and float
    layers compute on float activations, where moving range into the weights only costs weight precision."""
    info = getattr(prepared, "compress_info", None)
    if info is None:
        return False
    modes = set(info.layer_modes.values()) or {info.config.mode.value}
    return bool(modes & {QuantMode.STATIC.value, QuantMode.DYNAMIC.value})


def apply_after_calibration(prepared: fx.GraphModule, calib, config: PTQConfig, *, progress: bool = False) -> dict:
    """Range selection (when calibrated with ``observer="auto"``), AdaRound, then bias correction."""
    done: dict = {}
    ranges = select_ranges(prepared, calib, config.auto_range, progress=progress)
    if ranges["quantizers"]:
        done["auto_range"] = ranges
    if Technique.ADAROUND not in config and Technique.BIAS_CORRECTION not in config:
        return done
    # The float weights, before AdaRound rounds them: bias correction's reference is the float model.
    originals = {layer: layer.weight.detach().clone() for _, layer in weight_layers(prepared)}
    if Technique.ADAROUND in config:
        done["adaround"] = adaround(prepared, calib, config.adaround, float_weights=dict(originals),
                                    progress=progress)
    if Technique.BIAS_CORRECTION in config:
        done["bias_correction"] = correct_bias(prepared, calib, config.bias_correction, float_weights=originals,
                                               progress=progress)
    return done


__all__ = [
    "AdaRoundConfig",
    "AutoRangeConfig",
    "BiasCorrectionConfig",
    "CLEConfig",
    "OutlierConfig",
    "PTQConfig",
    "SmoothQuantConfig",
    "Technique",
    "adaround",
    "apply_after_calibration",
    "apply_before_calibration",
    "correct_bias",
    "cross_layer_equalize",
    "render_outliers",
    "select_ranges",
    "smooth_quant",
    "suppress_outliers",
]
