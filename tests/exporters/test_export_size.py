"""What the int8 files spend their bytes on (issue 7: each zoo file ≤ 30 % of its fp32 file).

A recurrent module called at every step of an unrolled decoder gets its own copy per call from ``prepare``
(its own quantizers), sharing the weight Parameters; its biases are added in float by both runtimes (ONNX
GRU, TFLite's dynamic-range FULLY_CONNECTED), so the file stores them once, as the layer holds them, instead
of one copy per call snapped to that call's grid (34 kB of the zoo GRU seq2seq's ONNX file). Each file is
still verified op by op against the simulation in its runtime.

Value names: the exporter names values with one or two characters (``OnnxExportConfig.readable_names`` keeps the
model's), because a readable name is written at every use: 34 kB of the zoo BERT's 164 kB int8 file, where its
weights are 104 kB. Both files of a pair are written the same way, so the ratio compares like with like.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.passes import calibrate, convert, prepare

MAX_SIZE_RATIO = 0.30  # issue 7

STEPS, WIDTH, HIDDEN = 5, 16, 8


class Decoder(nn.Module):
    """One GRU step and one Linear applied ``STEPS`` times, the state carried (an unrolled decoder)."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(WIDTH, HIDDEN, batch_first=True)
        self.out = nn.Linear(HIDDEN, WIDTH)

    def forward(self, x):
        h, outs = None, []
        for _ in range(STEPS):
            y, h = self.gru(x.unsqueeze(1), h)
            x = torch.tanh(self.out(y.squeeze(1)))
            outs.append(x)
        return torch.stack(outs, 1)


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    model = Decoder().eval()
    calib = torch.randn(24, WIDTH, generator=torch.Generator().manual_seed(1))
    qmodel = convert(calibrate(prepare(model, calib[:1]), [calib], progress=False))
    return model, qmodel, calib


def _float_biases(model: Decoder) -> np.ndarray:
    return np.concatenate([model.gru.bias_ih_l0.detach().numpy(), model.gru.bias_hh_l0.detach().numpy()])


@pytest.mark.onnx
def test_onnx_gru_called_at_every_step_stores_one_float_bias(decoder, tmp_path):
    import onnx
    from onnx import numpy_helper

    from compress.exporters import export_onnx, verify_onnx

    model, qmodel, calib = decoder
    path = tmp_path / "dec.onnx"
    info = export_onnx(qmodel, (calib[:2],), path)
    proto = onnx.load(str(path))
    grus = [n for n in proto.graph.node if n.op_type == "GRU"]
    assert len(grus) == STEPS
    assert len({n.input[3] for n in grus}) == 1  # every step reads the same B initializer
    b = next(numpy_helper.to_array(i) for i in proto.graph.initializer if i.name == grus[0].input[3])
    # B holds the layer's own float biases (ONNX gate order z, r, h: compare as sets of values).
    np.testing.assert_array_equal(np.sort(b.reshape(-1)), np.sort(_float_biases(model)))
    report = verify_onnx(path, qmodel, [calib[:8].numpy()], info=info, graph=qmodel)
    assert report.passed, report.summary()


@pytest.mark.tflite
def test_tflite_gru_called_at_every_step_stores_each_bias_once(decoder, tmp_path):
    pytest.importorskip("ai_edge_litert")
    tflite = pytest.importorskip("tflite")
    from compress.exporters.tflite import export_tflite, verify_tflite

    model, qmodel, calib = decoder
    path = tmp_path / "dec.tflite"
    info = export_tflite(qmodel, calib[:1], path)
    fb = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    payloads = [fb.Buffers(i).DataAsNumpy().tobytes() for i in range(fb.BuffersLength()) if fb.Buffers(i).DataLength()]
    # b_ih and b_hh, each once (5 steps used to write one b_hh per step, each snapped to that step's grid), in
    # the two row blocks the exporter writes a GRU's FCs in (r|z, n).
    for bias in _float_biases(model).reshape(2, -1):
        for block in (bias[:2 * HIDDEN], bias[2 * HIDDEN:]):
            assert payloads.count(np.asarray(block, np.float32).tobytes()) == 1
    report = verify_tflite(path, qmodel, [calib[:8].numpy()], info=info, graph=qmodel)
    assert report.passed, report.summary()


def _zoo_onnx_sizes(name: str, tmp_path) -> tuple[int, int]:
    """(int8, fp32) bytes of zoo model ``name``'s ONNX files, written as ``compress quantize`` writes them."""
    from compress.exporters import export_onnx
    from tests.zoo.train import trained

    model, calib, _ = trained(name)
    example = calib.tensors(0, 1)
    prepared = prepare(model, example)
    calibrate(prepared, [calib.tensors(i, i + 32) for i in range(0, len(calib), 32)], progress=False)
    int8 = export_onnx(convert(prepared), example, tmp_path / f"{name}.onnx")
    fp32 = export_onnx(model, example, tmp_path / f"{name}_fp32.onnx")
    return int8.bytes, fp32.bytes


@pytest.mark.onnx
@pytest.mark.slow
@pytest.mark.parametrize("name", [
    "bert",  # 29.5 %: its folded [1, 16, 64] position table is stored int8 (prepare's int8 constants)
    "gru_seq2seq",
])
def test_zoo_int8_onnx_is_at_most_30_percent_of_fp32(name, tmp_path):
    int8, fp32 = _zoo_onnx_sizes(name, tmp_path)
    assert int8 <= MAX_SIZE_RATIO * fp32, f"{name}: int8 {int8} B is {100 * int8 / fp32:.1f} % of fp32 {fp32} B"
