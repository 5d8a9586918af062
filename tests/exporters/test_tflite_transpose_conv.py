"""Int8 TRANSPOSE_CONV for QuantConvTranspose1d/2d: the file's operator against a numpy integer transposed
convolution written here from torch's weight layout (``[C_in, C_out, k...]``), in LiteRT's reference kernels;
the whole file against the torch simulation in the default runtime (XNNPACK)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ai_edge_litert")
pytestmark = pytest.mark.tflite

from compress.exporters.tflite import export_tflite, verify_tflite, xnnpack_delegation  # noqa: E402
from compress.passes import calibrate, convert, prepare  # noqa: E402


class Up(nn.Module):
    """conv → transposed conv → ReLU → conv: the transposed conv sees an int8 input and feeds a quantizer."""

    def __init__(self, up: nn.Module):
        super().__init__()
        one_d = isinstance(up, nn.ConvTranspose1d)
        conv = nn.Conv1d if one_d else nn.Conv2d
        self.pre, self.up, self.post = conv(3, up.in_channels, 1), up, conv(up.out_channels, 2, 1)

    def forward(self, x):
        return self.post(torch.relu(self.up(self.pre(x))))


# name: (transposed conv, input shape)
CASES = {
    "k2s2": (lambda: nn.ConvTranspose2d(4, 3, 2, stride=2), (2, 3, 4, 5)),
    "k3s2_pad_outpad": (lambda: nn.ConvTranspose2d(4, 5, 3, stride=2, padding=1, output_padding=1), (2, 3, 4, 5)),
    "k3s1_pad_nobias": (lambda: nn.ConvTranspose2d(4, 3, 3, stride=1, padding=1, bias=False), (1, 3, 5, 4)),
    "1d_k4s2": (lambda: nn.ConvTranspose1d(4, 2, 4, stride=2, padding=1), (2, 3, 7)),
}


def _inputs(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


def _quantized(name):
    factory, shape = CASES[name]
    torch.manual_seed(0)
    model = Up(factory()).eval()
    return convert(calibrate(prepare(model, (_inputs(shape, 0),)), [_inputs(shape, s) for s in range(4)],
                             progress=False)), shape


def _transpose_conv_op(it) -> dict:
    (op,) = [o for o in it._get_ops_details() if o["op_name"] == "TRANSPOSE_CONV"]
    return op


def _numpy_transpose_conv(xq, zx, w_codes, b_codes, stride, mult, zy):
    """Integer transposed conv, NHWC input codes and torch-layout weight codes ``[C_in, C_out, kh, kw]``:
    every input pixel scatters ``x·w`` into a ``kh × kw`` window at ``stride``; then the int32 bias and one
    rounding (half away from zero, TFLite's) onto the output grid, ReLU as the zero point floor."""
    n, h, w, _ = xq.shape
    _, cout, kh, kw = w_codes.shape
    sh, sw = stride
    acc = np.zeros((n, (h - 1) * sh + kh, (w - 1) * sw + kw, cout), np.int64)
    xc = xq.astype(np.int64) - zx
    for i in range(kh):
        for j in range(kw):
            acc[:, i:i + (h - 1) * sh + 1:sh, j:j + (w - 1) * sw + 1:sw, :] += np.einsum(
                "nhwc,co->nhwo", xc, w_codes[:, :, i, j].astype(np.int64))
    real = (acc + b_codes) * mult
    y = np.sign(real) * np.floor(np.abs(real) + 0.5) + zy
    return np.clip(np.maximum(y, zy), -128, 127)


@pytest.mark.parametrize("name", sorted(CASES))
def test_int8_transpose_conv_matches_numpy_integer_reference(name, tmp_path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    q, shape = _quantized(name)
    info = export_tflite(q, (_inputs(shape, 0),), tmp_path / "q.tflite")
    assert info.op_counts["TRANSPOSE_CONV"] == 1
    it = Interpreter(model_path=str(tmp_path / "q.tflite"), experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                     experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    details = {d["index"]: d for d in it.get_tensor_details()}
    op = _transpose_conv_op(it)
    _, filt, x_idx, bias = (int(i) for i in op["inputs"])
    x_d, f_d, b_d, y_d = details[x_idx], details[filt], details[bias], details[int(op["outputs"][0])]
    assert [d["dtype"] for d in (x_d, f_d, b_d, y_d)] == [np.int8, np.int8, np.int32, np.int8]

    # The filter's per-channel grid is the layer's (output channels: torch weight axis 1, TFLite axis 0) and
    # its codes are round(w / s) of torch's weight, here recomputed from the float weight.
    s_w = q.up.weight_quant.scale.detach().double().numpy().reshape(-1)
    fq = f_d["quantization_parameters"]
    assert fq["quantized_dimension"] == 0 and np.allclose(fq["scales"], s_w, rtol=1e-6)
    w = q.up.weight.detach().double().numpy()
    w = w[:, :, None, :] if w.ndim == 3 else w
    w_codes = np.clip(np.round(w / s_w.reshape(1, -1, 1, 1)), -127, 127)
    s_x, z_x = x_d["quantization"]
    bias_f = q.up.bias.detach().double().numpy() if q.up.bias is not None else np.zeros(w.shape[1])
    b_codes = np.round(bias_f / (np.float32(s_x) * s_w.astype(np.float32)))

    it.set_tensor(it.get_input_details()[0]["index"], _inputs(shape, 5).numpy())
    it.invoke()
    s_y, z_y = y_d["quantization"]
    stride = (1, q.up.stride[0]) if w.shape[2] == 1 else tuple(q.up.stride)
    want = _numpy_transpose_conv(it.get_tensor(x_idx), z_x, w_codes, b_codes, stride, s_x * s_w / s_y, z_y)
    got = it.get_tensor(y_d["index"]).astype(np.int64)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1  # TFLite's fixed-point multiplier vs the exact product
    assert np.mean(got == want) > 0.99


@pytest.mark.parametrize("name", sorted(CASES))
def test_int8_file_matches_the_simulation_in_one_xnnpack_partition(name, tmp_path):
    q, shape = _quantized(name)
    path = tmp_path / "q.tflite"
    info = export_tflite(q, (_inputs(shape, 0),), path)
    # Nothing is dequantized for the transposed conv: the only DEQUANTIZE is the graph output's.
    assert info.op_counts.get("DEQUANTIZE", 0) == 1, info.op_counts
    report = verify_tflite(path, q, [_inputs(shape, s) for s in range(5, 8)], info=info)
    assert report.passed, report
    assert xnnpack_delegation(path)["partitions"] == 1


def test_output_padding_past_the_full_output_stays_float_and_verifies(tmp_path):
    """``output_padding`` larger than the crop: rows of bias only, written as PAD + a float bias ADD."""
    torch.manual_seed(0)
    model = Up(nn.ConvTranspose2d(4, 2, 3, stride=2, padding=0, output_padding=1)).eval()
    shape = (1, 3, 3, 4)
    q = convert(calibrate(prepare(model, (_inputs(shape, 0),)), [_inputs(shape, s) for s in range(4)],
                          progress=False))
    path = tmp_path / "q.tflite"
    info = export_tflite(q, (_inputs(shape, 0),), path)
    assert info.op_counts["PAD"] == 1 and info.op_counts["ADD"] == 1
    from compress.exporters.tflite import load_interpreter

    op = _transpose_conv_op(load_interpreter(path))
    details = {d["index"]: d for d in load_interpreter(path).get_tensor_details()}
    assert details[int(op["inputs"][2])]["dtype"] == np.float32
    assert verify_tflite(path, q, [_inputs(shape, s) for s in range(5, 8)], info=info).passed
