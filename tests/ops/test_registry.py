"""The op registry: one declaration per op, every table derived from it, every emitter behind a declaration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import fx, nn

from compress import ops
from compress.errors import CompressError
from compress.layers import (
    QuantConv1d,
    QuantConv2d,
    QuantEmbedding,
    QuantGRU,
    QuantLinear,
    QuantLSTM,
    QuantMultiheadAttention,
)
from compress.ops import Kernel, OpSpec, Policy
from compress.ops.spec import declare
from compress.ops.verdict import verdict_for_module


def test_weight_layers_map_to_drop_in_quant_classes():
    expected = {nn.Linear: QuantLinear, nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d, nn.Embedding: QuantEmbedding,
                nn.MultiheadAttention: QuantMultiheadAttention, nn.LSTM: QuantLSTM, nn.GRU: QuantGRU}
    for float_cls, quant_cls in expected.items():
        spec = ops.module_spec(float_cls.__new__(float_cls))
        assert spec.policy is Policy.WEIGHTED and spec.quant_class is quant_cls
        assert issubclass(quant_cls, float_cls)  # drop-in: the quant layer is the float layer
    assert ops.quant_class_for(nn.Linear(2, 2)) is QuantLinear
    assert ops.quant_class_for(nn.LSTM(2, 4, proj_size=2)) is None
    assert ops.quant_class_for(nn.ReLU()) is None
    assert ops.quant_class_for(QuantLinear(2, 2)) is None  # already quantized: no double swap


def test_a_users_subclass_is_not_assumed_to_be_the_torch_layer():
    class SameConv(nn.Conv2d):  # TF-"same" ports override forward: capture lowers them, no swap by type
        def forward(self, x):
            return super().forward(nn.functional.pad(x, (0, 1, 0, 1)))

    assert ops.module_spec(SameConv(1, 1, 2)) is None
    assert ops.quant_class_for(SameConv(1, 1, 2)) is None


def test_a_target_claimed_twice_is_refused():
    with pytest.raises(CompressError, match="claimed by ops 'relu' and 'relu_again'"):
        declare(OpSpec("relu_again", Policy.CLAMP, modules=(nn.ReLU,)))
    with pytest.raises(CompressError, match="declared twice"):
        declare(OpSpec("relu", Policy.CLAMP))


def test_lookup_reads_modules_functions_methods_and_generic_aten():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.SiLU()

        def forward(self, x):
            return torch.cat([self.act(x), x.view(x.size(0), -1).sigmoid()], 1) + 1

    gm = fx.symbolic_trace(Net())
    modules = dict(gm.named_modules())
    names = [ops.lookup(n, modules).name for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    assert names == ["silu", "shape", "reshape", "sigmoid", "cat", "add"]
    g = fx.Graph()
    x = g.placeholder("x")
    node = g.call_function(torch.ops.aten.special_bessel_j0.default, (x,))
    assert ops.lookup(node, {}).name == "aten"  # capture keeps unknown aten ops: ONNX-only float fallback
    assert ops.get("aten").kernel("tflite") is Kernel.NONE


@pytest.mark.parametrize("spec", [s for s in ops.all_specs() if s.reference is not None], ids=lambda s: s.name)
def test_numpy_reference_matches_torch(spec):
    """Each op's numpy reference (the golden oracle) computes what the torch targets compute."""
    x = torch.linspace(-4, 4, 33).reshape(3, 11)
    y = torch.linspace(0.5, 2, 33).reshape(3, 11)
    target = spec.functions[0] if spec.functions else spec.modules[0]().eval()
    if spec.name == "dropout":
        target = spec.modules[0]().eval()  # F.dropout defaults to training=True: random
    two = spec.name in ("add", "sub", "mul", "div", "pow")
    if spec.name == "where":
        got, want = target(x > 0, x, y), spec.reference((x > 0).numpy(), x.numpy(), y.numpy())
    elif spec.name == "matmul":
        got, want = target(x, y.T), spec.reference(x.numpy(), y.T.numpy())
    elif spec.name in ("mean", "sum", "cumsum"):
        got, want = target(x, 1), spec.reference(x.numpy(), 1)
    elif spec.name in ("sqrt", "log", "rsqrt", "reciprocal"):
        got, want = target(y), spec.reference(y.numpy())
    elif two:
        got, want = target(x, y), spec.reference(x.numpy(), y.numpy())
    else:
        got, want = target(x), spec.reference(x.numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_inspect_verdicts_come_from_the_registry():
    assert verdict_for_module(nn.Conv2d(1, 2, 3)) == "QuantConv2d"
    assert verdict_for_module(nn.BatchNorm2d(2)) == "folded into conv"
    assert verdict_for_module(nn.MaxPool2d(2)) == "int8 passthrough"
    assert verdict_for_module(nn.AdaptiveAvgPool2d(1)) == "int8 output"
    # SiLU ran between DequantizeLinear and QuantizeLinear while reported as int8 (issue 7, item 6); prepare
    # now lowers it to x · sigmoid(x), int8 in both runtimes (tests/exporters/test_silu_int8.py); Mish is float.
    assert verdict_for_module(nn.SiLU()) == "int8 output"
    assert "float in onnx" in verdict_for_module(nn.Mish())
    assert verdict_for_module(nn.LSTM(2, 4, proj_size=2)) == "stays float"


@pytest.mark.parametrize("fmt", ops.FORMATS)
def test_every_declared_kernel_has_an_emitter_and_every_emitter_a_declaration(fmt):
    """Completeness: an op a format can write (INT8 or FLOAT kernel) has that format's emitter, and no
    exporter writes an op the registry says it cannot."""
    pytest.importorskip("onnx" if fmt == "onnx" else "flatbuffers")
    import compress.exporters  # noqa: F401  (emitters register at import)
    from compress.exporters import register_all_emitters

    register_all_emitters()
    missing = [s.name for s in ops.all_specs()
               if s.kernel(fmt) is not Kernel.NONE and s.policy is not Policy.QUANTIZER
               and s.emitter(fmt) is None and s.emitter(fmt, quantized=True) is None]
    undeclared = [s.name for s in ops.all_specs() if s.kernel(fmt) is Kernel.NONE
                  and (s.emitter(fmt) is not None or s.emitter(fmt, quantized=True) is not None)]
    assert not missing, f"{fmt}: declared but no emitter: {missing}"
    assert not undeclared, f"{fmt}: emitter but kernel NONE: {undeclared}"
