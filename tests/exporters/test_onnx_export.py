"""export_onnx end to end: int8 and fp32 CNNs in onnxruntime, file size, int8 kernels, opsets, errors, files."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import CompressError, ConfigError, ExportError
from compress.exporters import ActivationDType, OnnxExportConfig, export_onnx, trace_for_export
from compress.models import DemoCNN, ResNet18, randomize_bn
from compress.passes import calibrate, convert, prepare
from compress.quant import ACT_INT8, Quantizer

pytestmark = pytest.mark.onnx


def quantize(model: nn.Module, example: torch.Tensor, calib: list[torch.Tensor]) -> nn.Module:
    return convert(calibrate(prepare(model.eval(), example), calib, progress=False))


def session(path, optimized_path=None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run(path, x: torch.Tensor) -> np.ndarray:
    sess = session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


@pytest.fixture(scope="module")
def demo_int8():
    torch.manual_seed(0)
    model = randomize_bn(DemoCNN(width=16)).eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(32, 1, 8, 8, generator=g)]
    return model, quantize(model, calib[0][:1], calib)


@pytest.mark.parametrize("dtype", list(ActivationDType))
def test_demo_cnn_int8_within_1lsb_of_simulation(demo_int8, dtype, tmp_path):
    _, qmodel = demo_int8
    path = tmp_path / "int8.onnx"
    info = export_onnx(qmodel, (torch.randn(1, 1, 8, 8),), path, OnnxExportConfig(activation_dtype=dtype))
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(2))  # batch ≠ example: dynamic batch
    got = run(path, x)
    want = qmodel(x).numpy()
    scale, _ = info.output_scales[0]
    lsb = np.abs(got - want) / scale
    assert (lsb <= 1.001).mean() >= 0.99, f"max {lsb.max():.2f} LSB"
    assert info.activation_dtype is dtype
    # The quantized residual block: conv → (relu dropped) → Q, add of two DQs, maxpool/flatten re-quantized.
    assert info.op_histogram["Conv"] == 4 and info.op_histogram["Add"] == 1
    assert "Relu" not in info.op_histogram and "BatchNormalization" not in info.op_histogram


def test_demo_cnn_fp32_matches_torch(demo_int8, tmp_path):
    model, _ = demo_int8
    path = tmp_path / "fp32.onnx"
    info = export_onnx(model, (torch.randn(2, 1, 8, 8),), path)
    x = torch.randn(16, 1, 8, 8)
    got, want = run(path, x), model(x).detach().numpy()
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-4
    assert info.output_scales == [None]
    assert "QuantizeLinear" not in info.op_histogram and info.op_histogram["BatchNormalization"] == 3


def test_uint8_convs_run_as_qlinearconv(demo_int8, tmp_path):
    """onnxruntime's optimized graph proves the int8 kernels run (no conv left in float)."""
    import onnx

    _, qmodel = demo_int8
    path, opt = tmp_path / "int8.onnx", tmp_path / "int8.opt.onnx"
    export_onnx(qmodel, (torch.randn(1, 1, 8, 8),), path)
    session(path, optimized_path=opt)
    ops = [n.op_type for n in onnx.load(str(opt)).graph.node]
    assert ops.count("QLinearConv") == 4 and "Conv" not in ops and "FusedConv" not in ops
    assert "QLinearAdd" in ops and "QGemm" in ops


