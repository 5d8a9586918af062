"""compress.capture.raiser: torch.export programs raised to module-level fx graphs the passes and exporters accept.

The reference for every numeric check is torch itself running the program (``ExportedProgram.module()``) or
the original eager model, never the raised graph.
"""

from __future__ import annotations

import json
import operator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compress.capture import raise_exported_program, supported_aten_ops
from compress.errors import ModelLoadError
from compress.io import load_model
from compress.models import DemoCNN, MobileNetV2, ResNet18, randomize_bn
from compress.passes import prepare

WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _export(model: nn.Module, x: torch.Tensor, tmp_path: Path, *, dynamic: bool = True):
    """Export ``model`` (eval mode), save it as a .pt2 and load it back: the program a user's file holds."""
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model.eval(), (x,), dynamic_shapes=shapes), str(path))
    return torch.export.load(str(path)), path


def _aten_nodes(gm: torch.fx.GraphModule) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if isinstance(n.target, torch._ops.OpOverload)]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 16), nn.Tanh(),
                         nn.Dropout(0.1), nn.Linear(16, 4), nn.Softmax(dim=-1))


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(ResNet18(num_classes=10, width=16))


def _mobilenet() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(MobileNetV2(num_classes=10))


def _democnn() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(DemoCNN(width=4))


MODELS = {
    "democnn": (_democnn, (1, 8, 8)),
    "resnet18": (_resnet, (3, 32, 32)),
    "mobilenetv2": (_mobilenet, (3, 32, 32)),
    "mlp": (_mlp, (12,)),
}


@pytest.mark.parametrize("name", [
    "democnn", "resnet18", pytest.param("mobilenetv2", marks=pytest.mark.slow), "mlp",
])
def test_raised_model_matches_the_program_and_prepares(name, tmp_path):
    build, shape = MODELS[name]
    model = build().eval()
    ep, _ = _export(model, torch.zeros(2, *shape), tmp_path)
    gm = raise_exported_program(ep)

    # Only the user's input is a placeholder; weights live in modules; no aten op is left.
    assert [n.name for n in gm.graph.nodes if n.op == "placeholder"] == ["x" if name != "mlp" else "input_1"]
    assert _aten_nodes(gm) == []
    for cls in (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm):
        want = sorted(n for n, m in model.named_modules() if type(m) is cls)
        assert sorted(n for n, m in gm.named_modules() if type(m) is cls) == want, cls.__name__

    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))  # not the exported batch size
    with torch.no_grad():
        torch.testing.assert_close(gm(x), ep.module()(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)

    prepared = prepare(gm, x[:1])
    assert prepared.compress_info.capture == "export"
    assert not [m for m in prepared.modules() if isinstance(m, nn.BatchNorm2d)]  # every BN folded into its conv
    assert set(prepared.compress_info.quantized_layers) == {
        n for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)
    }


def test_decomposed_program_raises_to_the_same_layers(tmp_path):
    """Core-aten programs (run_decompositions): convolution, _native_batch_norm_legit_no_training, addmm."""
    model = _democnn().eval()
    ep, _ = _export(model, torch.zeros(2, 1, 8, 8), tmp_path)
    core = ep.run_decompositions()
    ops = {str(n.target) for n in core.graph.nodes}
    assert {"aten.convolution.default", "aten.addmm.default"} <= ops  # the forms this test is about
    gm = raise_exported_program(core)
    assert _aten_nodes(gm) == []
    kinds = {type(m) for m in gm.modules()}
    assert {nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.MaxPool2d, nn.AdaptiveAvgPool2d} <= kinds
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)
    assert prepare(gm, x[:1]).compress_info.capture == "export"


