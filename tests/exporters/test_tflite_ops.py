"""Golden cases per emitted TFLite op, run in LiteRT and checked against numpy (float formulas on the
dequantized inputs, integer accumulation from compress.quant.reference for conv/dense), float and int8."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ai_edge_litert")
pytestmark = pytest.mark.tflite

from compress.errors import ExportError  # noqa: E402
from compress.exporters.tflite import XNNPACK_FLOAT_OPS, Int8Kernels, TFLiteExportConfig, export_tflite  # noqa: E402
from compress.exporters.tflite.verify import xnnpack_delegation  # noqa: E402
from compress.passes import calibrate, convert, prepare  # noqa: E402
from compress.passes.graph import upstream_quantizer  # noqa: E402
from compress.quant import reference as R  # noqa: E402
from compress.quant.fake import Quantizer  # noqa: E402


# -- numpy oracles --------------------------------------------------------------------------------------
def np_conv2d(x, w, b, stride=1, pad=0, groups=1):
    x = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    n, cin, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, cout, oh, ow))
    per = cout // groups
    for o in range(cout):
        g = o // per
        for i in range(oh):
            for j in range(ow):
                patch = x[:, g * cin_g:(g + 1) * cin_g, i * stride:i * stride + kh, j * stride:j * stride + kw]
                out[:, o, i, j] = (patch * w[o]).sum(axis=(1, 2, 3)) + b[o]
    return out


def np_conv1d(x, w, b, stride=1, pad=0, groups=1):
    """1-D convolution as the 2-D oracle over a height-1 image (padding only along the length)."""
    x = np.pad(x, [(0, 0), (0, 0), (pad, pad)])[:, :, None, :]
    return np_conv2d(x, w[:, :, None, :], b, stride, 0, groups)[:, :, 0, :]


def np_attention(m, x):
    """Multi-head self-attention from the module's weights: projections, softmax(q·kᵀ/√d)·v per head, output."""
    w = m.in_proj_weight.detach().double().numpy()
    b = m.in_proj_bias.detach().double().numpy()
    q, k, v = (x @ w[i * 8:(i + 1) * 8].T + b[i * 8:(i + 1) * 8] for i in range(3))
    heads = [np_softmax(q[..., h * 4:(h + 1) * 4] @ k[..., h * 4:(h + 1) * 4].transpose(0, 2, 1) / 2.0)
             @ v[..., h * 4:(h + 1) * 4] for h in range(2)]
    return np.concatenate(heads, -1) @ _w(m.out_proj)[0].T + _w(m.out_proj)[1]


