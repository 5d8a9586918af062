"""What the advanced PTQ passes share: calibration batches, float-mode runs of a prepared graph, layer lists,
activations recorded at a layer, and per-channel weight ranges."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import fx, nn

from compress.errors import ConfigError, DataError
from compress.layers.conv import QuantConv1d, QuantConv2d, QuantConvBn2d
from compress.layers.linear import QuantLinear
from compress.passes.calibrate import iter_inputs
from compress.quant.fake import Quantizer

# The weight layers whose weights and bias the passes may change: the int8 conv / linear kernels. QAT's fused
# Conv+BN keeps live statistics, so its weight is not the exported one yet.
WEIGHT_LAYERS = (QuantConv1d, QuantConv2d, QuantLinear)


def require_graph(model: nn.Module, what: str) -> fx.GraphModule:
    if not isinstance(model, fx.GraphModule):
        raise ConfigError(f"{what} works on a captured graph; pass the model returned by compress.passes.prepare "
                          "(or compress.passes.capture_graph)")
    return model


def calib_batches(data, samples: int, batch_size: int = 32) -> list[tuple[torch.Tensor, ...]]:
    """The first ``samples`` calibration samples as input batches (every pass sees the same ones)."""
    out, seen = [], 0
    for inputs in iter_inputs(data, batch_size):
        if seen >= samples:
            break
        keep = min(len(inputs[0]), samples - seen)
        if keep > 0:
            out.append(tuple(t[:keep] for t in inputs))
            seen += keep
    if not out:
        raise DataError("advanced PTQ needs calibration data; pass at least one representative input")
    return out


@contextmanager
def float_mode(model: nn.Module, weights: dict[nn.Module, torch.Tensor] | None = None) -> Iterator[nn.Module]:
    """Every quantizer of ``model`` passes its input through unchanged: the float function of a prepared graph
    (BatchNorm folded, weights in float), the reference the passes correct towards. Observers see nothing.

    ``weights`` (layer → float weight) stands in for weights a pass has already rounded, for this run only.
    """
    quantizers = [q for q in model.modules() if isinstance(q, Quantizer)]
    for q in quantizers:
        q.forward = _identity  # an instance attribute shadows the class's forward for this run only
    swapped = {layer: layer.weight.detach().clone() for layer in (weights or {})}
    with torch.no_grad():
        for layer, w in (weights or {}).items():
            layer.weight.copy_(w)
    try:
        yield model
    finally:
        for q in quantizers:
            del q.forward
        with torch.no_grad():
            for layer, w in swapped.items():
                layer.weight.copy_(w)


def _identity(x):
    return x


def weight_layers(gm: fx.GraphModule) -> list[tuple[str, nn.Module]]:
    """(path, layer) of the int8 conv / linear layers in graph order, each parameter set once (shared layers'
    per-call copies hold the same tensors and are corrected once)."""
    modules = dict(gm.named_modules())
    seen, out = set(), []
    for node in gm.graph.nodes:
        mod = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(mod, WEIGHT_LAYERS) and not isinstance(mod, QuantConvBn2d) and id(mod.weight) not in seen:
            seen.add(id(mod.weight))
            out.append((node.target, mod))
    return out


def run(model: nn.Module, batches) -> None:
    with torch.no_grad():
        for inputs in batches:
            model(*inputs)


@contextmanager
def recording(layer: nn.Module, *, inputs: bool = False, outputs: bool = False) -> Iterator[dict]:
    """Collect what ``layer`` receives / returns while the model runs: ``{"inputs": [...], "outputs": [...]}``."""
    seen: dict[str, list] = {"inputs": [], "outputs": []}

    def hook(_mod, args, result):
        if inputs:
            seen["inputs"].append(args[0].detach())
        if outputs:
            seen["outputs"].append(result.detach())

    handle = layer.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def channel_axis(layer: nn.Module) -> int:
    """The output channel axis of the layer's output tensor (conv: 1, linear: last)."""
    return -1 if isinstance(layer, nn.Linear) else 1


def output_means(model: nn.Module, layers: list[tuple[str, nn.Module]], batches) -> dict[str, torch.Tensor]:
    """Per-channel mean output of each layer over ``batches`` (running sums: nothing stored per sample)."""
    sums: dict[str, list] = {name: [0.0, 0] for name, _ in layers}
    handles = []
    for name, layer in layers:
        axis = channel_axis(layer)

        def hook(_mod, _args, out, key=name, axis=axis):
            flat = out.detach().movedim(axis, -1).reshape(-1, out.shape[axis]).double()
            sums[key][0] = sums[key][0] + flat.sum(0)
            sums[key][1] += flat.shape[0]
        handles.append(layer.register_forward_hook(hook))
    try:
        run(model, batches)
    finally:
        for h in handles:
            h.remove()
    return {name: (total / max(count, 1)).float() for name, (total, count) in sums.items()}


def out_channel_absmax(weight: torch.Tensor) -> torch.Tensor:
    """max |w| per output channel (axis 0) of a conv / linear weight."""
    return weight.detach().abs().reshape(weight.shape[0], -1).amax(1)


def in_channel_absmax(weight: torch.Tensor, depthwise: bool = False) -> torch.Tensor:
    """max |w| per input channel (axis 1; axis 0 for a depthwise conv, whose channel i reads input i)."""
    w = weight.detach().abs()
    if depthwise:
        return w.reshape(w.shape[0], -1).amax(1)
    return w.transpose(0, 1).reshape(w.shape[1], -1).amax(1)


def is_depthwise(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Conv1d | nn.Conv2d) and layer.groups > 1 and \
        layer.groups == layer.in_channels == layer.out_channels
