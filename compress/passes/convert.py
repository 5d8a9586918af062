"""convert(): freeze every quantization parameter; after it no observer or training machinery remains."""

from __future__ import annotations

from torch import fx, nn

from compress.errors import ConfigError
from compress.layers.base import QuantLayerMixin
from compress.layers.conv import QuantConvBn2d
from compress.layers.dynamic import layer_mode
from compress.passes import graph as g
from compress.passes.prepare import _set_module
from compress.quant.config import QuantMode
from compress.quant.fake import Quantizer, QuantState


def convert(model: nn.Module) -> nn.Module:
    """Freeze qparams in place: fold fused Conv+BN into plain quant convs, give each layer its input scale
    (for the int32 bias), drop observers. The result is what exporters read.

    Args:
        model: a prepared model after :func:`calibrate` (PTQ) or QAT training.

    Returns:
        ``model``, converted, in eval mode.

    Example:
        >>> import torch
        >>> from compress.models import DemoCNN
        >>> from compress.passes import calibrate, prepare
        >>> m = calibrate(prepare(DemoCNN(), torch.randn(1, 1, 8, 8)), [torch.randn(8, 1, 8, 8)], progress=False)
        >>> m = convert(m)
        >>> any(q.observer is not None for q in m.modules() if hasattr(q, "observer"))
        False
    """
    for q in model.modules():
        if isinstance(q, Quantizer) and q.state is QuantState.OBSERVING and not q.from_tensor:
            raise ConfigError("convert() needs calibrated quantizers; run calibrate(model, data) first")
    model.eval()
    for name, mod in list(model.named_modules()):
        if isinstance(mod, QuantConvBn2d):
            _set_module(model, name, mod.to_quant_conv())
    if isinstance(model, fx.GraphModule):
        modules = dict(model.named_modules())
        for node in model.graph.nodes:
            layer = g.target_module(node, modules)
            # Only a static layer snaps its bias to input_scale × weight_scale: a dynamic layer's input scale
            # changes per call and a weight-only layer's input is float (their biases stay float).
            if isinstance(layer, QuantLayerMixin) and layer_mode(layer) is QuantMode.STATIC and node.args \
                    and isinstance(node.args[0], fx.Node):
                upstream = g.upstream_quantizer(node.args[0], modules)
                if upstream is not None:
                    layer.input_scale = upstream.scale.detach().clone()
        model.recompile()
    for mod in model.modules():
        if isinstance(mod, QuantLayerMixin):
            mod.freeze()
    for q in model.modules():
        if isinstance(q, Quantizer):
            q.freeze()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