class AttnOut(nn.Module):
    """Self-attention's output tensor (tracing the bare module would give a tuple)."""

    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def np_pool(x, k, s, pad, kind):
    fill = -np.inf if kind == "max" else 0.0
    x = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)], constant_values=fill)
    oh, ow = (x.shape[2] - k) // s + 1, (x.shape[3] - k) // s + 1
    out = np.zeros(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = x[:, :, i * s:i * s + k, j * s:j * s + k]
            out[:, :, i, j] = win.max(axis=(2, 3)) if kind == "max" else win.mean(axis=(2, 3))
    return out


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def np_layernorm(x, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)


# -- models per op: (module, input shapes, numpy formula over float64 inputs and the module) -----------------
class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class Fn2(Fn):
    def forward(self, a, b):
        return self.fn(a, b)


def _w(m):
    return m.weight.detach().double().numpy(), m.bias.detach().double().numpy()


CASES = {
    # name: (factory, shapes, numpy fn(m, *xs), emitted op)
    "conv_same": (lambda: nn.Conv2d(3, 4, 3, padding=1), [(1, 3, 6, 6)],
                  lambda m, x: np_conv2d(x, *_w(m), 1, 1), "CONV_2D"),
    "conv_s2_explicit_pad": (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), [(1, 3, 6, 6)],
                             lambda m, x: np_conv2d(x, *_w(m), 2, 1), "PAD"),
    "depthwise": (lambda: nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4), [(1, 4, 7, 7)],
                  lambda m, x: np_conv2d(x, *_w(m), 2, 1, 4), "DEPTHWISE_CONV_2D"),
    "grouped_conv": (lambda: nn.Conv2d(8, 12, 3, padding=1, groups=4), [(1, 8, 5, 5)],
                     lambda m, x: np_conv2d(x, *_w(m), 1, 1, 4), "CONV_2D"),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3, padding=1), [(1, 3, 10)], lambda m, x: np_conv1d(x, *_w(m), 1, 1),
               "CONV_2D"),
    "conv1d_grouped_s2": (lambda: nn.Conv1d(4, 6, 5, stride=2, padding=2, groups=2), [(1, 4, 10)],
                          lambda m, x: np_conv1d(x, *_w(m), 2, 2, 2), "CONV_2D"),
    "conv1d_depthwise": (lambda: nn.Conv1d(4, 4, 3, padding=1, groups=4), [(1, 4, 9)],
                         lambda m, x: np_conv1d(x, *_w(m), 1, 1, 4), "DEPTHWISE_CONV_2D"),
    "attention": (lambda: AttnOut(nn.MultiheadAttention(8, 2, batch_first=True)), [(2, 5, 8)],
                  lambda m, x: np_attention(m.attn, x), "BATCH_MATMUL"),
    "linear": (lambda: nn.Linear(6, 5), [(2, 6)], lambda m, x: x @ _w(m)[0].T + _w(m)[1], "FULLY_CONNECTED"),
    "flatten_dense": (lambda: nn.Sequential(nn.Conv2d(2, 3, 1), nn.Flatten(), nn.Linear(3 * 4 * 4, 5)),
                      [(1, 2, 4, 4)],
                      lambda m, x: np_conv2d(x, *_w(m[0])).reshape(1, -1) @ _w(m[2])[0].T + _w(m[2])[1],
                      "FULLY_CONNECTED"),
    "add": (lambda: Fn2(lambda a, b: a + b), [(1, 3, 4, 4)] * 2, lambda m, a, b: a + b, "ADD"),
    "sub": (lambda: Fn2(lambda a, b: a - b), [(1, 3, 4, 4)] * 2, lambda m, a, b: a - b, "SUB"),
    "mul": (lambda: Fn2(lambda a, b: a * b), [(1, 3, 4, 4)] * 2, lambda m, a, b: a * b, "MUL"),
    "cat": (lambda: Fn2(lambda a, b: torch.cat([a, b], 1)), [(1, 3, 4, 4), (1, 2, 4, 4)],
            lambda m, a, b: np.concatenate([a, b], 1), "CONCATENATION"),
    "mean": (lambda: nn.AdaptiveAvgPool2d(1), [(1, 3, 4, 4)], lambda m, x: x.mean((2, 3), keepdims=True), "MEAN"),
    "avg_pool": (lambda: nn.AvgPool2d(2), [(1, 3, 4, 4)], lambda m, x: np_pool(x, 2, 2, 0, "avg"),
                 "AVERAGE_POOL_2D"),
    "max_pool_pad": (lambda: nn.MaxPool2d(3, 2, 1), [(1, 3, 6, 6)], lambda m, x: np_pool(x, 3, 2, 1, "max"),
                     "MAX_POOL_2D"),
    "relu": (lambda: nn.ReLU(), [(1, 8)], lambda m, x: np.maximum(x, 0), "RELU"),
    "hardswish": (lambda: nn.Hardswish(), [(1, 8)], lambda m, x: x * np.clip(x + 3, 0, 6) / 6, "HARD_SWISH"),
    "sigmoid": (lambda: nn.Sigmoid(), [(1, 8)], lambda m, x: 1 / (1 + np.exp(-x)), "LOGISTIC"),
    "tanh": (lambda: nn.Tanh(), [(1, 8)], lambda m, x: np.tanh(x), "TANH"),
    "softmax": (lambda: nn.Softmax(-1), [(2, 8)], lambda m, x: np_softmax(x), "SOFTMAX"),
    "gelu": (lambda: nn.GELU(), [(1, 8)], lambda m, x: np_gelu(x), "GELU"),
    "batch_matmul": (lambda: Fn2(lambda a, b: torch.matmul(a, b)), [(2, 3, 4), (2, 4, 5)],
                     lambda m, a, b: a @ b, "BATCH_MATMUL"),
    "strided_slice": (lambda: Fn(lambda x: x[:, 1:3]), [(2, 5, 3)], lambda m, x: x[:, 1:3], "STRIDED_SLICE"),
    "reshape_squeeze": (lambda: Fn(lambda x: x.reshape(2, 12).squeeze(0) + 0), [(2, 3, 4)],
                        lambda m, x: x.reshape(2, 12), "RESHAPE"),
    "transpose": (lambda: nn.Sequential(nn.Conv2d(2, 2, 1), Fn(lambda x: x.reshape(1, 2, 9))), [(1, 2, 3, 3)],
                  lambda m, x: np_conv2d(x, *_w(m[0])).reshape(1, 2, 9), "TRANSPOSE"),
    "layernorm": (lambda: nn.LayerNorm(8, elementwise_affine=False), [(2, 8)], lambda m, x: np_layernorm(x),
                  "RSQRT"),
}
CASES["relu6"] = (lambda: nn.ReLU6(), [(2, 8)], lambda m, x: np.clip(x, 0, 6), "RELU6")


