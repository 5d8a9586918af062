"""Weight-only and dynamic modes in TFLite, run in LiteRT.

Weight-only (int8 weights + DEQUANTIZE, float compute). Oracle: the float model with its weights snapped to the
int8 per-channel grid in numpy, run by torch's float ops (independent of the exporter and of the quant layers).

Dynamic Linear / Conv (hybrid FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D). Oracle: numpy integer math of
LiteRT's hybrid kernels on weight codes computed here from the float weights (per-row / per-image asymmetric
int8 input, exact integer accumulation, scale product, float bias), fed the same input LiteRT was fed, on
XNNPACK and on LiteRT's builtin kernels. Per-tensor dynamic convs are refused by name.

Dynamic LSTM (one fused hybrid UNIDIRECTIONAL_SEQUENCE_LSTM per layer). Oracle: the gate codes re-coded here from
the float weights, and the kernel's step in float64 from the same row oracle, given LiteRT's own input to each op;
one reading its final state is refused by name.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import ExportError
from compress.passes import calibrate, convert, prepare
from compress.quant.config import QuantConfig

pytest.importorskip("ai_edge_litert")


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)  # depthwise: channels on the last axis
        self.fc = nn.Linear(8 * 4 * 4, 64)  # after an NHWC flatten: permuted weight columns
        self.tok = nn.Linear(16, 5)  # on a 3-D input

    def forward(self, x):
        y = torch.relu(self.dw(torch.relu(self.conv(x))))
        y = torch.relu(self.fc(y.flatten(1)))
        return self.tok(y.reshape(-1, 4, 16))


class _Tokens(nn.Module):
    """Token-wise layers on [B, S, D] (each token a row of the hybrid kernel), a fused ReLU, a LayerNorm
    between two dynamic layers, and a 2-D head."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(12, 24)
        self.norm = nn.LayerNorm(24)
        self.down = nn.Linear(24, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        y = self.down(self.norm(torch.relu(self.up(x))))
        return self.head(y.mean(1))


def _snapped(model: nn.Module) -> nn.Module:
    """The float model with every weight on its symmetric per-output-channel int8 grid (numpy)."""
    with torch.no_grad():
        for layer in (model.conv, model.dw, model.fc, model.tok):
            w = layer.weight.numpy().astype(np.float64)
            axes = tuple(range(1, w.ndim))
            scale = (np.abs(w).max(axis=axes, keepdims=True) / 127).astype(np.float32).astype(np.float64)
            layer.weight.copy_(torch.from_numpy((np.round(w / scale) * scale).astype(np.float32)))
    return model


def _converted(mode: str, model: nn.Module, x: torch.Tensor):
    prepared = prepare(model, x[:1], QuantConfig(mode=mode))
    calibrate(prepared, [x], progress=False)
    return convert(prepared)


def test_weight_only_tflite_matches_snapped_float_model_in_litert(tmp_path):
    from compress.exporters.tflite import export_tflite
    from compress.exporters.tflite.verify import load_interpreter, run_tflite

    torch.manual_seed(0)
    model = _Net().eval()
    x = torch.randn(4, 3, 8, 8)
    int8 = _converted("weight-only", model, x)
    info = export_tflite(int8, (x[:1],), tmp_path / "wo.tflite")
    assert info.op_counts["DEQUANTIZE"] == 4 and "QUANTIZE" not in info.op_counts
    export_tflite(model, (x[:1],), tmp_path / "fp32.tflite")
    assert (tmp_path / "wo.tflite").stat().st_size < 0.4 * (tmp_path / "fp32.tflite").stat().st_size
    interpreter = load_interpreter(tmp_path / "wo.tflite", 1)
    with torch.no_grad():
        expected = _snapped(model)(x).numpy()
    for i in range(len(x)):
        got = run_tflite(interpreter, (x[i:i + 1].numpy(),))[0]
        np.testing.assert_allclose(got, expected[i:i + 1], atol=2e-5, rtol=1e-4)


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.attn(x, x, x, need_weights=False)[0])


def _snap_rows(w: torch.Tensor) -> torch.Tensor:
    """Each row of a 2-D weight on its symmetric int8 grid (numpy)."""
    a = w.detach().numpy().astype(np.float64)
    scale = (np.abs(a).max(axis=1, keepdims=True) / 127).astype(np.float32).astype(np.float64)
    return torch.from_numpy((np.round(a / scale) * scale).astype(np.float32))


