"""Large float constants read by add / mul / cat are stored int8 (prepare's int8 constants, issue 7 size).

A learned table added to activations (ViT's ``pos_embed``, BERT's position embeddings folded by capture into a
[1, L, D] constant) used to be written in float: 4 bytes per element in an int8 file. ``prepare`` gives such a
constant a weight-style quantizer (int8, symmetric, per tensor, scale = max |c| / 127) and both files store its
codes. Checked against codes computed here in numpy, in onnxruntime and LiteRT.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.passes import calibrate, convert, prepare
from compress.passes.prepare import CONSTANT_MIN_ELEMENTS
from compress.quant.config import QuantConfig
from compress.quant.fake import Quantizer

SEQ, WIDTH = 16, 32


class TableNet(nn.Module):
    """A linear layer, then a learned table added and a buffer multiplied (both large), and a small bias."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(WIDTH, WIDTH)
        self.pos = nn.Parameter(torch.randn(1, SEQ, WIDTH))
        self.register_buffer("gain", torch.rand(SEQ, WIDTH) + 0.5)
        self.register_buffer("shift", torch.randn(WIDTH))  # 32 elements: stays float

    def forward(self, x):
        return (self.fc(x) + self.pos) * self.gain + self.shift


def _reference_codes(c: np.ndarray) -> tuple[np.ndarray, float]:
    """Symmetric per-tensor int8 codes of ``c`` (narrow range), computed independently of compress."""
    scale = np.float32(np.abs(c).max() / 127.0)
    return np.clip(np.round(c.astype(np.float64) / scale), -127, 127).astype(np.int8), float(scale)


@pytest.fixture(scope="module")
def converted():
    torch.manual_seed(0)
    model = TableNet().eval()
    x = torch.randn(32, SEQ, WIDTH, generator=torch.Generator().manual_seed(1))
    prepared = prepare(model, x[:1])
    return model, convert(calibrate(prepared, [x], progress=False)), x


def _constant_quantizers(gm) -> dict[str, Quantizer]:
    modules = dict(gm.named_modules())
    return {n.args[0].target: modules[n.target] for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(modules[n.target], Quantizer) and n.args[0].op == "get_attr"}


def test_large_constants_of_add_and_mul_get_a_weight_style_quantizer(converted):
    model, qmodel, _ = converted
    quants = _constant_quantizers(qmodel)
    assert set(quants) == {"pos", "gain"}  # "shift" is under CONSTANT_MIN_ELEMENTS
    assert model.shift.numel() < CONSTANT_MIN_ELEMENTS <= model.gain.numel()
    for name, q in quants.items():
        value = getattr(model, name).detach()
        codes, scale = _reference_codes(value.numpy())
        assert int(q.zero_point) == 0 and float(q.scale) == pytest.approx(scale, rel=1e-6)
        # The simulation adds exactly codes x scale.
        np.testing.assert_allclose(q(value).numpy(), codes.astype(np.float32) * np.float32(q.scale), rtol=0,
                                   atol=1e-7)


def test_no_constant_quantizer_outside_static_mode():
    torch.manual_seed(0)
    prepared = prepare(TableNet().eval(), torch.randn(1, SEQ, WIDTH), QuantConfig(mode="dynamic"))
    assert not _constant_quantizers(prepared)


@pytest.mark.onnx
def test_onnx_stores_the_constants_as_codes_and_runs_the_add_in_int8(converted, tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from compress.exporters import export_onnx, verify_onnx

    model, qmodel, x = converted
    path = tmp_path / "table.onnx"
    info = export_onnx(qmodel, (x[:2],), path)
    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    floats = [a for a in inits.values() if a.dtype == np.float32 and a.size >= CONSTANT_MIN_ELEMENTS]
    assert not floats, [a.shape for a in floats]  # neither table is left in float beside its codes
    for name in ("pos", "gain"):
        codes, _ = _reference_codes(getattr(model, name).detach().numpy())
        stored = [a for a in inits.values() if a.shape == codes.shape and a.dtype in (np.uint8, np.int8)]
        assert len(stored) == 1
        offset = 128 if stored[0].dtype == np.uint8 else 0
        np.testing.assert_array_equal(stored[0].astype(np.int32) - offset, codes)
    # onnxruntime fuses DequantizeLinear → Add / Mul → QuantizeLinear into its integer kernels.
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    kinds = {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}
    assert {"QLinearAdd", "QLinearMul"} <= kinds, kinds
    report = verify_onnx(path, qmodel, [x[:8].numpy()], info=info, graph=qmodel)
    assert report.passed, report.summary()


@pytest.mark.tflite
def test_tflite_stores_the_constants_as_int8_tensors(converted, tmp_path):
    pytest.importorskip("ai_edge_litert")
    tflite = pytest.importorskip("tflite")
    from compress.exporters.tflite import export_tflite, verify_tflite

    model, qmodel, x = converted
    path = tmp_path / "table.tflite"
    info = export_tflite(qmodel, x[:1], path)
    fb = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    payloads = [fb.Buffers(i).DataAsNumpy().tobytes() for i in range(fb.BuffersLength()) if fb.Buffers(i).DataLength()]
    for name in ("pos", "gain"):
        value = getattr(model, name).detach().numpy()
        codes, _ = _reference_codes(value)
        assert codes.tobytes() in payloads, name
        assert value.astype(np.float32).tobytes() not in payloads, name
    report = verify_tflite(path, qmodel, [x[:8].numpy()], info=info, graph=qmodel)
    assert report.passed, report.summary()
