"""An LSTM whose output sequence is all the graph reads is one UNIDIRECTIONAL_SEQUENCE_LSTM per layer in TFLite
(float, or hybrid: int8 gate weights, one scale per gate matrix, float activations).

Checked in LiteRT against a numpy model of the hybrid kernel written here (per-row asymmetric quantization of
each step's input and hidden state, integer products, float gates), against torch for float, for state that
must not carry over between invokes, and on the zoo's audio LSTM: the int8 file at most 30 % of fp32 with the
recurrence fused, not unrolled.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ai_edge_litert")
pytestmark = pytest.mark.tflite

from compress.exporters.tflite import export_tflite, load_interpreter, verify_tflite  # noqa: E402
from compress.exporters.tflite.verify import FUSED_LSTM_MIN_CLOSE_FRACTION, fused_lstm_parity  # noqa: E402
from compress.passes import calibrate, convert, prepare  # noqa: E402

FUSED = "UNIDIRECTIONAL_SEQUENCE_LSTM"
UNROLLED = {"LOGISTIC", "TANH", "SPLIT", "PACK"}


class SeqLSTM(nn.Module):
    def __init__(self, batch_first: bool = True, layers: int = 2):
        super().__init__()
        self.batch_first = batch_first
        self.rnn = nn.LSTM(6, 12, num_layers=layers, batch_first=batch_first)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1] if self.batch_first else out[-1])


def _data(shape, seeds):
    return [torch.randn(*shape, generator=torch.Generator().manual_seed(s)) for s in seeds]


def _quantized(model, shape):
    torch.manual_seed(0)
    xs = _data(shape, range(6))
    return convert(calibrate(prepare(model.eval(), xs[0]), xs, progress=False)), xs


def _ops(it) -> list[dict]:
    return [o for o in it._get_ops_details() if o["op_name"] != "DELEGATE"]


# -- an independent numpy model of LiteRT's hybrid LSTM step (lstm_eval.cc, asymmetric inputs) -------------------
def _row_codes(v: np.ndarray):
    """Each row on its own asymmetric int8 grid: range with 0 over 255 steps, the zero point from the end with
    the smaller error; the code is the zero point plus v / scale (float32) rounded half away from zero."""
    lo, hi = np.minimum(v.min(1), 0.0), np.maximum(v.max(1), 0.0)
    scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0)
    zp = np.where(128 + np.abs(lo / scale) < 127 + np.abs(hi / scale), -128 - lo / scale, 127 - hi / scale)
    zp = np.clip(np.sign(zp) * np.floor(np.abs(zp) + 0.5), -128, 127)
    scaled = v.astype(np.float32) * (1 / scale.astype(np.float32))[:, None]
    q = np.clip(zp[:, None] + np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5)), -128, 127)
    return q, scale.astype(np.float32).astype(np.float64), zp


def _hybrid_lstm(x_tbi: np.ndarray, w_ih, w_hh, bias) -> np.ndarray:
    """x time-major; w_* per gate (int8 codes, scale); float64 everywhere except the int8 grids."""
    steps, bsz, _ = x_tbi.shape
    hidden = bias[0].shape[0]
    h, c = np.zeros((bsz, hidden)), np.zeros((bsz, hidden))

    def matmul(v, w):
        codes, s_w = w
        q, s, zp = _row_codes(v)
        return ((q - zp[:, None]) @ codes.T.astype(np.float64)) * (s[:, None] * s_w)

    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    out = []
    for t in range(steps):
        i, f, g, o = (matmul(x_tbi[t], w_ih[k]) + matmul(h, w_hh[k]) + bias[k] for k in range(4))
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        out.append(h)
    return np.stack(out)


def _gate_codes(q_rnn, name: str):
    """The simulation's weight (per-row codes × scales) re-coded per gate on max |w| / 127."""
    w = q_rnn.weight_quants[name](getattr(q_rnn, name)).detach().double().numpy()
    gates = []
    for block in np.split(w, 4):
        s = np.abs(block).max() / 127
        gates.append((np.clip(np.round(block / s), -127, 127), s))
    return gates


