"""Op-by-op verification: an exporter bug is caught and pinned to its node; rounding amplified downstream is not.

The runtimes themselves are the reference (onnxruntime, LiteRT): each test corrupts one emitter so the file
computes something else than the simulation, or feeds the comparison a numpy "runtime" whose only difference
is a 1-LSB flip that an argmax turns into a different token.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import fx, nn

from compress.errors import VerificationError
from compress.exporters.verify_ops import Probe, layerwise_parity
from compress.io import Dataset
from compress.passes import calibrate, convert, prepare
from compress.quant.config import QuantConfig
from tests.exporters.broken_emitters import wrong_weight_scale


class TwoLayerNet(nn.Module):
    def __init__(self):
        super().__init__()
        # 6 channels of 6 x 6: TFLite's NHWC tensor has the torch NCHW shape too, the layout must be told
        # apart by value (verify_ops.torch_layouts keeps the candidate closest to the simulation).
        self.conv = nn.Conv2d(1, 6, 3)
        self.fc1 = nn.Linear(6 * 6 * 6, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.conv(x)).flatten(1)
        x = torch.relu(self.fc1(x))  # the line a corrupted fc1 emitter must be pinned to
        return self.fc2(x)


@pytest.fixture(scope="module")
def converted():
    torch.manual_seed(0)
    x = torch.rand(32, 1, 8, 8)
    prepared = prepare(TwoLayerNet().eval(), (x[:1],), QuantConfig())
    calibrate(prepared, Dataset(x.numpy(), None, "rand"), progress=False)
    return convert(prepared), x


@pytest.mark.onnx
def test_onnx_faithful_export_passes_op_by_op(converted, tmp_path):
    from compress.exporters.onnx import export_onnx, verify_onnx

    q, x = converted
    info = export_onnx(q, (x[:1],), tmp_path / "m.onnx")
    report = verify_onnx(tmp_path / "m.onnx", q, [x.numpy()], info=info, graph=q)
    lw = report.layerwise
    assert report.passed and lw["passed"] and lw["ops"] >= 4 and lw["samples"] == 32
    assert not lw["instrumentation_changed_outputs"]
    assert all(w["max_abs_lsb"] <= 1.001 for w in lw["worst"])


@pytest.mark.onnx
def test_onnx_wrong_scale_is_pinned_to_its_node(converted, tmp_path, monkeypatch):
    from compress.exporters.onnx import export_onnx, ops_quant, verify_onnx

    q, x = converted
    with wrong_weight_scale(monkeypatch, "onnx", ops_quant, "weight_codes", "fc1"):
        info = export_onnx(q, (x[:1],), tmp_path / "bad.onnx")
    report = verify_onnx(tmp_path / "bad.onnx", q, [x.numpy()], info=info, graph=q)
    first = report.layerwise["first_failure"]
    assert not report.passed
    assert first["node"].startswith("fc1") or first["node"].startswith("relu_1"), first
    assert first["max_abs_lsb"] > 2
    assert "test_verify_layerwise.py" in first["source"] and "self.fc1(x)" in first["source"]
    # Everything upstream of fc1 is still exact given the same inputs; fc2, fed onnxruntime's wrong fc1
    # output, computes what the simulation computes from it: only fc1 fails.
    assert [f["node"] for f in report.layerwise["failures"]] == [first["node"]]
    with pytest.raises(VerificationError, match=first["node"]):
        verify_onnx(tmp_path / "bad.onnx", q, [x.numpy()], info=info, graph=q, strict=True)


@pytest.mark.tflite
def test_tflite_wrong_scale_is_pinned_to_its_node(converted, tmp_path, monkeypatch):
    from compress.exporters.tflite import export_tflite, ops_base
    from compress.exporters.tflite.verify import verify_tflite

    q, x = converted
    info = export_tflite(q, x[:1], tmp_path / "m.tflite")
    good = verify_tflite(tmp_path / "m.tflite", q, [x[:8].numpy()], info=info, graph=q)
    assert good.passed and good.layerwise["ops"] >= 4, good.layerwise
    with wrong_weight_scale(monkeypatch, "tflite", ops_base, "int8_weight", "fc1"):
        info = export_tflite(q, x[:1], tmp_path / "bad.tflite")
    report = verify_tflite(tmp_path / "bad.tflite", q, [x[:8].numpy()], info=info, graph=q)
    first = report.layerwise["first_failure"]
    assert not report.passed and first["max_abs_lsb"] > 2
    assert "self.fc1(x)" in first["source"]
    assert [f["node"] for f in report.layerwise["failures"]] == [first["node"]]


class FakeQuant(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return torch.clamp(torch.round(x / self.scale), -128, 127) * self.scale


class ArgmaxFeedback(nn.Module):
    """logits (int8) → argmax → embedding (int8): a 1-LSB flip of the logits can pick another token."""

    def __init__(self):
        super().__init__()
        self.q_logits, self.q_emb = FakeQuant(0.1), FakeQuant(0.5)
        self.emb = nn.Embedding(4, 3)
        with torch.no_grad():
            self.emb.weight.copy_(torch.tensor([[0.0, 0, 0], [10, 10, 10], [-10, -10, -10], [5, 0, -5]]))

    def forward(self, x):
        return self.q_emb(self.emb(torch.argmax(self.q_logits(x), dim=-1)))


class _KeepFakeQuant(fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return isinstance(m, FakeQuant) or super().is_leaf_module(m, qualname)


def test_argmax_amplification_is_information_not_failure():
    model = ArgmaxFeedback()
    gm = fx.GraphModule(model, _KeepFakeQuant().trace(model))
    x = np.array([[0.30, 0.26, 0.0, 0.0], [0.0, 0.0, 0.70, 0.10]], np.float32)

    def runtime(batch):
        # numpy stand-in for a runtime that rounds the second logit of row 0 one code up (4 instead of 3, a tie
        # with the first): a 1-LSB difference that makes its argmax pick token 1 instead of token 0.
        codes = np.clip(np.round(batch[0] / 0.1), -128, 127)
        codes[0, 1] += 1
        token = codes.argmax(-1)
        emb = np.clip(np.round(gm.emb.weight.detach().numpy()[token] / 0.5), -128, 127)
        return {"logits": codes, "emb": emb}, [emb * 0.5]

    probes = [Probe("q_logits", "logits", 0.1, 0), Probe("q_emb", "emb", 0.5, 0)]
    report = layerwise_parity(gm, runtime, [(x,)], probes, runtime="numpy")
    by_node = {o.node: o for o in report.worst}
    assert report.passed, report.summary()
    assert by_node["q_logits"].max_abs_lsb == pytest.approx(1.0)
    assert by_node["q_emb"].max_abs_lsb == 0.0  # given the runtime's logits, the embedding is exact
    end_to_end = np.abs(runtime((x,))[1][0] - gm(torch.from_numpy(x)).detach().numpy()).max() / 0.5
    assert end_to_end == 20  # token 1 (10) instead of token 0 (0), in LSBs of 0.5


def test_without_probed_ops_the_end_to_end_rule_decides():
    from compress.exporters.verify import OutputParity, VerifyConfig, parity_report
    from compress.exporters.verify_ops import LayerwiseParity

    off = OutputParity("y", True, 100, 0.5, 0.1, scale=0.1, max_abs_lsb=5.0, within_1lsb_fraction=0.5, passed=False)
    nothing = LayerwiseParity("onnxruntime", False, 0, 0, 1.0, unchecked=["*: cannot load the copy"])
    report = parity_report("m.onnx", [off], 1, [], VerifyConfig(), strict=False, runtime="onnxruntime",
                           layerwise=nothing)
    assert not report.passed and report.layerwise["unchecked"] == ["*: cannot load the copy"]
    assert report.summary().startswith("FAILED: max 5.00 LSB")
