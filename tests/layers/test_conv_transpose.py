"""QuantConvTranspose1d/2d: int8 weights per output channel (axis 1), int32 bias, checked against numpy, and the
exported files against the simulation in onnxruntime and LiteRT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.layers import QuantConvTranspose2d
from compress.quant.reference import dequantize, quantize, quantize_bias


def _conv_transpose2d_np(x, w, b, stride, padding, output_padding):
    """Scatter-add definition: out[co, i·s + k − p] += x[ci, i] · w[ci, co, k] (float64)."""
    n, cin, h, wd = x.shape
    cout, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    full = np.zeros((n, cout, (h - 1) * stride + kh + output_padding, (wd - 1) * stride + kw + output_padding))
    for i in range(h):
        for j in range(wd):
            full[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw] += np.einsum(
                "nc,cokl->nokl", x[:, :, i, j], w)
    out = full[:, :, padding:full.shape[2] - padding, padding:full.shape[3] - padding]
    return out + b.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("stride,padding,output_padding", [(2, 0, 0), (2, 1, 1), (1, 1, 0)])
def test_matches_numpy_with_per_output_channel_weights(stride, padding, output_padding):
    torch.manual_seed(0)
    f = nn.ConvTranspose2d(3, 5, 3, stride=stride, padding=padding, output_padding=output_padding)
    q = QuantConvTranspose2d.from_float(f)
    x = torch.randn(2, 3, 4, 4)
    in_scale = 0.05
    q.input_scale = torch.tensor(in_scale)
    q.freeze()
    w = f.weight.detach().double().numpy()
    scale = np.abs(w).max(axis=(0, 2, 3)) / 127  # symmetric, one scale per output channel (axis 1)
    codes = quantize(w, scale, 0, -127, 127, axis=1)
    np.testing.assert_array_equal(q.weight_quant.scale.double().numpy(), scale.astype(np.float32))
    bias = dequantize(quantize_bias(f.bias.detach().double().numpy(), in_scale, scale), in_scale * scale, 0)
    want = _conv_transpose2d_np(x.double().numpy(), dequantize(codes, scale, 0, axis=1), bias, stride, padding,
                                output_padding)
    got = q(x).detach().double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(q.to_float().weight, f.weight)


def test_grouped_transposed_conv_has_no_int8_form():
    from compress.errors import ConfigError

    with pytest.raises(ConfigError, match="groups=2"):
        QuantConvTranspose2d.from_float(nn.ConvTranspose2d(4, 4, 2, groups=2))


@pytest.mark.onnx
@pytest.mark.tflite
def test_exported_files_compute_the_simulation(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from compress.exporters import export_onnx, export_tflite
    from compress.exporters.tflite.verify import load_interpreter
    from compress.io import Dataset
    from compress.passes import calibrate, convert, prepare

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Conv2d(3, 16, 3, padding=1)
            self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.head(torch.relu(self.up(torch.relu(self.enc(x)))))

    torch.manual_seed(0)
    x = np.random.default_rng(0).random((16, 3, 8, 8), dtype=np.float32)
    prepared = prepare(Decoder().eval(), (torch.from_numpy(x[:1]),))
    assert "up" in prepared.compress_info.quantized_layers
    calibrate(prepared, Dataset(x), progress=False)
    q = convert(prepared)
    want = q(torch.from_numpy(x[:1])).detach().numpy()
    export_onnx(q, (torch.from_numpy(x[:1]),), tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x[:1]})[0]
    lsb = float(q.get_submodule([n for n, m in q.named_modules() if n.endswith("act_quant")][-1]).scale)
    assert np.abs(got - want).max() <= lsb * 1.001
    export_tflite(q, (torch.from_numpy(x[:1]),), tmp_path / "m.tflite")
    it = load_interpreter(str(tmp_path / "m.tflite"), 1)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x[:1])
    it.invoke()
    assert np.abs(it.get_tensor(it.get_output_details()[0]["index"]) - want).max() <= lsb * 1.001
    # The transposed conv's weights are stored as int8 codes (not float) in the ONNX file.
    onnx = pytest.importorskip("onnx")
    inits = {tuple(i.dims): i.data_type for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer}
    assert inits[(16, 8, 2, 2)] == onnx.TensorProto.INT8