def test_int8_lstm_is_one_hybrid_op_per_layer_on_per_gate_int8_weights(tmp_path):
    q, xs = _quantized(SeqLSTM(), (1, 7, 6))
    export_tflite(q, xs[0], tmp_path / "q.tflite")
    it = load_interpreter(tmp_path / "q.tflite")
    names = [o["op_name"] for o in _ops(it)]
    assert names.count(FUSED) == 2 and not UNROLLED & set(names)
    details = {d["index"]: d for d in it.get_tensor_details()}
    for layer, op in enumerate(o for o in _ops(it) if o["op_name"] == FUSED):
        ins = [int(i) for i in op["inputs"]]
        assert len(ins) == 24 and all(ins[i] < 0 for i in (9, 10, 11, 16, 17, 20, 21, 22, 23))
        for kind, idx in (("ih", ins[1:5]), ("hh", ins[5:9])):
            for (codes, s), i in zip(_gate_codes(q.rnn, f"weight_{kind}_l{layer}"), idx, strict=True):
                d = details[i]
                assert d["dtype"] == np.int8 and len(d["quantization_parameters"]["scales"]) == 1
                assert np.isclose(d["quantization_parameters"]["scales"][0], s, rtol=1e-6)
                assert np.array_equal(it.get_tensor(i), codes)


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_major"])
def test_each_fused_op_matches_a_numpy_model_of_the_hybrid_kernel(batch_first, tmp_path):
    shape = (2, 7, 6) if batch_first else (7, 2, 6)
    q, xs = _quantized(SeqLSTM(batch_first), shape)
    export_tflite(q, xs[0], tmp_path / "q.tflite")
    it = load_interpreter(tmp_path / "q.tflite", preserve_all_tensors=True)
    details = {d["index"]: d for d in it.get_tensor_details()}
    weight = lambda i: (it.get_tensor(i).astype(np.float64), details[i]["quantization_parameters"]["scales"][0])  # noqa: E731
    diffs = []
    for x in _data(shape, range(20, 30)):
        it.set_tensor(it.get_input_details()[0]["index"], x.numpy())
        it.invoke()
        for op in (o for o in _ops(it) if o["op_name"] == FUSED):
            ins = [int(i) for i in op["inputs"]]
            seq = it.get_tensor(ins[0]).astype(np.float64)
            seq = seq.transpose(1, 0, 2) if batch_first else seq
            want = _hybrid_lstm(seq, [weight(i) for i in ins[1:5]], [weight(i) for i in ins[5:9]],
                                [it.get_tensor(i).astype(np.float64) for i in ins[12:16]])
            got = it.get_tensor(int(op["outputs"][0])).astype(np.float64)
            diffs.append(np.abs((got.transpose(1, 0, 2) if batch_first else got) - want).ravel())
    d = np.concatenate(diffs)
    # Float32 noise may move a value across a rounding boundary of the next step's grid (one code): a few
    # values then differ by ~1e-3; a wrong gate order, scale or zero point is off by far more, nearly everywhere.
    assert (d <= 1e-4).mean() >= FUSED_LSTM_MIN_CLOSE_FRACTION and d.max() < 2e-2, (d.max(), (d <= 1e-4).mean())
    assert verify_tflite(tmp_path / "q.tflite", q, _data(shape, range(40, 46))).passed


def test_state_does_not_carry_over_between_invokes(tmp_path):
    q, xs = _quantized(SeqLSTM(), (1, 7, 6))
    export_tflite(q, xs[0], tmp_path / "q.tflite")
    a, b = (x.numpy() for x in _data((1, 7, 6), (50, 51)))

    def run(it, x):
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        return it.get_tensor(it.get_output_details()[0]["index"]).copy()

    reused = load_interpreter(tmp_path / "q.tflite")
    run(reused, a)
    assert np.array_equal(run(reused, b), run(load_interpreter(tmp_path / "q.tflite"), b))


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_major"])
def test_float_lstm_is_fused_and_matches_torch(batch_first, tmp_path):
    torch.manual_seed(1)
    m = SeqLSTM(batch_first).eval()
    shape = (2, 7, 6) if batch_first else (7, 2, 6)
    info = export_tflite(m, _data(shape, [0])[0], tmp_path / "f.tflite")
    assert info.op_counts.get(FUSED) == 2 and not UNROLLED & set(info.op_counts)
    report = verify_tflite(tmp_path / "f.tflite", m, _data(shape, range(3)), info=info)
    assert report.passed and report.max_rel_diff < 1e-5, report


def test_a_wrong_fused_lstm_fails_verification(tmp_path, monkeypatch):
    from compress.exporters.tflite import ops_seq

    q, xs = _quantized(SeqLSTM(), (1, 7, 6))
    real = ops_seq._gate_matrices
    monkeypatch.setattr(ops_seq, "_gate_matrices", lambda *a: real(*a)[::-1])  # gates o, g, f, i
    export_tflite(q, xs[0], tmp_path / "bad.tflite")
    report = verify_tflite(tmp_path / "bad.tflite", q, _data((1, 7, 6), range(3)))
    assert not report.passed and not report.end_to_end_passed, report
    assert report.outputs[0].tolerance is not None  # the recurrent tolerance, and still far outside it


def test_the_kernel_model_tells_asymmetric_from_symmetric_inputs(tmp_path, monkeypatch):
    """The check of the fused op against the numpy model can fail: a model quantizing the inputs symmetrically
    (the kernel without asymmetric_quantize_inputs) is rejected on the same file."""
    from compress.exporters.tflite import verify

    q, xs = _quantized(SeqLSTM(), (1, 7, 6))
    export_tflite(q, xs[0], tmp_path / "q.tflite")
    samples = [x.numpy() for x in _data((1, 7, 6), range(60, 66))]
    assert fused_lstm_parity(tmp_path / "q.tflite", samples)["passed"]
    real = verify.quantize_rows
    monkeypatch.setattr(verify, "quantize_rows", lambda x, asymmetric: real(x, False))
    wrong = fused_lstm_parity(tmp_path / "q.tflite", samples)
    assert not wrong["passed"], wrong


def test_zoo_audio_lstm_int8_tflite_is_fused_and_at_most_30_percent_of_fp32(tmp_path):
    from tests.zoo.models_seq import AudioConvLSTM

    torch.manual_seed(0)
    model = AudioConvLSTM().eval()
    xs = [torch.randn(4, 1, 400, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    export_tflite(model, xs[0][:1], tmp_path / "fp32.tflite")
    q = convert(calibrate(prepare(model, xs[0][:1]), xs, progress=False))
    export_tflite(q, xs[0][:1], tmp_path / "int8.tflite")
    ratio = (tmp_path / "int8.tflite").stat().st_size / (tmp_path / "fp32.tflite").stat().st_size
    assert ratio <= 0.30, ratio
    names = [o["op_name"] for o in _ops(load_interpreter(tmp_path / "int8.tflite"))]
    assert names.count(FUSED) == 2 and not UNROLLED & set(names), names
    samples = [x[i:i + 1].numpy() for x in xs for i in range(4)]
    parity = fused_lstm_parity(tmp_path / "int8.tflite", samples)
    assert parity["ops"] == 2 and parity["samples"] == 16 and parity["passed"], parity