class _Odds(nn.Module):
    """Lifted tensors of every kind, a view by the batch size, an in-place op, a tied weight, two outputs."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 12)
        self.scale = nn.Parameter(torch.rand(12) + 0.5)
        self.register_buffer("offset", torch.rand(12), persistent=False)

    def forward(self, x):
        y = x.view(x.size(0), -1)
        z = self.fc(self.fc(y))  # the same weights twice
        kept = z.clone()
        z.relu_()  # `z` read below is the rectified tensor
        out = torch.sigmoid(z * self.scale + self.offset + torch.tensor(0.25)) - kept
        return out, torch.cat([y[:, 1:5], kept[:, :2]], dim=1)


@pytest.mark.parametrize("dynamic", [False, True])
def test_constants_inplace_tied_weights_and_tuple_outputs(dynamic, tmp_path):
    torch.manual_seed(0)
    model = _Odds().eval()
    ep, _ = _export(model, torch.zeros(2, 3, 4), tmp_path, dynamic=dynamic)
    gm = raise_exported_program(ep)
    assert [n.op for n in gm.graph.nodes].count("placeholder") == 1
    assert {"scale", "offset"} <= {n for n, _ in gm.named_parameters()} | {n for n, _ in gm.named_buffers()}
    fc_calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert fc_calls == ["fc", "fc"] and type(gm.fc) is nn.Linear  # one module for the tied weights
    # A static export hard-codes the batch in view(2, 12); raised as a flatten it runs at any batch size.
    x = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got, want = gm(x), model(x)
    assert isinstance(got, tuple) and len(got) == 2
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_op_without_handler_stays_as_the_aten_op_with_its_source_line(tmp_path):
    class Cumulative(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return torch.cumprod(self.conv(x), dim=-1)  # no torch-level form in the raiser

    model = Cumulative().eval()
    _, path = _export(model, torch.zeros(2, 1, 8, 8), tmp_path)
    gm = load_model(path)
    generic = [n for n in gm.graph.nodes if n.target is torch.ops.aten.cumprod.default]
    assert len(generic) == 1 and "aten.cumprod" not in supported_aten_ops()
    assert "torch.cumprod(self.conv(x), dim=-1)" in generic[0].meta["stack_trace"]  # for the coverage check
    assert type(gm.get_submodule("conv")) is nn.Conv2d  # the rest is raised as usual
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


def test_program_exported_in_training_mode_is_refused(tmp_path):
    model = _democnn().train()
    ep = torch.export.export(model, (torch.zeros(2, 1, 8, 8),))
    with pytest.raises(ModelLoadError, match=r"training mode; call model\.eval\(\) before torch\.export\.export"):
        raise_exported_program(ep)


def test_getitem_of_a_multi_output_op_needs_output_zero(tmp_path):
    class Pool(nn.Module):
        def forward(self, x):
            values, indices = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
            return values + indices.float()

    ep = torch.export.export(Pool(), (torch.zeros(1, 1, 4, 4),)).run_decompositions()
    assert any(n.target is operator.getitem for n in ep.graph.nodes)
    with pytest.raises(ModelLoadError, match="reads output 1 of aten.max_pool2d_with_indices"):
        raise_exported_program(ep)


@pytest.mark.onnx
def test_cli_quantize_pt2_end_to_end(cli, tmp_path, write_npz, digits_like):
    import onnxruntime as ort

    model = _democnn().eval()
    _export(model, torch.zeros(2, 1, 8, 8), tmp_path)
    x, y = digits_like
    write_npz("x.npz", x=x, y=y)
    result = cli("quantize", "model.pt2", "--calib", "x.npz", "-o", "out")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["capture"] == "export" and report["float_ops"] == []
    assert report["model"]["class"] == "DemoCNN"
    assert set(report["quantized_layers"]) == {"stem.0", "conv1", "conv2", "head_conv", "fc"}  # the model's names
    assert report["parity"]["within_1lsb_fraction"] >= 0.99
    assert {Path(a["path"]).name for a in report["artifacts"]} >= {"model.onnx", "model_fp32.onnx"}
    # The fp32 ONNX file computes what the original model computes (onnxruntime vs eager torch).
    sess = ort.InferenceSession(str(out / "model_fp32.onnx"), providers=["CPUExecutionProvider"])
    fp32 = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(fp32, model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-4)
    int8 = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    agree = np.mean(int8.run(None, {int8.get_inputs()[0].name: x})[0].argmax(1) == fp32.argmax(1))
    assert report["int8"]["top1_agreement"] == pytest.approx(agree)
