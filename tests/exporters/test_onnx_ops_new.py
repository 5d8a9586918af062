"""Golden cases for the ops real networks use (issue 7), one table: each op written by the ONNX exporter, run in
onnxruntime, against eager torch — at the example's batch and at another one (the graph's batch is dynamic,
so sizes computed from ``x.size(0)`` must follow it).

The forwards use the canonical forms ``compress.capture`` raises aten ops to (``F.pad(x, pad, mode=, value=)``,
``torch.eq``, ``x.expand(...)``, ``torch.split``...), so the emitters see the same fx nodes as in a captured model.
The int8 cases at the end quantize small nets through prepare / calibrate / convert and check both the numbers
(verify_onnx, ≤ 1 LSB) and what ``kernels_onnx.py`` claims: onnxruntime runs the op on int8 values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from compress import ops
from compress.exporters import OnnxExportConfig, export_onnx

pytestmark = pytest.mark.onnx


class Fn(nn.Module):
    """One forward per case (one input); ``mods`` holds the layers a case calls."""

    def __init__(self, fn, **mods):
        super().__init__()
        self.fn = fn
        for k, m in mods.items():
            self.add_module(k, m)

    def forward(self, x):
        return self.fn(self, x)


class Fn2(Fn):
    def forward(self, a, b):
        return self.fn(self, a, b)


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def rand(*shape, seed=0, lo=-2.0, hi=2.0):
    return lambda batch: (torch.rand(batch, *shape, generator=_g(seed)) * (hi - lo) + lo,)


def two(*shape):
    return lambda batch: (torch.randn(batch, *shape, generator=_g(1)), torch.randn(batch, *shape, generator=_g(2)))


def ids(*shape, high=5):
    return lambda batch: (torch.randint(0, high, (batch, *shape), generator=_g(3)),)


IDX = torch.tensor([2, 0, 3])

# (id, registry op, forward, inputs(batch), layers)
CASES = [
    ("pad_constant", "pad", lambda m, x: F.pad(x, [1, 2, 0, 1], mode="constant", value=0.5), rand(3, 5, 6), {}),
    ("pad_reflect_1d", "pad", lambda m, x: F.pad(x, [2, 3], mode="reflect"), rand(3, 10), {}),
    ("pad_replicate", "pad", lambda m, x: F.pad(x, [1, 1, 2, 0], mode="replicate"), rand(2, 4, 5), {}),
    ("zero_pad_module", "pad", lambda m, x: m.pad(x), rand(2, 5, 5), {"pad": nn.ZeroPad2d((0, 1, 0, 1))}),
    ("reflection_pad_module", "pad", lambda m, x: m.pad(x), rand(2, 6), {"pad": nn.ReflectionPad1d(2)}),
    ("eq_ne_ids", "compare", lambda m, x: torch.cat([torch.eq(x, 0), torch.ne(x, 0)], 1), ids(7), {}),
    ("lt_le_gt_ge", "compare", lambda m, a, b: torch.cat([torch.lt(a, b), torch.le(a, 0.5), torch.gt(a, b),
                                                          torch.ge(b, -0.25)], 1), two(4, 3), {}),
    ("ids_to_float_mask", "cast", lambda m, x: (1.0 - torch.ne(x, 0).to(torch.float32)) * -10000.0, ids(6), {}),
    ("logical", "logical", lambda m, a, b: torch.cat([torch.logical_and(a > 0, b > 0),
                                                      torch.logical_or(a > 0, b > 0),
                                                      torch.logical_not(a > 0)], 1), two(5), {}),
    ("where_tensors", "where", lambda m, a, b: torch.where(a > b, a, b), two(3, 4), {}),
    ("where_scalars", "where", lambda m, x: torch.where(x > 0, x, 0.0), rand(6), {}),
    ("masked_fill", "masked_fill", lambda m, x: torch.masked_fill(x, x < 0, -1e4), rand(2, 5), {}),
    ("elu", "elu", lambda m, x: F.elu(x, alpha=0.5), rand(7), {}),
    ("mish", "mish", lambda m, x: F.mish(x), rand(7, lo=-6, hi=6), {}),
    ("hardsigmoid", "hardsigmoid", lambda m, x: F.hardsigmoid(x), rand(9, lo=-5, hi=5), {}),
    ("silu", "silu", lambda m, x: F.silu(x), rand(7), {}),
    ("leaky_relu", "leaky_relu", lambda m, x: F.leaky_relu(x, negative_slope=0.2), rand(7), {}),
    ("prelu", "prelu", lambda m, x: m.act(x), rand(3, 4, 4), {"act": nn.PReLU(3, init=0.1)}),
    ("erf_exp_abs", "erf", lambda m, x: torch.erf(x) + torch.exp(x) + torch.abs(x), rand(8), {}),
    ("log_sqrt_rsqrt_reciprocal", "rsqrt", lambda m, x: torch.log(x) + torch.sqrt(x) + torch.rsqrt(x)
     + torch.reciprocal(x), rand(8, lo=0.5, hi=3.0), {}),
    ("pow", "pow", lambda m, x: torch.pow(x, 2) + torch.pow(x.abs() + 1, 0.5), rand(8), {}),
    ("conv_transpose2d", "conv_transpose", lambda m, x: m.up(x), rand(4, 5, 5),
     {"up": nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)}),
    ("conv_transpose1d_grouped", "conv_transpose", lambda m, x: m.up(x), rand(4, 9),
     {"up": nn.ConvTranspose1d(4, 6, 4, stride=2, groups=2, dilation=2)}),
    ("interpolate_nearest", "interpolate", lambda m, x: F.interpolate(x, scale_factor=2.0, mode="nearest"),
     rand(2, 3, 5), {}),
    ("interpolate_bilinear", "interpolate", lambda m, x: F.interpolate(x, scale_factor=2.0, mode="bilinear",
                                                                       align_corners=False), rand(2, 3, 5), {}),
    ("interpolate_size_corners", "interpolate", lambda m, x: F.interpolate(x, size=[7, 9], mode="bilinear",
                                                                           align_corners=True), rand(2, 3, 4), {}),
    ("upsample_module", "interpolate", lambda m, x: m.up(x), rand(2, 3, 3), {"up": nn.Upsample(scale_factor=3)}),
    ("expand", "expand", lambda m, x: x[:, :1].expand(-1, 4, -1), rand(3, 5), {}),
    ("expand_batch_size", "expand", lambda m, x: x.sum(0).expand(x.size(0), 3, 5), rand(3, 5), {}),
    ("repeat", "expand", lambda m, x: x.repeat(1, 2, 3), rand(2, 3), {}),
    ("repeat_more_dims", "expand", lambda m, x: x.repeat(2, 1, 1, 1).sum(0), rand(2, 3), {}),
    ("unflatten", "reshape", lambda m, x: torch.unflatten(x, 1, (2, 3)), rand(6, 4), {}),
    ("split_sizes", "split", lambda m, x: torch.split(x, [1, 3], 1)[1] * 2 + torch.split(x, [1, 3], 1)[0],
     rand(4, 2), {}),
    ("split_chunks_unbind", "split", lambda m, x: torch.cat([torch.split(x, 2, 2)[2], torch.split(x, 2, 2)[1],
                                                             torch.split(x, 2, 2)[0]], 2)
     + torch.unbind(x, 1)[2].unsqueeze(1), rand(3, 5), {}),
    ("gather", "gather", lambda m, x, i: torch.gather(x, 1, i),
     lambda batch: (torch.randn(batch, 4, 3, generator=_g(4)), torch.randint(0, 4, (batch, 2, 3), generator=_g(5))),
     {}),
    ("index_select", "gather", lambda m, x: torch.index_select(x, 1, IDX.to(x.device)), rand(4, 2), {}),
    ("sum", "sum", lambda m, x: torch.sum(x, dim=[1], keepdim=True) + torch.sum(x, dim=[1, 2], keepdim=True),
     rand(3, 4), {}),
    ("sum_of_mask", "sum", lambda m, x: torch.sum(torch.ne(x, 0), dim=[1], keepdim=False), ids(6), {}),
    ("amax_amin", "amax", lambda m, x: torch.amax(x, dim=[1, 2], keepdim=False)
     - torch.amin(x, dim=[2], keepdim=False).sum(1), rand(3, 4), {}),
    ("max_with_indices", "max_min", lambda m, x: torch.max(x, 1, False)[0] + torch.max(x, 1, False)[1].float(),
     rand(4, 3), {}),
    ("min_keepdim", "max_min", lambda m, x: torch.min(x, 2, True)[0], rand(4, 3), {}),
    ("argmax", "argmax", lambda m, x: torch.argmax(x, 1, False) + torch.argmax(x, 1, True).squeeze(1), rand(4, 3),
     {}),
    ("argmax_flat", "argmax", lambda m, x: torch.argmax(x[0]), rand(4, 3), {}),
    ("cumsum", "cumsum", lambda m, x: torch.cumsum(x, 1), rand(5), {}),
    ("positions_from_mask", "cumsum", lambda m, x: torch.cumsum(torch.ne(x, 0).to(torch.int64), 1) - 1, ids(6), {}),
    ("arange_positions", "constant", lambda m, x: x + torch.arange(0, x.size(1), 1, dtype=torch.float32), rand(6),
     {}),
    ("arange_over_batch", "constant", lambda m, x: x * torch.arange(0, x.size(0), 1, dtype=torch.float32)
     .unsqueeze(1), rand(3), {}),
    ("zeros_ones_full_batch", "constant", lambda m, x: x + torch.zeros([x.size(0), 3], dtype=torch.float32)
     + torch.ones([x.size(0), 3], dtype=torch.float32) + torch.full([x.size(0), 3], 2.5, dtype=torch.float32),
     rand(3), {}),
    ("start_tokens", "constant", lambda m, x: m.emb(torch.full([x.size(0)], 1, dtype=torch.int64)) + x, rand(4),
     {"emb": nn.Embedding(3, 4)}),
]


def _run(path, inputs):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs, strict=True)})


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_new_op_matches_eager_torch_in_onnxruntime(case, tmp_path):
    name, op, fn, make, mods = case
    model = (Fn2 if len(make(1)) == 2 else Fn)(fn, **mods).eval()
    gm = fx.symbolic_trace(model)
    # The case exercises the op it names (its registry entry has this emitter).
    assert any(ops.lookup(n, dict(gm.named_modules())) is ops.get(op) for n in gm.graph.nodes), name
    path = tmp_path / f"{name}.onnx"
    info = export_onnx(model, make(2), path, OnnxExportConfig())
    assert info.float_fallbacks == [], "written natively, not by torch.onnx"
    for batch in (2, 5):  # the example's batch and another one
        inputs = make(batch)
        with torch.no_grad():
            want = model(*inputs)
        (got,) = _run(path, inputs)
        assert got.shape == tuple(want.shape), (batch, got.shape, want.shape)
        if want.dtype in (torch.bool, torch.int64, torch.int32):
            np.testing.assert_array_equal(got, want.numpy())
        else:
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


def test_every_case_op_is_declared_and_written_by_the_onnx_exporter():
    for _, op, *_ in CASES:
        spec = ops.get(op)
        assert spec.kernel("onnx") is not ops.Kernel.NONE and spec.emitter("onnx") is not None, op


def test_generic_aten_node_goes_through_the_float_fallback(tmp_path):
    """Capture keeps an aten op it has no torch form for as ``call_function(aten overload)``: registry op
    "aten", written alone by torch.onnx in float and listed."""
    g = fx.Graph()
    x = g.placeholder("x")
    y = g.call_function(torch.ops.aten.flip.default, (x, [1]))
    g.output(g.call_function(torch.add, (y, 1.0)))
    gm = fx.GraphModule(nn.Module(), g)
    assert ops.lookup(y, {}) is ops.get("aten")
    path = tmp_path / "aten.onnx"
    inputs = (torch.rand(2, 5) + 0.5,)
    info = export_onnx(gm, inputs, path)
    assert len(info.float_fallbacks) == 1 and "flip" in info.float_fallbacks[0]
    for batch in (2, 4):
        xb = torch.rand(batch, 5) + 0.5
        np.testing.assert_allclose(_run(path, (xb,))[0], gm(xb).numpy(), rtol=1e-5)
