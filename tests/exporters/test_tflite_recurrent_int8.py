"""Int8 kernels for the unrolled QuantLSTM / QuantGRU in TFLite: every gate FULLY_CONNECTED reads the layer's
int8 weight codes itself (dynamic range, per gate row), checked against numpy — the codes recomputed from the
float weights, each FC's output against the exact float product within the error bound of quantizing its
input per row — and the whole file against the torch simulation in LiteRT's default runtime.

The LSTM here reads its final state (``h_n``), which keeps it unrolled; an LSTM whose output sequence is all
the graph reads is one fused op per layer (tests/exporters/test_tflite_lstm_fused.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ai_edge_litert")
pytestmark = pytest.mark.tflite

from compress.exporters.tflite import export_tflite, verify_tflite  # noqa: E402
from compress.passes import calibrate, convert, prepare  # noqa: E402


class Recurrent(nn.Module):
    def __init__(self, cell: type, layers: int = 2):
        super().__init__()
        self.rnn = cell(6, 12, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        out, state = self.rnn(x)
        if isinstance(state, tuple):  # LSTM: reading the final cell state keeps it unrolled
            return self.fc(out[:, -1] + state[1][-1])
        return self.fc(out[:, -1])


def _quantized(cell):
    torch.manual_seed(0)
    xs = [torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(s)) for s in range(6)]
    return convert(calibrate(prepare(Recurrent(cell).eval(), xs[0]), xs, progress=False)), xs


def _fc_ops(it) -> list[dict]:
    return [o for o in it._get_ops_details() if o["op_name"] == "FULLY_CONNECTED"]


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU], ids=["lstm", "gru"])
def test_gate_fcs_read_the_layers_int8_codes(cell, tmp_path):
    from compress.exporters.tflite import load_interpreter

    q, xs = _quantized(cell)
    export_tflite(q, xs[0], tmp_path / "q.tflite")
    it = load_interpreter(tmp_path / "q.tflite")
    details = {d["index"]: d for d in it.get_tensor_details()}
    produced = {int(t) for o in it._get_ops_details() for t in o["outputs"]}
    fcs = _fc_ops(it)
    steps, layers = xs[0].shape[1], 2
    # Row blocks one FC computes: an LSTM's four gates; a GRU's r, z and, apart, n.
    hidden = q.rnn.hidden_size
    blocks = [slice(0, 4 * hidden)] if cell is nn.LSTM else [slice(0, 2 * hidden), slice(2 * hidden, 3 * hidden)]
    # per layer and block: one input projection, steps − 1 hidden ones; then the head
    assert len(fcs) == layers * steps * len(blocks) + 1
    expected = {}
    for layer in range(layers):
        for kind in ("ih", "hh"):
            name = f"weight_{kind}_l{layer}"
            w = getattr(q.rnn, name).detach().double().numpy()
            s = q.rnn.weight_quants[name].scale.detach().double().numpy().reshape(-1)
            codes = np.clip(np.round(w / s[:, None]), -127, 127)
            for r in blocks:
                shape = codes[r].shape
                expected[shape] = expected.get(shape, []) + [(codes[r], s[r])]
    for op in fcs[:-1]:
        wd = details[int(op["inputs"][1])]
        assert wd["dtype"] == np.int8 and wd["index"] not in produced  # a constant, not a DEQUANTIZE output
        codes = it.get_tensor(wd["index"])
        qp = wd["quantization_parameters"]
        assert qp["quantized_dimension"] == 0
        assert any(np.array_equal(codes, c) and np.allclose(qp["scales"], s, rtol=1e-6)
                   for c, s in expected[codes.shape])


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU], ids=["lstm", "gru"])
def test_each_gate_fc_is_the_exact_product_up_to_its_input_rounding(cell, tmp_path):
    """Reference kernels, every intermediate kept: each FC's float output against x · (codes · s_w) + b in
    float64, within ½ of the per-row input step (range / 255) times Σ|w| of the row (plus float32 noise)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    q, xs = _quantized(cell)
    export_tflite(q, xs[0], tmp_path / "q.tflite")
    it = Interpreter(model_path=str(tmp_path / "q.tflite"), experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                     experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], xs[5].numpy())
    it.invoke()
    details = {d["index"]: d for d in it.get_tensor_details()}
    checked = 0
    for op in _fc_ops(it)[:-1]:
        x_i, w_i, b_i = (int(i) for i in op["inputs"])
        x = it.get_tensor(x_i).astype(np.float64)
        x = x.reshape(-1, x.shape[-1])
        w = it.get_tensor(w_i).astype(np.float64) * details[w_i]["quantization_parameters"]["scales"][:, None]
        want = x @ w.T + it.get_tensor(b_i)
        got = it.get_tensor(int(op["outputs"][0])).astype(np.float64).reshape(want.shape)
        row_step = (np.maximum(x.max(1), 0) - np.minimum(x.min(1), 0)) / 255
        bound = 0.5 * row_step[:, None] * np.abs(w).sum(1)[None, :] + 1e-5 * (1 + np.abs(want))
        assert np.all(np.abs(got - want) <= bound)
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU], ids=["lstm", "gru"])
def test_int8_recurrent_file_matches_the_simulation(cell, tmp_path):
    q, xs = _quantized(cell)
    path = tmp_path / "q.tflite"
    info = export_tflite(q, xs[0], path)
    report = verify_tflite(path, q, [torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(s))
                                     for s in range(10, 16)], info=info)
    assert report.passed, report
