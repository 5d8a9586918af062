"""verify_onnx: parity figures, the pass/fail contract, strict mode and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import ConfigError, DataError, VerificationError
from compress.exporters import VerifyConfig, export_onnx, verify_onnx
from compress.passes import calibrate, convert, prepare

pytestmark = pytest.mark.onnx


@pytest.fixture
def int8_export(tiny_cnn, tmp_path):
    g = torch.Generator().manual_seed(0)
    calib = torch.randn(32, 1, 8, 8, generator=g)
    qmodel = convert(calibrate(prepare(tiny_cnn, calib[:1]), [calib], progress=False))
    path = tmp_path / "int8.onnx"
    info = export_onnx(qmodel, (calib[:1],), path)
    batches = [torch.randn(16, 1, 8, 8, generator=g).numpy() for _ in range(3)]
    return path, qmodel, info, batches


def test_int8_export_passes_with_figures(int8_export):
    path, qmodel, info, batches = int8_export
    report = verify_onnx(path, qmodel, batches, info=info)
    assert report.passed and report.batches == 3
    assert report.within_1lsb_fraction >= 0.99 and report.max_abs_lsb <= 2
    (out,) = report.outputs
    assert out.quantized and out.elements == 3 * 16 * 10 and out.scale == pytest.approx(info.output_scales[0][0])
    assert report.max_abs_diff == pytest.approx(out.max_abs_lsb * out.scale, rel=1e-6)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["within_1lsb_fraction"] == report.within_1lsb_fraction and d["outputs"][0]["name"] == "output"
    assert "passed" in report.summary()


def test_int8_mismatch_fails_and_strict_raises_with_figures(int8_export):
    path, qmodel, info, batches = int8_export

    def shifted(x):  # a reference 3 LSB away from what the file computes
        return qmodel(x) + 3 * info.output_scales[0][0]

    report = verify_onnx(path, shifted, batches, info=info)
    assert not report.passed and report.within_1lsb_fraction < 0.01
    assert report.max_abs_lsb == pytest.approx(3, abs=1.01)
    with pytest.raises(VerificationError, match=r"LSB.*within 1 LSB"):
        verify_onnx(path, shifted, batches, info=info, strict=True)


def test_float_export_relative_error(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 3)).eval()
    path = tmp_path / "fp32.onnx"
    info = export_onnx(model, (torch.randn(1, 6),), path)
    xs = [torch.randn(5, 6) for _ in range(2)]  # torch batches are accepted too
    report = verify_onnx(path, model, xs, info=info)
    assert report.passed and report.max_abs_lsb is None and report.within_1lsb_fraction is None
    assert report.max_rel_diff <= 1e-4 and not report.outputs[0].quantized

    def off(x):
        return model(x) * 1.01

    assert not verify_onnx(path, off, xs, info=info).passed
    assert verify_onnx(path, off, xs, info=info, config=VerifyConfig(float_rtol=0.05)).passed


def test_multi_input_batches_are_tuples(tmp_path):
    class Two(nn.Module):
        def forward(self, a, b):
            return a * b + 1, a - b

    path = tmp_path / "two.onnx"
    info = export_onnx(Two(), (torch.randn(2, 3), torch.randn(2, 3)), path)
    batch = (np.ones((4, 3), np.float32), np.full((4, 3), 2, np.float32))
    report = verify_onnx(path, Two(), [batch], info=info)
    assert report.passed and [o.name for o in report.outputs] == ["output_0", "output_1"]
    with pytest.raises(DataError, match="takes 2 inputs"):
        verify_onnx(path, Two(), [batch[0]], info=info)


def test_shape_mismatch_reported(tmp_path):
    path = tmp_path / "m.onnx"
    model = nn.Linear(3, 2)
    info = export_onnx(model, (torch.randn(1, 3),), path)
    report = verify_onnx(path, lambda x: model(x)[:, :1], [np.ones((2, 3), np.float32)], info=info)
    assert not report.passed and "shape" in report.problems[0]


def test_bad_file_and_bad_info(tmp_path, int8_export):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    path, qmodel, info, batches = int8_export
    with pytest.raises(VerificationError, match="not a valid ONNX model"):
        verify_onnx(bad, qmodel, batches, info=info)
    from dataclasses import replace

    with pytest.raises(VerificationError, match="describes 2 outputs"):
        verify_onnx(path, qmodel, batches, info=replace(info, output_scales=[None, None]))
    with pytest.raises(DataError, match="no verification inputs"):
        verify_onnx(path, qmodel, [], info=info)


def test_verify_config_validated():
    with pytest.raises(ConfigError):
        VerifyConfig(min_within_1lsb=1.5)
    with pytest.raises(ConfigError):
        VerifyConfig(intra_op_threads=0)


def test_reference_training_mode_restored(int8_export):
    path, qmodel, info, batches = int8_export
    qmodel.train()
    verify_onnx(path, qmodel, batches[:1], info=info)
    assert qmodel.training
    qmodel.eval()