def test_int8_file_at_most_30_percent_of_fp32(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(ResNet18(num_classes=10, width=16)).eval()
    assert sum(p.numel() for p in model.parameters()) >= 100_000
    x = torch.randn(1, 3, 32, 32)
    qmodel = quantize(model, x, [torch.randn(4, 3, 32, 32)])
    fp32 = export_onnx(model, (x,), tmp_path / "fp32.onnx")
    int8 = export_onnx(qmodel, (x,), tmp_path / "int8.onnx")
    assert int8.bytes <= 0.30 * fp32.bytes, (int8.bytes, fp32.bytes)
    assert int8.bytes == os.path.getsize(tmp_path / "int8.onnx")
    # One self-contained file each: no external-data side files, no temp files left.
    assert sorted(os.listdir(tmp_path)) == ["fp32.onnx", "int8.onnx"]


@pytest.mark.parametrize("opset", [13, 17, 21])
def test_opset_is_pinned_and_recorded(opset, tmp_path):
    import onnx

    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Hardswish(), nn.Softmax(-1))
    info = export_onnx(model, (torch.randn(2, 4),), tmp_path / "m.onnx", OnnxExportConfig(opset=opset))
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert info.opset == opset
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", opset)]
    x = torch.randn(3, 4)
    np.testing.assert_allclose(run(tmp_path / "m.onnx", x), model(x).detach().numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("opset", [12, 22, "17", True])
def test_opset_out_of_range_is_a_config_error(opset):
    with pytest.raises(ConfigError, match="opset must be an integer in 13..21"):
        OnnxExportConfig(opset=opset)


def test_activation_dtype_validated():
    assert OnnxExportConfig(activation_dtype="int8").activation_dtype is ActivationDType.INT8
    with pytest.raises(ConfigError, match="'uint8' or 'int8'"):
        OnnxExportConfig(activation_dtype="fp16")


class _Sorts(nn.Module):
    def forward(self, x):
        return torch.sort(x, dim=-1).values


class _Flip(nn.Module):
    def forward(self, x):
        return x.flip(-1)


def test_ops_without_a_mapping_become_float_islands_and_are_listed(tmp_path):
    # torch.sort and Tensor.flip have no registry op: they are exported as float subgraphs
    model = nn.Sequential(nn.Conv2d(1, 2, 3), _Flip())
    info = export_onnx(model, (torch.randn(1, 1, 6, 6),), tmp_path / "m.onnx")
    assert any("flip" in f for f in info.float_fallbacks)
    assert any("sort" in f for f in export_onnx(_Sorts(), (torch.randn(2, 3),), tmp_path / "s.onnx").float_fallbacks)


def test_uncalibrated_quantizer_refused(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = Quantizer(ACT_INT8)

        def forward(self, x):
            return self.q(x)

    with pytest.raises(ExportError, match="calibrate"):
        export_onnx(Net(), (torch.randn(2, 3),), tmp_path / "m.onnx")


def test_temp_file_removed_when_write_fails(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    # The write goes through compress.io.atomic: the OSError becomes a one-line error naming the file.
    with pytest.raises(CompressError, match="cannot write .*m.onnx"):
        export_onnx(nn.Linear(3, 2), (torch.randn(1, 3),), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_existing_file_replaced_whole(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    info = export_onnx(nn.Linear(3, 2), (torch.randn(1, 3),), path)
    assert path.stat().st_size == info.bytes > 3 and os.listdir(tmp_path) == ["m.onnx"]


def test_missing_directory_is_an_export_error(tmp_path):
    with pytest.raises(ExportError, match="does not exist; create it first"):
        export_onnx(nn.Linear(3, 2), (torch.randn(1, 3),), tmp_path / "nope" / "m.onnx")


def test_dynamic_and_static_batch(tmp_path):
    import onnx

    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    export_onnx(model, (torch.randn(2, 2, 6, 6),), tmp_path / "dyn.onnx")
    assert run(tmp_path / "dyn.onnx", torch.randn(5, 2, 6, 6)).shape == (5, 2)
    export_onnx(model, (torch.randn(2, 2, 6, 6),), tmp_path / "static.onnx", OnnxExportConfig(dynamic_batch=False))
    dims = onnx.load(str(tmp_path / "static.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 2, 6, 6]


def test_batch_fixed_model_needs_static_export(tmp_path):
    class Fixed(nn.Module):
        def forward(self, x):
            return x.reshape(2, -1) + torch.ones(2, 12)

    with pytest.raises(ExportError, match="dynamic_batch=False"):
        export_onnx(Fixed(), (torch.randn(2, 3, 4),), tmp_path / "m.onnx")
    info = export_onnx(Fixed(), (torch.randn(2, 3, 4),), tmp_path / "m.onnx", OnnxExportConfig(dynamic_batch=False))
    assert info.opset == 17


def test_multiple_outputs_names_and_scales(tmp_path):
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = Quantizer(ACT_INT8)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            h = self.fc(x)
            return self.q(h), torch.tanh(h)

    model = TwoHeads()
    model.q(torch.tensor([-1.0, 1.0]))
    model.q.start_quantizing()
    model.q.freeze()
    cfg = OnnxExportConfig(input_names=("features",), output_names=("logits", "gate"))
    info = export_onnx(model, (torch.randn(2, 4),), tmp_path / "m.onnx", cfg)
    assert info.input_names == ["features"] and info.output_names == ["logits", "gate"]
    assert info.output_scales[0] == pytest.approx((float(model.q.scale), int(model.q.zero_point)))
    assert info.output_scales[1] is None
    sess = session(tmp_path / "m.onnx")
    x = torch.randn(3, 4)
    got = sess.run(None, {"features": x.numpy()})
    for g, w in zip(got, model(x), strict=True):
        np.testing.assert_allclose(g, w.detach().numpy(), atol=1e-6)
    with pytest.raises(ConfigError, match="output_names has 1 names"):
        export_onnx(model, (torch.randn(2, 4),), tmp_path / "m.onnx", OnnxExportConfig(output_names=("a",)))


def test_trace_for_export_keeps_quant_layers_as_leaves(demo_int8):
    _, qmodel = demo_int8
    gm = trace_for_export(qmodel)  # a GraphModule comes back unchanged
    assert gm is qmodel
    from compress.layers import QuantConv2d

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = QuantConv2d.from_float(nn.Conv2d(1, 2, 3))

        def forward(self, x):
            return self.conv(x)

    ops = [(n.op, n.target) for n in trace_for_export(Net()).graph.nodes]
    assert ops == [("placeholder", "x"), ("call_module", "conv"), ("output", "output")]


def test_import_compress_exporters_does_not_load_onnx():
    code = "import sys, compress.exporters; print(any(m in sys.modules for m in ('onnx', 'onnxruntime')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_export_restores_training_mode(tmp_path):
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)).train()
    export_onnx(model, (torch.randn(2, 3),), tmp_path / "m.onnx")
    assert model.training and model[1].training


def test_constants_computed_in_forward_are_folded(tmp_path):
    class Positions(nn.Module):
        def forward(self, x):
            return x + torch.arange(x.shape[-1]).float() * 0.5

    x = torch.randn(2, 3, 6)
    info = export_onnx(Positions(), (x,), tmp_path / "m.onnx")
    got = run(tmp_path / "m.onnx", torch.zeros(4, 3, 6))
    np.testing.assert_allclose(got, np.broadcast_to(np.arange(6) * 0.5, (4, 3, 6)))
    assert info.op_histogram == {"Add": 1}

    class BatchPositions(nn.Module):
        def forward(self, x):  # depends on the batch size: cannot be a constant in a dynamic-batch graph
            return x + torch.arange(x.shape[0]).float().reshape(-1, 1)

    # torch.export keeps arange(batch) symbolic: the file computes it at every batch size.
    export_onnx(BatchPositions(), (torch.randn(2, 3),), tmp_path / "m.onnx")
    got = run(tmp_path / "m.onnx", torch.zeros(5, 3))
    np.testing.assert_allclose(got, np.broadcast_to(np.arange(5.0).reshape(-1, 1), (5, 3)))
    export_onnx(BatchPositions(), (torch.randn(2, 3),), tmp_path / "m.onnx", OnnxExportConfig(dynamic_batch=False))


def test_export_info_is_the_one_type_both_formats_share(tmp_path):
    from compress.exporters import ExportInfo, OnnxExportInfo

    info = export_onnx(nn.Linear(4, 2), (torch.randn(3, 4),), tmp_path / "m.onnx")
    assert type(info) is ExportInfo and OnnxExportInfo is ExportInfo
    assert info.format == "onnx" and not info.quantized and info.bytes == (tmp_path / "m.onnx").stat().st_size
    d = info.to_dict()
    assert d["opset"] == 17 and d["activation_dtype"] == "uint8" and d["seconds"] > 0
    assert not {"schema_version", "int8_io", "nhwc_input", "inputs", "outputs"} & set(d)  # TFLite-only fields