def test_weight_only_attention_stores_int8_projections_and_matches_snapped_float_in_litert(tmp_path):
    from compress.exporters.tflite import export_tflite
    from compress.exporters.tflite.verify import load_interpreter, run_tflite

    torch.manual_seed(4)
    model = _Attention().eval()
    x = torch.randn(4, 6, 16)
    wo = _converted("weight-only", model, x)
    info = export_tflite(wo, (x[:1],), tmp_path / "wo.tflite")
    assert info.op_counts["DEQUANTIZE"] == 5  # q, k, v, output projection, fc
    it = load_interpreter(tmp_path / "wo.tflite", 1)
    square = [t["dtype"] for t in it.get_tensor_details() if tuple(t["shape"]) == (16, 16)]
    assert square.count(np.int8) == 4  # the projections' stored weights are int8 (their DEQUANTIZE outputs float)
    with torch.no_grad():
        snapped = _Attention().eval()
        snapped.load_state_dict(model.state_dict())
        snapped.attn.in_proj_weight.copy_(torch.cat([_snap_rows(w) for w in model.attn.in_proj_weight.chunk(3)]))
        snapped.attn.out_proj.weight.copy_(_snap_rows(model.attn.out_proj.weight))
        snapped.fc.weight.copy_(_snap_rows(model.fc.weight))
        expected = snapped(x).numpy()
    for i in range(len(x)):
        got = run_tflite(it, (x[i:i + 1].numpy(),))[0]
        np.testing.assert_allclose(got, expected[i:i + 1], atol=2e-5, rtol=1e-4)