def _calibrated(m, batches):
    """prepare → observe every (multi-input) batch → convert; calibrate() itself takes one input per batch."""
    p = prepare(m, batches[0])
    if len(batches[0]) == 1:
        return convert(calibrate(p, [b[0] for b in batches], progress=False))
    with torch.no_grad():
        for b in batches:
            p(*b)
    for quantizer in p.modules():
        if isinstance(quantizer, Quantizer) and not quantizer.from_tensor:
            quantizer.start_quantizing()
    return convert(p)


def _inputs(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*s, generator=g) * 3 for s in shapes)  # × 3: reach ReLU6's upper clamp


def _run(path, xs):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    ins = it.get_input_details()
    for d, x in zip(ins, xs, strict=True):
        it.set_tensor(d["index"], x)
    it.invoke()
    out = it.get_output_details()[0]
    return it.get_tensor(out["index"]), ins, out


@pytest.mark.parametrize("name", sorted(CASES))
def test_float_op_matches_numpy(name, tmp_path):
    factory, shapes, fn, op = CASES[name]
    torch.manual_seed(0)
    m = factory().eval()
    xs = _inputs(shapes, 1)
    info = export_tflite(m, xs, tmp_path / "m.tflite")
    assert op in info.op_counts, info.op_counts
    got, _, _ = _run(tmp_path / "m.tflite", [x.numpy() for x in xs])
    want = fn(m, *(x.double().numpy() for x in xs))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(want).max()))


# Int8 average pooling is written as a depthwise conv with weights 1/(k·k) (one rounding onto the output grid).
INT8_OP = {"avg_pool": "DEPTHWISE_CONV_2D"}
INT8_SKIP = {"reshape_squeeze", "strided_slice", "transpose"}  # grid-preserving: covered through other cases


# Ops XNNPACK has no int8 kernel for run in float by default; their int8 kernels are checked with BUILTIN too.
_BUILTIN_CASES = {"hardswish": "HARD_SWISH", "gelu": "GELU", "batch_matmul": "BATCH_MATMUL", "relu": "RELU",
                  "relu6": "RELU6", "softmax": "SOFTMAX"}
# Attention runs its inner quantizers between float kernels: checked against the simulation in test_tflite_models.
INT8_CASES = [(name, Int8Kernels.XNNPACK) for name in sorted(set(CASES) - {"layernorm", "attention"})] + [
    (name, Int8Kernels.BUILTIN) for name in sorted(_BUILTIN_CASES)]


@pytest.mark.parametrize("name, kernels", INT8_CASES)
def test_int8_op_within_one_lsb_of_numpy(name, kernels, tmp_path):
    factory, shapes, fn, op = CASES[name]
    torch.manual_seed(0)
    inner = factory().eval()
    # prepare traces a bare torch.nn layer into its functional form: give it a parent module.
    m = nn.Sequential(inner) if type(inner).__module__.startswith("torch.nn") else inner
    calib = [_inputs(shapes, s) for s in range(4)]
    q = _calibrated(m, calib)
    info = export_tflite(q, calib[0], tmp_path / "q.tflite", TFLiteExportConfig(int8_io=True, int8_kernels=kernels))
    xs = _inputs(shapes, 7)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tmp_path / "q.tflite"))
    ins = it.get_input_details()
    xq = [R.quantize(x.numpy(), d["quantization"][0], d["quantization"][1], -128, 127) for x, d in zip(xs, ins, strict=True)]
    got, ins, out = _run(tmp_path / "q.tflite", [a.astype(np.int8) for a in xq])
    s_o, z_o = out["quantization"]
    # The file's output grid is the torch model's output quantizer's grid.
    modules = dict(q.named_modules())
    out_quant = upstream_quantizer(list(q.graph.nodes)[-1].args[0], modules)
    assert np.isclose(s_o, float(out_quant.scale)) and z_o == int(out_quant.zero_point)
    xd = [R.dequantize(a, d["quantization"][0], d["quantization"][1]).astype(np.float64) for a, d in zip(xq, ins, strict=True)]
    mod = q.get_submodule(next(n.target for n in q.graph.nodes if n.op == "call_module"
                                and hasattr(q.get_submodule(n.target), "weight_quant"))) \
        if any(hasattr(mm, "weight_quant") for mm in q.modules()) else None
    if mod is not None and name in ("conv_same", "conv_s2_explicit_pad", "depthwise", "linear", "grouped_conv",
                                    "conv1d", "conv1d_grouped_s2", "conv1d_depthwise"):
        s_w = mod.weight_quant.scale.double().numpy()
        wq = R.quantize(mod.weight.detach().numpy(), s_w, 0, -127, 127, axis=0)
        bq = R.quantize_bias(mod.bias.detach().numpy(), ins[0]["quantization"][0], s_w)
        zp = ins[0]["quantization"][1]
        if name == "linear":
            acc = R.linear_int32(xq[0], zp, wq, bq)
            axis = -1
        else:
            acc = R.conv_nd_int32(xq[0], zp, wq, bq, stride=mod.stride, padding=mod.padding, groups=mod.groups)
            axis = 1
        want = R.requantize(acc, ins[0]["quantization"][0] * s_w, s_o, z_o, -128, 127, axis=axis)
    else:
        want = R.quantize(fn(inner, *xd), s_o, z_o, -128, 127)
    diff = np.abs(got.astype(np.int64) - want)
    op = INT8_OP.get(name, op)
    assert op in info.op_counts or name in INT8_SKIP or op in ("RELU", "RELU6"), info.op_counts
    assert diff.max() <= 1, (diff.max(), info.op_counts)


