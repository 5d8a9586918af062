"""ConvTranspose for int8 models: int8 weight codes per output channel (axis 1 of torch's and ONNX's
``[C_in, C_out, k...]`` layout), int32 bias on ``s_in · s_w``, between the activations' Q/DQ pairs; the float
form lives with the other float layers (ops_math)."""

from __future__ import annotations

from torch import fx, nn

from compress.errors import ExportError
from compress.exporters.onnx.graph import ExportContext, emitter
from compress.exporters.onnx.ops_quant import _bias_value, _finish_layer, _quant_input, weight_codes


def transpose_attrs(mod: nn.Module, where: str) -> dict:
    if mod.padding_mode != "zeros":
        raise ExportError(f"transposed conv {where!r} uses padding_mode={mod.padding_mode!r}; only 'zeros' is "
                          "exported")
    pads = list(mod.padding)
    return dict(kernel_shape=list(mod.kernel_size), strides=list(mod.stride), pads=pads + pads,
                dilations=list(mod.dilation), group=mod.groups, output_padding=list(mod.output_padding))


@emitter("conv_transpose", quantized=True)
def _quant_conv_transpose(ctx: ExportContext, node: fx.Node, layer: nn.Module):
    if len(node.args) > 1 or node.kwargs.get("output_size") is not None:
        raise ExportError(f"transposed conv {node.name!r} is called with output_size; set output_padding on the "
                          "layer instead")
    x = _quant_input(ctx, layer, node)
    codes, scale, axis = weight_codes(layer, layer.weight, node.name)
    w = ctx.b.dequantized_const(codes, scale, axis, f"{node.name}.weight")
    b = _bias_value(ctx, layer, layer.bias, x, node.name)
    y = ctx.b.node("ConvTranspose", [x.name, w] + ([b] if b else []), node.name,
                   **transpose_attrs(layer, node.name))
    return _finish_layer(ctx, layer, node, y)