# -- dynamic: the numpy oracle of LiteRT's hybrid FULLY_CONNECTED, written here from the kernel's definition --
def _oracle_codes(weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 codes and scales of a float weight (numpy, float32 scale)."""
    w = weight.detach().numpy().astype(np.float64)
    scale = (np.abs(w).max(axis=1) / 127).astype(np.float32)
    return np.round(w / scale.astype(np.float64)[:, None]).astype(np.int64), scale


def _oracle_row(row: np.ndarray) -> tuple[np.ndarray, float, int]:
    """One row as LiteRT's hybrid kernels quantize it: range [min(x, 0), max(x, 0)] in double over 255 steps,
    the zero point from the closer end, codes round-half-away(zp + x / scale) in [-128, 127]."""
    row = row.astype(np.float32).ravel()
    lo, hi = min(float(row.min()), 0.0), max(float(row.max()), 0.0)
    s = (hi - lo) / 255.0
    zp = -128.0 - lo / s if 128 + abs(lo / s) < 127 + abs(hi / s) else 127.0 - hi / s
    zp = int(min(max(np.sign(zp) * np.floor(abs(zp) + 0.5), -128), 127))
    v = np.float32(zp) + row * np.float32(1.0 / np.float32(s))
    return np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), -128, 127).astype(np.int64), float(np.float32(s)), zp


def _oracle_hybrid_fc(x: np.ndarray, codes: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Each row quantized on its own; y = (Σ q·w − zp·Σ w) × s_row × s_w + b."""
    rows = x.reshape(-1, x.shape[-1])
    out = np.empty((rows.shape[0], codes.shape[0]), np.float64)
    for r, row in enumerate(rows):
        q, s, zp = _oracle_row(row)
        out[r] = (codes @ q - zp * codes.sum(axis=1)) * (s * scale.astype(np.float64)) + bias
    return out.reshape(*x.shape[:-1], codes.shape[0])


def _oracle_hybrid_conv(x: np.ndarray, layer: nn.Module, codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The image quantized as one row; the integer conv of (q − zp) (torch in float64: exact for these
    sizes; zero padding is real 0) × s_image × s_w + b."""
    q, s, zp = _oracle_row(x)
    centred = torch.from_numpy((q - zp).reshape(x.shape).astype(np.float64))
    conv = torch.nn.functional.conv2d if x.ndim == 4 else torch.nn.functional.conv1d
    acc = conv(centred, torch.from_numpy(codes.astype(np.float64)), None, layer.stride, layer.padding,
               layer.dilation, layer.groups).numpy()
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return acc * s * scale.astype(np.float64).reshape(shape) + layer.bias.detach().numpy().astype(np.float64).reshape(shape)


def _resolvers():
    from ai_edge_litert.interpreter import OpResolverType

    # XNNPACK (the default) and LiteRT's own kernels (a device without the delegate) must both match.
    return [OpResolverType.AUTO, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES]


def _interpreter(path, resolver):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1, experimental_op_resolver_type=resolver)
    it.allocate_tensors()
    return it


@pytest.mark.parametrize("shape", [(1, 6, 12), (1, 12)], ids=["tokens", "rows"])
def test_hybrid_fully_connected_matches_numpy_reference_in_litert(tmp_path, shape):
    from compress.exporters.tflite import export_tflite
    from compress.exporters.tflite.verify import load_interpreter, run_tflite

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 20)).eval()
    x = torch.randn(8, *shape[1:]) * 2 + 0.5  # off-centre: the zero point matters
    dyn = _converted("dynamic", model, x)
    info = export_tflite(dyn, (x[:1],), tmp_path / "dyn.tflite")
    assert info.op_counts == {"FULLY_CONNECTED": 1}  # no DEQUANTIZE: the kernel reads the int8 codes
    it = load_interpreter(tmp_path / "dyn.tflite", 1)
    fc = next(o for o in it._get_ops_details() if o["op_name"] == "FULLY_CONNECTED")
    weight = next(t for t in it.get_tensor_details() if t["index"] == fc["inputs"][1])
    assert weight["dtype"] == np.int8 and len(weight["quantization_parameters"]["scales"]) == 20
    codes, scale = _oracle_codes(model[0].weight)
    worst = sim_diff = 0.0
    for resolver in _resolvers():
        it = _interpreter(tmp_path / "dyn.tflite", resolver)
        for i in range(len(x)):
            xi = x[i:i + 1].numpy()
            got = run_tflite(it, (xi,))[0]
            want = _oracle_hybrid_fc(xi, codes, scale, model[0].bias.detach().numpy().astype(np.float64))
            worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
            with torch.no_grad():
                sim_diff = max(sim_diff, float(np.abs(got - dyn(x[i:i + 1]).numpy()).max() / np.abs(got).max()))
    assert worst < 1e-5  # float32 rounding of the rescale only
    if len(shape) == 3:  # several rows: per-row input scales, not the simulation's one per tensor
        assert sim_diff > 1e-4


def test_dynamic_tflite_verifies_against_litert_arithmetic_and_catches_a_wrong_scale(tmp_path, monkeypatch):
    from compress.exporters.tflite import export_tflite, ops_dynamic
    from compress.exporters.tflite.verify import verify_tflite
    from compress.exporters.tflite.verify_dynamic import HYBRID_STEPS

    torch.manual_seed(1)
    model = _Tokens().eval()
    x = torch.randn(6, 5, 12)
    dyn = _converted("dynamic", model, x)
    info = export_tflite(dyn, (x[:1],), tmp_path / "dyn.tflite")
    assert info.op_counts["FULLY_CONNECTED"] == 3
    report = verify_tflite(tmp_path / "dyn.tflite", dyn, [x], info=info, graph=dyn)
    assert report.passed, report.summary()
    assert not report.end_to_end_passed  # per-row vs per-tensor input grids: beyond the float 1e-4
    hybrid = {h["node"]: h for h in report.layerwise["dynamic"]}
    assert set(hybrid) == {"relu", "down", "head"}  # the ReLU after `up` is fused: its tensor holds relu(up)
    assert all(h["passed"] and h["max_steps"] < 1e-2 * HYBRID_STEPS and h["elements"] for h in hybrid.values())
    assert hybrid["down"]["sim_max_rel_diff"] > 1e-4  # reported, not judged
    json.dumps(report.to_dict())

    real = ops_dynamic.int8_weight

    def wrong_scale(weight, wq, where):  # one layer's scales 2 % off: the codes stay plausible
        codes, scale = real(weight, wq, where)
        return codes, scale * (1.02 if where == "down" else 1.0)

    monkeypatch.setattr(ops_dynamic, "int8_weight", wrong_scale)
    export_tflite(dyn, (x[:1],), tmp_path / "bad.tflite")
    bad = verify_tflite(tmp_path / "bad.tflite", dyn, [x], info=info, graph=dyn)
    assert not bad.passed
    assert bad.layerwise["first_failure"]["node"] == "down"
    steps = {h["node"]: h["max_steps"] for h in bad.layerwise["dynamic"]}
    assert steps["down"] > 3 * HYBRID_STEPS and steps["head"] < 1e-2  # downstream sees LiteRT's (wrong) values


def test_mixed_static_and_dynamic_layers_verify_and_a_float_dynamic_layer_fails(tmp_path, monkeypatch):
    from compress.exporters.tflite import export_tflite, ops_dynamic
    from compress.exporters.tflite.verify import verify_tflite

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(6, 5, 12)
    prepared = prepare(model, x[:1], QuantConfig(mode="static", layer_modes={"2": "dynamic"}))
    calibrate(prepared, [x], progress=False)
    mixed = convert(prepared)
    info = export_tflite(mixed, (x[:1],), tmp_path / "mixed.tflite")
    report = verify_tflite(tmp_path / "mixed.tflite", mixed, [x], info=info, graph=mixed)
    assert report.passed, report.summary()
    assert len(report.layerwise["dynamic"]) == 1 and report.layerwise["dynamic"][0]["passed"]
    assert report.layerwise["ops"] > 1  # the static layers' int8 probes are checked too

    # A dynamic layer written as a float FC (weight-only form) has no hybrid op: verification must not pass it.
    from compress import ops
    from compress.ops.spec import Emitter

    spec = ops.get("linear")
    monkeypatch.setitem(spec.emitters, ("tflite", "dynamic"), Emitter(ops_dynamic._weight_only(ops_dynamic.linear), True))
    export_tflite(mixed, (x[:1],), tmp_path / "float.tflite")
    bad = verify_tflite(tmp_path / "float.tflite", mixed, [x], info=info, graph=mixed)
    assert not bad.passed and "not found" in bad.layerwise["first_failure"]["op"]


def test_dynamic_conv_net_verifies_op_by_op(tmp_path):
    """Conv (ReLU fused) → depthwise → NHWC flatten → Linear: the dense layer's weight columns are permuted in
    the file, the verification reads it in torch's order."""
    from compress.exporters.tflite import export_tflite
    from compress.exporters.tflite.verify import verify_tflite

    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval()
    x = torch.randn(5, 3, 8, 8)
    dyn = _converted("dynamic", model, x)
    info = export_tflite(dyn, (x[:1],), tmp_path / "dyn.tflite")
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= set(info.op_counts)
    report = verify_tflite(tmp_path / "dyn.tflite", dyn, [x], info=info, graph=dyn)
    assert report.passed, report.summary()
    hybrid = report.layerwise["dynamic"]
    assert len(hybrid) == 3 and all(h["passed"] and h["elements"] for h in hybrid)


@pytest.mark.parametrize("conv", [nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.Conv2d(6, 6, 3, padding=2, dilation=2),
                                  nn.Conv2d(6, 12, 3, padding=1, groups=6), nn.Conv2d(4, 6, 3, padding=1, groups=2),
                                  nn.Conv1d(4, 6, 3, padding=1)],
                         ids=["strided", "dilated", "depthwise-x2", "grouped", "conv1d"])
def test_hybrid_conv_matches_numpy_reference_in_litert(tmp_path, conv):
    from compress.exporters.tflite import export_tflite
    from compress.exporters.tflite.verify import run_tflite

    torch.manual_seed(0)
    model = nn.Sequential(conv).eval()
    x = torch.randn(4, conv.in_channels, *((9, 9) if isinstance(conv, nn.Conv2d) else (11,))) + 0.4
    dyn = _converted("dynamic", model, x)
    info = export_tflite(dyn, (x[:1],), tmp_path / "dyn.tflite")
    kind = "DEPTHWISE_CONV_2D" if conv.groups == conv.in_channels else "CONV_2D"
    assert info.op_counts[kind] == 1 and "DEQUANTIZE" not in info.op_counts
    w = conv.weight.detach().numpy().astype(np.float64)
    scale = (np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127).astype(np.float32)
    codes = np.round(w / scale.astype(np.float64).reshape(-1, *(1,) * (w.ndim - 1))).astype(np.int64)
    for resolver in _resolvers():
        it = _interpreter(tmp_path / "dyn.tflite", resolver)
        for i in range(len(x)):
            got = run_tflite(it, (x[i:i + 1].numpy(),))[0]  # the file transposes back to channels-first
            want = _oracle_hybrid_conv(x[i:i + 1].numpy(), conv, codes, scale)
            np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0)


def test_dynamic_conv_with_per_tensor_weights_is_refused_by_name(tmp_path):
    from dataclasses import replace

    from compress.exporters.tflite import export_tflite
    from compress.quant import PerTensor

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    x = torch.randn(4, 3, 8, 8)
    config = QuantConfig(mode="dynamic", weight=replace(QuantConfig().weight, granularity=PerTensor()))
    prepared = prepare(model, x[:1], config)
    calibrate(prepared, [x], progress=False)
    with pytest.raises(ExportError, match=r"layer '0' is a dynamic conv with one weight scale per tensor.*"
                                          r"--layer-mode 0=weight-only"):
        export_tflite(convert(prepared), (x[:1],), tmp_path / "dyn.tflite")
    assert not (tmp_path / "dyn.tflite").exists()


class _SeqLSTM(nn.Module):
    """A 2-layer LSTM whose output sequence is all the graph reads (the fused form), or, with ``final``, whose
    final hidden state is read too (no fused form)."""

    def __init__(self, final: bool = False):
        super().__init__()
        self.final = final
        self.rnn = nn.LSTM(6, 12, num_layers=2, batch_first=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        out, (h, _) = self.rnn(x)
        return self.fc(out[:, -1] + h[-1] if self.final else out[:, -1])


def _oracle_lstm(x_btk: np.ndarray, w_ih: list, w_hh: list, bias: list) -> np.ndarray:
    """LiteRT's hybrid LSTM step (lstm_eval.cc, asymmetric inputs) in float64 from this file's row oracle: at
    every step the input row and the previous hidden row (each batch row on its own grid; a zero state is
    skipped, as the kernel does), integer products with each gate's codes × (row scale × gate scale)."""
    seq = x_btk.transpose(1, 0, 2).astype(np.float64)
    steps, bsz, _ = seq.shape
    h = np.zeros((bsz, len(bias[0])))
    c = np.zeros_like(h)

    def matmul(v, w):
        codes, s_w = w
        out = np.zeros((v.shape[0], codes.shape[0]))
        for r, row in enumerate(v):
            if row.any():
                q, s, zp = _oracle_row(row)
                out[r] = (q - zp) @ codes.T.astype(np.float64) * (s * s_w)
        return out

    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    hs = []
    for t in range(steps):
        i, f, g, o = (matmul(seq[t], w_ih[k]) + matmul(h, w_hh[k]) + bias[k] for k in range(4))
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        hs.append(h)
    return np.stack(hs).transpose(1, 0, 2)


def test_dynamic_lstm_is_one_fused_hybrid_op_per_layer_matching_the_kernel_in_litert(tmp_path):
    from compress.exporters.tflite import export_tflite
    from compress.exporters.tflite.verify import (
        FUSED_LSTM_MIN_CLOSE_FRACTION,
        load_interpreter,
        verify_tflite,
    )

    torch.manual_seed(3)
    model = _SeqLSTM().eval()
    x = torch.randn(8, 7, 6)
    dyn = _converted("dynamic", model, x)
    info = export_tflite(dyn, (x[:1],), tmp_path / "dyn.tflite")
    assert info.op_counts["UNIDIRECTIONAL_SEQUENCE_LSTM"] == 2, info.op_counts
    assert not {"LOGISTIC", "TANH", "SPLIT", "PACK", "QUANTIZE"} & set(info.op_counts)  # fused, not unrolled
    it = load_interpreter(tmp_path / "dyn.tflite", preserve_all_tensors=True)
    details = {d["index"]: d for d in it.get_tensor_details()}
    lstms = [o for o in it._get_ops_details() if o["op_name"] == "UNIDIRECTIONAL_SEQUENCE_LSTM"]
    # The weights: int8 with one scale per gate matrix, the float weights' codes on that gate's largest row
    # scale (computed here from the float LSTM: per-row codes × scales, then re-coded per gate block).
    gates = {}
    for layer, op in enumerate(lstms):
        ins = [int(i) for i in op["inputs"]]
        for kind, idx in (("ih", ins[1:5]), ("hh", ins[5:9])):
            codes, row_scale = _oracle_codes(getattr(model.rnn, f"weight_{kind}_l{layer}"))
            w = codes * row_scale.astype(np.float64)[:, None]
            for block, i in zip(np.split(w, 4), idx, strict=True):
                s = np.abs(block).max() / 127
                d = details[i]
                assert d["dtype"] == np.int8 and len(d["quantization_parameters"]["scales"]) == 1
                assert np.isclose(d["quantization_parameters"]["scales"][0], s, rtol=1e-6)
                assert np.array_equal(it.get_tensor(i), np.round(block / s))
                gates.setdefault((layer, kind), []).append((np.round(block / s), np.float32(s)))
    # In LiteRT, each fused op against the numpy kernel oracle given the op's own input.
    diffs = []
    for k in range(8):
        it.set_tensor(it.get_input_details()[0]["index"], x[k:k + 1].numpy())
        it.invoke()
        for layer, op in enumerate(lstms):
            ins = [int(i) for i in op["inputs"]]
            want = _oracle_lstm(it.get_tensor(ins[0]), gates[(layer, "ih")], gates[(layer, "hh")],
                                [it.get_tensor(i).astype(np.float64) for i in ins[12:16]])
            diffs.append(np.abs(it.get_tensor(int(op["outputs"][0])) - want).ravel())
    d = np.concatenate(diffs)
    assert (d <= 1e-4).mean() >= FUSED_LSTM_MIN_CLOSE_FRACTION and d.max() < 2e-2, (d.max(), (d <= 1e-4).mean())
    # verify: the fused ops judged against the kernel model, the simulation's difference reported.
    report = verify_tflite(tmp_path / "dyn.tflite", dyn, [x], info=info, graph=dyn)
    assert report.passed, report.summary()
    rnn = {h["node"]: h for h in report.layerwise["dynamic"]}["rnn"]
    assert rnn["passed"] and rnn["elements"] == 8 * 2 * 7 * 12 and rnn["close_fraction"] >= 0.98, rnn
    assert rnn["sim_max_rel_diff"] > rnn["max_rel_diff"]  # per-row vs per-tensor grids: information only
    json.dumps(report.to_dict())


def test_a_wrong_dynamic_lstm_fails_verification(tmp_path, monkeypatch):
    from compress.exporters.tflite import export_tflite, ops_seq
    from compress.exporters.tflite.verify import verify_tflite

    torch.manual_seed(3)
    x = torch.randn(8, 7, 6)
    dyn = _converted("dynamic", _SeqLSTM().eval(), x)
    real = ops_seq._gate_matrices
    monkeypatch.setattr(ops_seq, "_gate_matrices", lambda *a: real(*a)[::-1])  # gates o, g, f, i

    def check(path):
        info = export_tflite(dyn, (x[:1],), path)
        return verify_tflite(path, dyn, [x], info=info, graph=dyn)

    bad = check(tmp_path / "bad.tflite")
    rnn = {h["node"]: h for h in bad.layerwise["dynamic"]}["rnn"]
    assert not bad.passed and not rnn["passed"], rnn


def test_dynamic_lstm_reading_its_final_state_is_refused_by_name_for_tflite(tmp_path):
    from compress.exporters.tflite import export_tflite

    x = torch.randn(4, 5, 6)
    dyn = _converted("dynamic", _SeqLSTM(final=True).eval(), x)
    with pytest.raises(ExportError, match=r"layer 'rnn' is a dynamic LSTM that has its final state.*"
                                          r"--format onnx.*--layer-mode rnn=static"):
        export_tflite(dyn, (x[:1],), tmp_path / "dyn.tflite")
    assert not (tmp_path / "dyn.tflite").exists()


@pytest.mark.slow
def test_cli_quantize_dynamic_tflite_writes_and_verifies(cli, tmp_path, write_npz):
    (tmp_path / "tokens_net.py").write_text(
        "import torch\nfrom torch import nn\n\n\nclass TokensNet(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.up = nn.Linear(12, 24)\n"
        "        self.down = nn.Linear(24, 12)\n        self.head = nn.Linear(12, 3)\n\n"
        "    def forward(self, x):\n        return self.head(self.down(torch.nn.functional.gelu(self.up(x))).mean(1))\n")
    torch.manual_seed(0)
    net = __import__("runpy").run_path(str(tmp_path / "tokens_net.py"))["TokensNet"]().eval()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    rng = np.random.default_rng(0)
    calib = write_npz("calib.npz", x=rng.normal(size=(32, 5, 12)).astype(np.float32), y=rng.integers(0, 3, 32))
    result = cli("quantize", tmp_path / "net.pt", "--arch", f"{tmp_path / 'tokens_net.py'}:TokensNet", "--calib",
                 calib, "--eval", calib, "--mode", "dynamic", "--format", "tflite", "-o", "out")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    section = report["formats"]["tflite"] if "formats" in report else report["tflite"]
    parity = section["parity"]
    assert parity["passed"] and len(parity["layerwise"]["dynamic"]) == 3
    from compress.exporters.tflite.verify import load_interpreter

    it = load_interpreter(tmp_path / "out" / "model.tflite")
    details = {t["index"]: t for t in it.get_tensor_details()}
    fcs = [o for o in it._get_ops_details() if o["op_name"] == "FULLY_CONNECTED"]
    assert len(fcs) == 3 and all(details[o["inputs"][1]]["dtype"] == np.int8 for o in fcs)
