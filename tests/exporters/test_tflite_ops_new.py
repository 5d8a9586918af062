"""Golden cases for the ops issue 7 added to TFLite: each one captured from eager torch code (as users write
it), exported float and int8, run in LiteRT. Float files match eager torch; int8 files match the torch
simulation within the numerics contract (``verify_tflite``: 1 LSB on ≥ 99 % of elements); ops whose kernel in
``compress/ops/kernels_tflite.py`` is FLOAT run between DEQUANTIZE and QUANTIZE inside the int8 file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("ai_edge_litert")
pytestmark = pytest.mark.tflite

from compress import ops  # noqa: E402
from compress.capture import capture  # noqa: E402
from compress.exporters.tflite import export_tflite, verify_tflite  # noqa: E402
from compress.exporters.tflite.verify import load_interpreter, run_tflite  # noqa: E402
from compress.ops import Kernel  # noqa: E402
from compress.passes import calibrate, convert, prepare  # noqa: E402


class Block(nn.Module):
    """A conv (so values are NHWC and int8 inside the file) followed by the op under test."""

    def __init__(self, fn, cin=3, cout=4, head=None):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)
        self.head = head
        self.fn = fn

    def forward(self, x):
        y = self.conv(x)
        return self.fn(self.head(y) if self.head is not None else y)


class Block1d(Block):
    def __init__(self, fn):
        super().__init__(fn)
        self.conv = nn.Conv1d(3, 4, 1)


IDX = torch.tensor([2, 0, 3])

# name: (model factory, input shape, registry op, a TFLite op the file must contain)
CASES = {
    "pad_constant": (lambda: Block(lambda y: F.pad(y, (1, 2, 0, 1))), (1, 3, 5, 6), "pad", "PAD"),
    "pad_value": (lambda: Block(lambda y: F.pad(y, (1, 1, 2, 0), value=0.5)), (1, 3, 5, 6), "pad",
                  "CONCATENATION"),
    "pad_reflect": (lambda: Block(lambda y: F.pad(y, (2, 1, 1, 3), mode="reflect")), (1, 3, 5, 6), "pad",
                    "CONCATENATION"),
    "pad_replicate": (lambda: Block(lambda y: F.pad(y, (3, 0, 0, 2), mode="replicate")), (1, 3, 5, 6), "pad",
                      "CONCATENATION"),
    "pad_reflect_1d": (lambda: Block1d(lambda y: F.pad(y, (2, 2), mode="reflect")), (2, 3, 9), "pad",
                       "CONCATENATION"),
    "where_compare": (lambda: Block(lambda y: torch.where(y > 0.1, y, y * 0.5)), (1, 3, 4, 4), "where",
                      "SELECT_V2"),
    "masked_fill": (lambda: Block(lambda y: y.masked_fill(y < 0, -1.0)), (1, 3, 4, 4), "masked_fill",
                    "SELECT_V2"),
    "logical": (lambda: Block(lambda y: torch.where(torch.logical_and(y > -1, y < 1) | ~(y > 2), y, 0.0)),
                (1, 3, 4, 4), "logical", "LOGICAL_AND"),
    "eq_ne": (lambda: Block(lambda y: y * ((y > 0.5) != (y < -0.5)).float()
                            + (torch.argmax(y, 1, keepdim=True) == 1).float()), (1, 3, 4, 4), "compare", "NOT_EQUAL"),
    "silu": (lambda: Block(F.silu), (1, 3, 4, 4), "silu", "LOGISTIC"),
    "leaky_relu": (lambda: Block(lambda y: F.leaky_relu(y, 0.2)), (1, 3, 4, 4), "leaky_relu", "LEAKY_RELU"),
    "prelu": (lambda: Block(nn.PReLU(4)), (1, 3, 4, 4), "prelu", "PRELU"),
    "elu": (lambda: Block(F.elu), (1, 3, 4, 4), "elu", "ELU"),
    "elu_alpha": (lambda: Block(lambda y: F.elu(y, alpha=0.5)), (1, 3, 4, 4), "elu", "EXP"),
    "hardsigmoid": (lambda: Block(F.hardsigmoid), (1, 3, 4, 4), "hardsigmoid", "ADD"),
    "hardtanh": (lambda: Block(lambda y: F.hardtanh(y, -0.5, 0.75)), (1, 3, 4, 4), "hardtanh", "MINIMUM"),
    "mish": (lambda: Block(F.mish), (1, 3, 4, 4), "mish", "TANH"),
    "exp": (lambda: Block(lambda y: torch.exp(y * 0.3)), (1, 3, 4, 4), "exp", "EXP"),
    "log_sqrt_rsqrt": (lambda: Block(lambda y: torch.log(y * y + 1) + torch.sqrt(y * y + 0.5)
                                     + torch.rsqrt(y * y + 1)), (1, 3, 4, 4), "log", "RSQRT"),
    "abs_neg": (lambda: Block(lambda y: -torch.abs(y)), (1, 3, 4, 4), "abs", "ABS"),
    "pow": (lambda: Block(lambda y: torch.pow(y, 2) + torch.pow(y * y + 1, 1.5)), (1, 3, 4, 4), "pow", "POW"),
    "reciprocal": (lambda: Block(lambda y: torch.reciprocal(y * y + 1)), (1, 3, 4, 4), "reciprocal", "DIV"),
    "conv_transpose": (lambda: Block(lambda y: y, head=nn.ConvTranspose2d(4, 3, 2, stride=2)), (1, 3, 4, 5),
                       "conv_transpose", "TRANSPOSE_CONV"),
    "conv_transpose_padded": (lambda: Block(lambda y: y, head=nn.ConvTranspose2d(4, 3, 3, 2, 1, output_padding=1)),
                              (1, 3, 4, 5), "conv_transpose", "STRIDED_SLICE"),
    "conv_transpose_overhang": (lambda: Block(lambda y: y, head=nn.ConvTranspose2d(4, 2, 3, 2, 0,
                                                                                   output_padding=1)),
                                (1, 3, 3, 4), "conv_transpose", "PAD"),
    "conv_transpose_1d": (lambda: Block1d(nn.ConvTranspose1d(4, 2, 4, stride=2, padding=1)), (2, 3, 7),
                          "conv_transpose", "TRANSPOSE_CONV"),
    "upsample_nearest": (lambda: Block(lambda y: F.interpolate(y, scale_factor=2, mode="nearest")), (1, 3, 3, 4),
                         "interpolate", "CONCATENATION"),
    "resize_nearest": (lambda: Block(lambda y: F.interpolate(y, size=(5, 6), mode="nearest")), (1, 3, 3, 4),
                       "interpolate", "RESIZE_NEAREST_NEIGHBOR"),
    "upsample_bilinear": (lambda: Block(lambda y: F.interpolate(y, scale_factor=2, mode="bilinear")),
                          (1, 3, 3, 4), "interpolate", "RESIZE_BILINEAR"),
    "resize_align_corners": (lambda: Block(lambda y: F.interpolate(y, size=(5, 7), mode="bilinear",
                                                                   align_corners=True)), (1, 3, 3, 4),
                             "interpolate", "RESIZE_BILINEAR"),
    "none_index": (lambda: Block(lambda y: y * y.mean((2, 3))[:, :, None, None]), (1, 3, 4, 4), "reshape",
                   "RESHAPE"),
    "expand": (lambda: Block(lambda y: y[:, :1].expand(-1, 4, -1, -1) * y), (1, 3, 4, 4), "expand",
               "BROADCAST_TO"),
    "expand_constant": (lambda: Block(lambda y: y * (1.0 - torch.ones(1, 1, 1, 4).expand(1, 4, 4, 4) * 0.5)),
                        (1, 3, 4, 4), "expand", "MUL"),
    "repeat": (lambda: Block(lambda y: y.repeat(1, 2, 1, 3)), (1, 3, 2, 3), "expand", "TILE"),
    "index_select": (lambda: Block(lambda y: torch.index_select(y, 1, IDX)), (1, 3, 4, 4), "gather",
                     "CONCATENATION"),
    "index_select_long": (lambda: Block(lambda y: torch.index_select(y, 3, torch.arange(40) % 5), cout=2),
                          (1, 3, 2, 5), "gather", "GATHER"),
    "gather_by_argmax": (lambda: Block(lambda y: torch.gather(y, 1, y.argmax(1, keepdim=True))), (1, 3, 4, 4),
                         "gather", "GATHER_ND"),
    "split_sizes": (lambda: Block(lambda y: (lambda a, b: a * b[:, :1] + b.sum(1, keepdim=True))(
        *torch.split(y, [1, 3], dim=1))), (1, 3, 4, 4), "split", "STRIDED_SLICE"),
    "chunk": (lambda: Block(lambda y: (lambda a, b: a - b)(*torch.chunk(y, 2, dim=1))), (1, 3, 4, 4), "split",
              "SPLIT"),
    "unbind": (lambda: Block(lambda y: (lambda *p: p[0] + p[2])(*torch.unbind(y, 2))), (1, 3, 3, 4), "split",
               "STRIDED_SLICE"),
    "sum": (lambda: Block(lambda y: y.sum(dim=(1, 3), keepdim=True)), (1, 3, 4, 4), "sum", "SUM"),
    "amax_amin": (lambda: Block(lambda y: y.amax(dim=(2, 3)) - y.amin(dim=1).flatten(1)[:, :4]), (1, 3, 4, 4),
                  "amax", "REDUCE_MAX"),
    "max_dim": (lambda: Block(lambda y: (lambda vi: vi[0] * vi[1])(torch.max(y, 1))), (1, 3, 4, 4), "max_min",
                "ARG_MAX"),
    "argmax": (lambda: Block(lambda y: torch.argmax(y, 2)), (1, 3, 4, 4), "argmax", "ARG_MAX"),
    "cumsum": (lambda: Block(lambda y: torch.cumsum(y, 3)), (1, 3, 4, 4), "cumsum", "CUMSUM"),
    "arange_positions": (lambda: Block(lambda y: y + torch.arange(y.shape[-1]) * 0.25), (1, 3, 4, 4), "add",
                         "ADD"),
    "log_softmax": (lambda: Block(lambda y: F.log_softmax(y.flatten(1) * 20, -1)), (1, 3, 2, 2), "log_softmax",
                    "REDUCE_MAX"),
}


def _inputs(shape, seed):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2,)


def _outputs(v):
    return [t.detach().numpy() for t in (v if isinstance(v, tuple | list) else (v,))]


@pytest.mark.parametrize("name", sorted(CASES))
def test_float_export_matches_eager_torch(name, tmp_path):
    factory, shape, _, tfl_op = CASES[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = _inputs(shape, 1)
    gm = capture(model, x)
    info = export_tflite(gm, x, tmp_path / "m.tflite")
    assert tfl_op in info.op_counts, info.op_counts
    got = run_tflite(load_interpreter(tmp_path / "m.tflite"), tuple(t.numpy() for t in x))
    with torch.no_grad():
        want = _outputs(model(*x))
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(w).max())))


@pytest.mark.parametrize("name", sorted(CASES))
def test_int8_export_matches_the_simulation(name, tmp_path):
    factory, shape, op, tfl_op = CASES[name]
    torch.manual_seed(0)
    model = factory().eval()
    q = convert(calibrate(prepare(model, _inputs(shape, 0)), [_inputs(shape, s)[0] for s in range(4)],
                          progress=False))
    info = export_tflite(q, _inputs(shape, 0), tmp_path / "q.tflite")
    assert tfl_op in info.op_counts, info.op_counts
    assert info.op_counts.get("CONV_2D", 0) or shape.__len__() == 3  # the conv before the op stays int8
    if ops.get(op).kernel("tflite") is Kernel.FLOAT:  # the declared fallback: computed between DEQUANTIZE/QUANTIZE
        assert info.op_counts.get("DEQUANTIZE", 0) >= 1, info.op_counts
    report = verify_tflite(tmp_path / "q.tflite", q, [_inputs(shape, s)[0] for s in range(5, 8)], info=info)
    assert report.passed, report


# Ops LiteRT runs with builtin kernels only (XNNPACK has none, int8 or float): comparisons, logic, selection,
# ARG_MAX, GATHER(_ND), BROADCAST_TO, TILE, CUMSUM, POW, RESIZE_NEAREST_NEIGHBOR at non-integer scales.
OUTSIDE_XNNPACK = {"eq_ne", "logical", "where_compare", "masked_fill", "argmax", "max_dim", "gather_by_argmax",
                   "index_select_long", "expand", "repeat", "cumsum", "pow", "resize_nearest"}


@pytest.mark.parametrize("name", sorted(set(CASES) - OUTSIDE_XNNPACK))
def test_int8_file_stays_one_xnnpack_partition(name, tmp_path):
    """Pads, splits, unbind, nearest upsampling by integer factors and short constant index_select are written
    with ops XNNPACK runs (slices, CONCATENATION, RESHAPE), float fallbacks with float ops it runs: one partition."""
    from compress.exporters.tflite import xnnpack_delegation

    factory, shape, _, _ = CASES[name]
    torch.manual_seed(0)
    q = convert(calibrate(prepare(factory().eval(), _inputs(shape, 0)), [_inputs(shape, s)[0] for s in range(3)],
                          progress=False))
    export_tflite(q, _inputs(shape, 0), tmp_path / "q.tflite")
    assert xnnpack_delegation(tmp_path / "q.tflite")["partitions"] == 1