def test_unsupported_op_names_op_and_node(tmp_path):
    m = Fn(lambda x: torch.erf(x)).eval()
    with pytest.raises(ExportError, match=r"erf.*fx node.*TFLite writes: .*conv2d"):
        export_tflite(m, torch.randn(1, 4), tmp_path / "x.tflite")
    assert not (tmp_path / "x.tflite").exists()


def test_int8_requantization_is_exact_under_xnnpack(tmp_path):
    """cat of two int8 inputs on other grids: every code requantized with one exact rounding.

    XNNPACK's int8 → int8 convert uses an 8-bit fixed-point scale ratio (0.6037 runs as 155/256), one LSB off
    for large codes; the exporter requantizes through float instead. All 256 codes of each input are checked.
    """
    m = Fn2(lambda a, b: torch.cat([a, b], 1)).eval()
    g = torch.Generator().manual_seed(3)
    calib = [(torch.randn(1, 1, 16, 16, generator=g) * 2, torch.randn(1, 1, 16, 16, generator=g) * 5)
             for _ in range(4)]
    q = _calibrated(m, calib)
    export_tflite(q, calib[0], tmp_path / "q.tflite", TFLiteExportConfig(int8_io=True))
    codes = np.arange(-128, 128, dtype=np.int8).reshape(1, 1, 16, 16)
    got, ins, out = _run(tmp_path / "q.tflite", [codes, codes])
    s_o, z_o = out["quantization"]
    assert got.shape == (1, 2, 16, 16)  # int8 io keeps the torch layout at the edges
    requantized = [(i, d["quantization"]) for i, d in enumerate(ins) if not np.isclose(d["quantization"][0], s_o)]
    assert requantized  # the narrower input's grid differs from the output's
    for i, (s_i, z_i) in requantized:
        exact = (codes[0, 0].astype(np.float64) - z_i) * s_i / s_o
        want = np.clip(np.round(exact) + z_o, -128, 127)
        not_tie = np.abs(exact - np.floor(exact) - 0.5) > 1e-4
        np.testing.assert_array_equal(got[0, i][not_tie], want[not_tie])


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_op_runs_in_one_xnnpack_partition(name, tmp_path):
    """Float and int8 files: LiteRT hands every operator to XNNPACK (no builtin fallback, no graph split)."""
    factory, shapes, _, _ = CASES[name]
    torch.manual_seed(0)
    inner = factory().eval()
    m = nn.Sequential(inner) if type(inner).__module__.startswith("torch.nn") else inner
    models = {"fp32": m}
    if name != "layernorm":
        models["int8"] = _calibrated(m, [_inputs(shapes, s) for s in range(4)])
    for kind, model in models.items():
        export_tflite(model, _inputs(shapes, 0), tmp_path / f"{kind}.tflite")
        d = xnnpack_delegation(tmp_path / f"{kind}.tflite")
        assert d["fallback"] == [] and d["partitions"] == 1, (kind, d)


def test_builtin_int8_kernels_fall_back_out_of_xnnpack(tmp_path):
    """The delegation check sees a fallback: BUILTIN int8 hard-swish leaves XNNPACK and splits the graph."""
    factory, shapes, _, _ = CASES["hardswish"]
    torch.manual_seed(0)
    q = _calibrated(nn.Sequential(factory().eval()), [_inputs(shapes, s) for s in range(4)])
    export_tflite(q, _inputs(shapes, 0), tmp_path / "b.tflite", TFLiteExportConfig(int8_kernels="builtin"))
    d = xnnpack_delegation(tmp_path / "b.tflite")
    assert d["fallback"] == ["HARD_SWISH"] and d["partitions"] == 2, d
    assert "HARD_SWISH" in XNNPACK_FLOAT_OPS
