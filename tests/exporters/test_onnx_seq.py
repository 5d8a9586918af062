"""ONNX export of attention and recurrent layers, run in onnxruntime.

Float graphs are compared with torch's own ``nn.MultiheadAttention`` / ``nn.LSTM`` / ``nn.GRU`` (rel err
≤ 1e-4). Int8 attention is compared with the numpy integer reference
(``compress.quant.reference_extra.attention_int``) and, inside a converted model, with the torch simulation.
Int8 LSTM / GRU cannot quantize the hidden state inside the ONNX recurrence, so they are compared in float
with the tolerance the export records (``OnnxExportInfo.output_tolerances``), and their int8 weights against
numpy's quantization of the float weights.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from compress.exporters import OnnxExportConfig, export_onnx, verify_onnx
from compress.exporters.onnx.ops_seq import RECURRENT_RTOL
from compress.layers import QuantMultiheadAttention
from compress.models import BertEncoder, LSTMClassifier
from compress.passes import calibrate, convert, prepare
from compress.quant import reference as R
from compress.quant import reference_extra as RX

pytestmark = pytest.mark.onnx


def run_onnx(path, inputs) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs, strict=True)})


def tensors(y) -> list[torch.Tensor]:
    if isinstance(y, torch.Tensor):
        return [y]
    return [t for item in y if item is not None for t in tensors(item)]


def assert_float_close(model: nn.Module, inputs: tuple, tmp_path, **cfg) -> dict:
    model.eval()
    path = tmp_path / "float.onnx"
    info = export_onnx(model, inputs, path, OnnxExportConfig(**cfg))
    got = run_onnx(path, inputs)
    with torch.no_grad():
        want = [t.numpy() for t in tensors(model(*inputs))]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        rel = np.abs(g - w).max() / np.abs(w).max()
        assert rel <= 1e-4, f"rel err {rel:.2e}"
    return info.op_histogram


# -- float attention ------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    def __init__(self, batch_first: bool, need_weights: bool = False, average: bool = True, bias: bool = True):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first, bias=bias)
        self.need_weights, self.average = need_weights, average

    def forward(self, x):
        out, w = self.attn(x, x, x, need_weights=self.need_weights, average_attn_weights=self.average)
        return (out, w) if self.need_weights else out


class MaskedAttention(nn.Module):
    """A fixed causal attn_mask (buffer) and a key_padding_mask input, both boolean."""

    def __init__(self, float_mask: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        mask = torch.triu(torch.ones(6, 6, dtype=torch.bool), 1)
        self.register_buffer("mask", torch.zeros(6, 6).masked_fill(mask, -1e4) if float_mask else mask)

    def forward(self, x, pad):
        return self.attn(x, x, x, key_padding_mask=pad, attn_mask=self.mask, need_weights=False)[0]


class CrossAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, kdim=8, vdim=12)

    def forward(self, q, k, v):
        return self.attn(q, k, v, need_weights=False)[0]


@pytest.mark.parametrize("batch_first", [True, False])
def test_float_self_attention_matches_torch(batch_first, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
    ops = assert_float_close(SelfAttention(batch_first), (x,), tmp_path)
    assert ops["Softmax"] == 1 and ops["MatMul"] == 6  # 4 projections + Q·K^T + P·V


@pytest.mark.parametrize("average", [True, False])
def test_float_attention_weights_output(average, tmp_path):
    torch.manual_seed(1)
    assert_float_close(SelfAttention(True, need_weights=True, average=average, bias=False), (torch.randn(2, 5, 16),),
                       tmp_path)


@pytest.mark.parametrize("float_mask", [False, True])
def test_float_attention_with_masks(float_mask, tmp_path):
    torch.manual_seed(2)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, 4:] = True
    pad[2, 1:] = True
    assert_float_close(MaskedAttention(float_mask), (torch.randn(3, 6, 16), pad), tmp_path)


def test_float_cross_attention_kdim_vdim(tmp_path):
    torch.manual_seed(3)
    inputs = (torch.randn(5, 2, 16), torch.randn(7, 2, 8), torch.randn(7, 2, 12))
    # Sequence-first inputs of different lengths: dim 0 is not a shared batch dimension.
    assert_float_close(CrossAttention(), inputs, tmp_path, dynamic_batch=False)


# -- int8 attention vs the numpy integer reference --------------------------------------------------------
class QuantSelfAttention(nn.Module):
    def __init__(self, mha: QuantMultiheadAttention, mask: torch.Tensor | None):
        super().__init__()
        self.mha = mha
        self.register_buffer("mask", mask)

    def forward(self, x):
        return self.mha(x, x, x, attn_mask=self.mask, need_weights=False)[0]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("masked", [False, True])
def test_quant_attention_matches_integer_reference(dtype, masked, tmp_path):
    torch.manual_seed(4)
    L, N, E, H = 6, 3, 16, 4
    mha = QuantMultiheadAttention.from_float(nn.MultiheadAttention(E, H), quantize_io=True)
    mask = torch.zeros(L, L).masked_fill(torch.triu(torch.ones(L, L, dtype=torch.bool), 1), float("-inf")) \
        if masked else None
    model = QuantSelfAttention(mha, mask).eval()
    x = torch.randn(L, N, E)
    with torch.no_grad():
        model(x)  # observers see the data: calibration
    mha.freeze()
    (y,) = run_onnx_export(model, x, tmp_path, dtype)

    def qp(q):
        return float(q.scale), int(q.zero_point)

    xq = {k: qp(getattr(mha, n)) for k, n in (("x_q", "input_quant"), ("x_k", "key_input_quant"),
                                                ("x_v", "value_input_quant"))}
    codes_in = {k: R.quantize(x.numpy(), s, z, -128, 127) for k, (s, z) in xq.items()}
    w = [t.detach().numpy() for t in mha.in_proj_weight.chunk(3)]
    b = [t.detach().numpy() for t in mha.in_proj_bias.chunk(3)]
    weights = dict(wq=w[0], wk=w[1], wv=w[2], wo=mha.out_proj.weight.detach().numpy(), bq=b[0], bk=b[1], bv=b[2],
                   bo=mha.out_proj.bias.detach().numpy())
    qparams = dict(xq, q=qp(mha.q_quant), k=qp(mha.k_quant), v=qp(mha.v_quant), p=qp(mha.attn_quant),
                   ctx=qp(mha.out_proj.input_quant), out=qp(mha.output_quant))
    want = RX.attention_int(codes_in["x_q"], codes_in["x_k"], codes_in["x_v"], weights, qparams, H,
                            None if mask is None else mask.numpy())
    s_out, z_out = qparams["out"]
    got = np.round(y.astype(np.float64) / s_out).astype(np.int64) + z_out
    within, worst = RX.lsb_agreement(got, want, 1.0)
    # float32 (runtime) vs float64 (reference) softmax can move a probability by one code.
    assert within >= 0.99 and worst <= 2, f"{within:.3%} within 1 LSB, max {worst} LSB"


def run_onnx_export(model, x, tmp_path, dtype):
    path = tmp_path / "q.onnx"
    # Sequence-first input: dim 0 is the sequence, fixed by the [L, L] mask.
    export_onnx(model, (x,), path, OnnxExportConfig(activation_dtype=dtype, dynamic_batch=False))
    return run_onnx(path, (x,))


# -- int8 attention inside converted models vs the torch simulation -----------------------------------------
def convert_model(model: nn.Module, x: torch.Tensor) -> nn.Module:
    prepared = prepare(model.eval(), (x[:1],))
    calibrate(prepared, [x], progress=False)
    return convert(prepared)


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_bert_encoder_int8_within_1lsb_of_simulation(dtype, tmp_path):
    import onnx

    torch.manual_seed(5)
    model = BertEncoder(vocab_size=50, dim=32, heads=4, layers=1, ffn=64, max_len=16)
    ids = torch.randint(0, 50, (16, 12))
    int8 = convert_model(model, ids)
    path = tmp_path / "bert.onnx"
    info = export_onnx(int8, (ids[:1],), path, OnnxExportConfig(activation_dtype=dtype))
    report = verify_onnx(path, int8, [ids[:8].numpy(), ids[8:].numpy()], info=info)
    assert report.passed, report.summary()
    assert info.output_tolerances == [None] and not info.approximations
    # The projections and both attention matmuls read int8 weights / Q-DQ'd operands.
    proto = onnx.load(str(path))
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8_weights) >= 6  # q, k, v, out projections, 2 feed-forward layers (+ embeddings)
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    matmul_inputs = [producers.get(i) for n in proto.graph.node if n.op_type == "MatMul" for i in n.input]
    assert matmul_inputs and all(p == "DequantizeLinear" for p in matmul_inputs)


# -- float LSTM / GRU -----------------------------------------------------------------------------------
class Recurrent(nn.Module):
    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)


class LSTMWithState(Recurrent):
    def forward(self, x, h0, c0):
        return self.rnn(x, (h0, c0))


class GRUWithState(Recurrent):
    def forward(self, x, h0):
        return self.rnn(x, h0)


RNN_CASES = [
    # (kind, layers, bidirectional, batch_first, bias)
    ("LSTM", 1, False, False, True),
    ("LSTM", 2, False, True, True),
    ("LSTM", 2, True, False, True),
    ("GRU", 1, False, True, False),
    ("GRU", 2, True, True, True),
]


@pytest.mark.parametrize("case", RNN_CASES, ids=lambda c: "-".join(map(str, c)))
def test_float_recurrent_matches_torch(case, tmp_path):
    kind, layers, bidir, batch_first, bias = case
    torch.manual_seed(6)
    rnn = getattr(nn, kind)(6, 8, num_layers=layers, bidirectional=bidir, batch_first=batch_first, bias=bias)
    x = torch.randn(3, 7, 6) if batch_first else torch.randn(7, 3, 6)
    ops = assert_float_close(Recurrent(rnn), (x,), tmp_path)
    assert ops[kind] == layers


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_float_recurrent_initial_states(kind, tmp_path):
    torch.manual_seed(7)
    rnn = getattr(nn, kind)(6, 8, num_layers=2, bidirectional=True, batch_first=True)
    states = (torch.randn(4, 3, 8),) * (2 if kind == "LSTM" else 1)
    # The initial states carry the batch in dimension 1, so the export uses fixed shapes.
    wrapper = LSTMWithState(rnn) if kind == "LSTM" else GRUWithState(rnn)
    assert_float_close(wrapper, (torch.randn(3, 7, 6), *states), tmp_path, dynamic_batch=False)


def test_gate_order_is_converted(tmp_path):
    """Only the forget gate biased open: a wrong gate order would open another gate instead."""
    lstm = nn.LSTM(2, 3)
    with torch.no_grad():
        for p in lstm.parameters():
            p.zero_()
        lstm.bias_ih_l0[3:6] = 5.0  # torch block 1 = forget gate
        lstm.weight_ih_l0[6:9] = 1.0  # block 2 = cell candidate g
    assert_float_close(Recurrent(lstm), (torch.randn(4, 1, 2),), tmp_path)


# -- int8 LSTM / GRU -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,kind,op", [("uint8", "LSTM", "DynamicQuantizeLSTM"), ("int8", "LSTM", "LSTM"),
                                           ("uint8", "GRU", "GRU")])
def test_quant_recurrent_within_recorded_tolerance(dtype, kind, op, tmp_path):
    torch.manual_seed(8)
    model = Recurrent(getattr(nn, kind)(6, 16, num_layers=2, bidirectional=True, batch_first=True))
    x = torch.randn(8, 10, 6)
    int8 = convert_model(model, x)
    path = tmp_path / "rnn.onnx"
    info = export_onnx(int8, (x[:1],), path, OnnxExportConfig(activation_dtype=dtype))
    assert info.op_histogram[op] == 2
    assert info.output_tolerances == [RECURRENT_RTOL] * len(info.output_names)
    assert any("rnn" in a for a in info.approximations)
    report = verify_onnx(path, int8, [x.numpy()], info=info)
    assert report.passed, [(o.name, o.max_rel_diff) for o in report.outputs]
    assert all(o.tolerance == RECURRENT_RTOL for o in report.outputs)
    # The tolerance is an honest bound, not a loose one: the measured gap is several times below it.
    assert max(o.max_rel_diff for o in report.outputs) < RECURRENT_RTOL / 2
    # The recorded tolerance is what decides: a tighter one fails the same comparison.
    strict = dataclasses.replace(info, output_tolerances=[1e-6] * len(info.output_names))
    assert not verify_onnx(path, int8, [x.numpy()], info=strict).passed


def test_dynamic_lstm_stores_numpy_quantized_weights(tmp_path):
    import onnx
    from onnx import numpy_helper

    torch.manual_seed(9)
    model = Recurrent(nn.LSTM(5, 4))
    x = torch.randn(6, 2, 5)
    int8 = convert_model(model, x)
    path = tmp_path / "lstm.onnx"
    export_onnx(int8, (x[:1],), path)
    proto = onnx.load(str(path))
    (node,) = [n for n in proto.graph.node if n.op_type == "DynamicQuantizeLSTM"]
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    w = inits[node.input[1]]
    assert w.dtype == np.int8 and w.shape == (1, 5, 16)  # [dirs, input, 4·hidden]
    codes, scale = RX.quantize_weight(model.rnn.weight_ih_l0.detach().numpy())
    onnx_order = np.concatenate([codes[i * 4:(i + 1) * 4] for i in (0, 3, 1, 2)])  # i,f,g,o → i,o,f,c
    np.testing.assert_array_equal(w[0], onnx_order.T)
    np.testing.assert_allclose(inits[node.input[8]][0], np.concatenate([scale[i * 4:(i + 1) * 4] for i in (0, 3, 1, 2)]),
                               rtol=1e-6)


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_lstm_classifier_int8_verifies(dtype, tmp_path):
    torch.manual_seed(10)
    model = LSTMClassifier(input_size=8, hidden=16, layers=2, num_classes=4)
    x = torch.randn(16, 12, 8)
    int8 = convert_model(model, x)
    path = tmp_path / "cls.onnx"
    info = export_onnx(int8, (x[:1],), path, OnnxExportConfig(activation_dtype=dtype))
    report = verify_onnx(path, int8, [x.numpy()], info=info)
    assert report.passed, report.summary()
    assert report.outputs[0].quantized and report.outputs[0].tolerance == RECURRENT_RTOL


def test_lstm_classifier_through_quantize_model(tmp_path):
    from compress.io import Dataset
    from compress.pipeline import QuantizeOptions, quantize_model

    torch.manual_seed(11)
    rng = np.random.default_rng(0)
    data = Dataset(rng.standard_normal((24, 10, 8)).astype(np.float32), rng.integers(0, 4, 24), "random")
    model = LSTMClassifier(input_size=8, hidden=16, layers=2, num_classes=4)
    report = quantize_model(model, data, tmp_path / "out", QuantizeOptions(latency_runs=3), progress=False)
    assert report["parity"]["passed"], report["parity"]
    assert report["parity"]["outputs"][0]["tolerance"] == RECURRENT_RTOL
    assert report["int8"]["size_ratio"] < 1.0  # tiny net: scales and graph dominate; the 128-wide one is 0.27
